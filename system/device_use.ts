/**
 * "Who uses this device on this machine", per device class: a NIC is in use when one of its interfaces carries
 * the default route or has an address (never taken) or is merely up (taken only with --force); a disk is in use
 * when it or a partition holds the root, is mounted, is swap or is held by another block device (never taken).
 * `bind` and `probe` ask here through the driver table; each class answers for its own kind of device.
 * @module
 */
import { interfaceInUse, type PciDeviceInfo, SYSFS } from "../ffi/sysfs.ts";
import { diskUseReason, type MachineDisks, noMachineDisks, readMachineDisks } from "./machine_disks.ts";
import { type MachineNet, machineNetFor, protectedReason } from "./machine_net.ts";

/** What the machine runs on: its network and its storage. */
export interface Machine {
  /** Interfaces with the default route or an address. */
  net: MachineNet;
  /** Mounts and swap. */
  disks: MachineDisks;
}

/** How a device is used: `protected` (never taken, --force or not) or `up` (taken only with --force). */
export interface DeviceUse {
  /** How hard the refusal is. */
  level: "protected" | "up";
  /** What uses it, for the message ("eth0 carries the default route"). */
  reason: string;
}

/** The machine's view for sysfs `root`: the real one for the real sysfs, none for a fixture tree. */
export function machineFor(root: string, given?: Partial<Machine>): Machine {
  const real = root === SYSFS;
  return {
    net: machineNetFor(root, given?.net),
    disks: given?.disks ?? (real ? readMachineDisks() : noMachineDisks()),
  };
}

/** The NIC class: interfaces with the machine's network are protected; one merely up needs --force. */
export function networkUse(interfaces: string[], root: string, net: MachineNet): DeviceUse | null {
  for (const n of interfaces) {
    const why = protectedReason(n, net);
    if (why) return { level: "protected", reason: why };
  }
  const up = interfaces.filter((n) => interfaceInUse(n, root));
  return up.length ? { level: "up", reason: `${up.join(", ")} is up` } : null;
}

/** The disk class: a disk the machine's storage uses is protected. */
export function diskUse(disks: string[], root: string, m: MachineDisks): DeviceUse | null {
  for (const d of disks) {
    const why = diskUseReason(d, root, m);
    if (why) return { level: "protected", reason: why };
  }
  return null;
}

/** How the machine uses PCI function `d` (whatever its class: its interfaces and its disks), or null. */
export function deviceUse(d: PciDeviceInfo, root: string, m: Machine): DeviceUse | null {
  return networkUse(d.netInterfaces, root, m.net) ?? diskUse(d.blockDevices, root, m.disks);
}
