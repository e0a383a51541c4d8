/**
 * `deno task bind <pci-address> <vfio|uio|kernel> [--force] [--sysfs DIR]`: hand a device to pvdrv (or back).
 * @module
 */
import { bindDevice, type BindTarget } from "../system/bind.ts";
import { parsePciAddress } from "../ffi/sysfs.ts";
import { parse, runMain, UsageError } from "./lib/common.ts";

const USAGE = `usage: deno task bind <pci-address> <vfio|uio|kernel> [--force] [--sysfs DIR]
  vfio     bind to vfio-pci (needs an IOMMU; recommended)
  uio      bind to uio_pci_generic (no IOMMU protection; INTx only)
  kernel   clear driver_override and give the device back to its kernel driver
  --force  bind even if the device's network interface is up (only on a disposable VM!)`;

const TARGETS: Record<string, BindTarget> = { vfio: "vfio-pci", uio: "uio_pci_generic", kernel: "kernel" };

await runMain(USAGE, () => {
  const { values, positionals } = parse(Deno.args, {
    force: { type: "boolean" },
    sysfs: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 2) throw new UsageError("expected a PCI address and a target");
  let addr: string;
  try {
    addr = parsePciAddress(positionals[0]);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const target = TARGETS[positionals[1]];
  if (!target) throw new UsageError(`unknown target '${positionals[1]}' (vfio, uio or kernel)`);
  const before = bindDevice(addr, target, { root: values.sysfs, force: values.force });
  console.log(`${addr}: ${before ?? "no driver"} -> ${target === "kernel" ? "kernel driver" : target}`);
});
