/**
 * `deno task probe [--json] [--sysfs DIR] [--all]`: list PCI devices and what pvdrv can do with them. Read-only.
 * @module
 */
import { formatTable, probe } from "../system/probe.ts";
import { formatXen, probeXen } from "../system/xen_probe.ts";
import { XenStore } from "../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../ffi/xenbus.ts";

/** Backend path and state of each vif, when xenstore is reachable (at most 2 s). */
async function xenBackends(nodes: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  let xs: XenStore;
  try {
    xs = new XenStore(new XenbusDevice());
  } catch {
    return out;
  }
  const work = (async () => {
    for (const n of nodes) {
      const be = await xs.tryRead(`${n}/backend`);
      if (be) out[n] = `${be} (state ${await xs.tryRead(`${be}/state`) ?? "?"})`;
    }
  })();
  await Promise.race([work.catch(() => {}), new Promise((r) => setTimeout(r, 2000))]);
  await xs.close();
  return out;
}
import { parse, runMain, UsageError } from "./lib/common.ts";

const USAGE = `usage: deno task probe [--json] [--all] [--sysfs DIR]
  --json        machine-readable output
  --all         list every PCI function (default: virtio and Xen devices only)
  --sysfs DIR   sysfs root (default /sys)`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    json: { type: "boolean" },
    all: { type: "boolean" },
    sysfs: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const root = values.sysfs ?? "/sys";
  try {
    Deno.statSync(`${root}/bus/pci/devices`);
  } catch {
    if (values.sysfs !== undefined) {
      throw new UsageError(`--sysfs ${values.sysfs}: no bus/pci/devices there (not a sysfs tree)`);
    }
    throw new Error(`${root}/bus/pci/devices cannot be read: is sysfs mounted?`);
  }
  let entries = probe(root);
  if (!values.all) entries = entries.filter((e) => e.kind !== "-");
  const xen = probeXen(root);
  const backends = xen.hypervisor && !values.sysfs
    ? await xenBackends(xen.devices.map((d) => d.nodename))
    : {};
  if (values.json) {
    return void console.log(JSON.stringify({ pci: entries, xen: { ...xen, backends } }, null, 2));
  }
  console.log(
    entries.length ? formatTable(entries) : "no virtio or Xen PCI devices (use --all to list every device)",
  );
  console.log(formatXen(xen, backends));
});
