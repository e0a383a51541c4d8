/**
 * Binding a PCI function to vfio-pci, uio_pci_generic or back to its kernel driver, through `driver_override`.
 * Refuses a device whose network interface is up unless forced: on a real machine that is its own network.
 * @module
 */
import { devicePath, interfaceInUse, parsePciAddress, readDevice, SYSFS } from "./sysfs.ts";

/** Where a device can be bound. */
export type BindTarget = "vfio-pci" | "uio_pci_generic" | "kernel";

/** Options for {@link bindDevice}. */
export interface BindOptions {
  /** sysfs root (tests use a fixture tree). */
  root?: string;
  /** Bind even though a network interface of the device is up. */
  force?: boolean;
}

/** Thrown when binding is refused for safety. */
export class BindRefused extends Error {
  /** Creates the error. */
  constructor(msg: string) {
    super(msg);
    this.name = "BindRefused";
  }
}

function write(path: string, text: string): void {
  try {
    Deno.writeTextFileSync(path, text);
  } catch (e) {
    throw new Error(`writing '${text.trim()}' to ${path} failed: ${(e as Error).message}`);
  }
}

/** The shell commands that would bind `address` to `target` (shown by the probe). */
export function bindCommands(address: string, target: Exclude<BindTarget, "kernel">): string {
  return `deno task bind ${address} ${target === "vfio-pci" ? "vfio" : "uio"}`;
}

/** Bind `address` to `target`; returns the driver it was bound to before. */
export function bindDevice(address: string, target: BindTarget, opts: BindOptions = {}): string | null {
  const root = opts.root ?? SYSFS;
  const addr = parsePciAddress(address);
  const info = readDevice(addr, root);
  const inUse = info.netInterfaces.filter((n) => interfaceInUse(n, root));
  if (inUse.length && !opts.force) {
    throw new BindRefused(
      `${addr} carries network interface ${
        inUse.join(", ")
      }, which is up: unbinding it would cut that network. ` +
        `Use --force only on a disposable VM.`,
    );
  }
  const dir = devicePath(addr, root);
  const drivers = `${root}/bus/pci/drivers`;
  if (target !== "kernel") {
    try {
      Deno.statSync(`${drivers}/${target}`);
    } catch {
      throw new Error(
        `driver ${target} is not loaded: ${
          target === "vfio-pci"
            ? "load irqbypass, vfio, vfio_iommu_type1, vfio-pci"
            : "load uio, uio_pci_generic"
        } (modprobe ${target})`,
      );
    }
    if (target === "vfio-pci" && info.iommuGroup === null) {
      throw new Error(
        `${addr} has no IOMMU group: boot with an IOMMU (intel_iommu=on, a vIOMMU in a VM) to use VFIO`,
      );
    }
  }
  if (info.driver === (target === "kernel" ? null : target)) return info.driver;
  write(`${dir}/driver_override`, target === "kernel" ? "\n" : target);
  if (info.driver) write(`${dir}/driver/unbind`, addr);
  write(`${root}/bus/pci/drivers_probe`, addr);
  const now = readDevice(addr, root).driver;
  if (target !== "kernel" && now !== target) {
    throw new Error(`${addr} did not bind to ${target} (now: ${now ?? "no driver"}); see dmesg`);
  }
  return info.driver;
}
