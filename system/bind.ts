/**
 * Binding a PCI function to vfio-pci, uio_pci_generic or back to its kernel driver, through `driver_override`.
 *
 * Only devices a pvdrv driver serves may be taken from the kernel (never an RNG or a console). The driver table
 * asks the device's class who uses it on this machine: a NIC whose interface carries the default route or has an
 * address, or a disk that holds the root, is mounted, is swap or is held, is never taken, `--force` or not; a NIC
 * whose interface is merely up needs `--force`.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { type Machine, machineFor } from "./device_use.ts";
import { deviceKind } from "./ids.ts";
import { DRIVERS, useOf } from "./table.ts";
import { devicePath, parsePciAddress, readDevice, SYSFS } from "../ffi/sysfs.ts";

/** The names of the drivers the driver table has for PCI devices. */
function pciDriverNames(): string {
  return DRIVERS.filter((d) => d.pci).map((d) => d.name).join(", ");
}

/** Where a device can be bound. */
export type BindTarget = "vfio-pci" | "uio_pci_generic" | "kernel";

/** The drivers that hand a device to userspace. */
const USER_DRIVERS = ["vfio-pci", "uio_pci_generic"];

/** Options for {@link bindDevice}. */
export interface BindOptions {
  /** sysfs root (tests use a fixture tree). */
  root?: string;
  /** Bind even though a network interface of the device is up (never one with an address or default route). */
  force?: boolean;
  /** What the machine runs on (default: read from /proc and the interfaces when `root` is the real sysfs). */
  machine?: Partial<Machine>;
}

/** Thrown when binding is refused for safety. */
export class BindRefused extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("bind", msg);
  }
}

function write(path: string, text: string): void {
  try {
    Deno.writeTextFileSync(path, text);
  } catch (e) {
    throw new PvdrvError("bind", `writing '${text.trim()}' to ${path} failed: ${(e as Error).message}`);
  }
}

/** The command that would bind `address` to `target` (shown by the probe; never with --force). */
export function bindCommands(address: string, target: Exclude<BindTarget, "kernel">): string {
  return `deno task bind ${address} ${target === "vfio-pci" ? "vfio" : "uio"}`;
}

/** Bind `address` to `target`; returns the driver it was bound to before. */
export function bindDevice(address: string, target: BindTarget, opts: BindOptions = {}): string | null {
  const root = opts.root ?? SYSFS;
  const addr = parsePciAddress(address);
  const info = readDevice(addr, root);
  const dir = devicePath(addr, root);
  if (target === "kernel") {
    // Already on a kernel driver: nothing to give back (unbinding and reprobing would only disturb it).
    if (info.driver !== null && !USER_DRIVERS.includes(info.driver)) {
      if (info.driverOverride !== null) write(`${dir}/driver_override`, "\n");
      return info.driver;
    }
  } else {
    const { kind, supported } = deviceKind(info);
    if (!supported) {
      throw new BindRefused(
        `${addr} is ${
          kind === "-" ? "not a device pvdrv drives" : kind
        }: pvdrv has no driver for it, so it ` +
          `stays with the kernel (pvdrv binds only what its drivers serve: ${pciDriverNames()}; --force does not ` +
          `change this)`,
      );
    }
    if (info.driver === target) return info.driver;
    const use = useOf(info, root, machineFor(root, opts.machine));
    if (use?.level === "protected") {
      throw new BindRefused(
        `${addr} is active: ${use.reason}, so unbinding it would pull it from under this machine. ` +
          `pvdrv never takes such a device, --force or not: bind a spare device (in a lab VM).`,
      );
    }
    if (use && !opts.force) {
      throw new BindRefused(
        `${addr} is active: ${use.reason}, so unbinding it would cut that network. ` +
          `Bring the interface down first, or use --force only on a disposable VM.`,
      );
    }
    const drivers = `${root}/bus/pci/drivers`;
    try {
      Deno.statSync(`${drivers}/${target}`);
    } catch {
      throw new PvdrvError(
        "bind",
        `driver ${target} is not loaded: ${
          target === "vfio-pci"
            ? "load irqbypass, vfio, vfio_iommu_type1, vfio-pci"
            : "load uio, uio_pci_generic"
        } (modprobe ${target})`,
      );
    }
    if (target === "vfio-pci" && info.iommuGroup === null) {
      throw new PvdrvError(
        "bind",
        `${addr} has no IOMMU group: boot with an IOMMU (intel_iommu=on, a vIOMMU in a VM) to use VFIO`,
      );
    }
  }
  write(`${dir}/driver_override`, target === "kernel" ? "\n" : target);
  if (info.driver) write(`${dir}/driver/unbind`, addr);
  write(`${root}/bus/pci/drivers_probe`, addr);
  const now = readDevice(addr, root).driver;
  if (target !== "kernel" && now !== target) {
    throw new PvdrvError("bind", `${addr} did not bind to ${target} (now: ${now ?? "no driver"}); see dmesg`);
  }
  return info.driver;
}
