/**
 * What pvdrv sees in each PCI function: which driver could take it and how it would be bound. Read-only.
 * @module
 */
import { bindCommands } from "./bind.ts";
import { type Machine, machineFor } from "./device_use.ts";
import { useOf } from "./table.ts";
import { className, parseConfig } from "../drivers/pci/config.ts";
import { deviceKind } from "./ids.ts";
import { listDevices, readConfigBytes, SYSFS } from "../ffi/sysfs.ts";

/** The probe's view of one function. */
export interface ProbeEntry {
  /** PCI address. */
  address: string;
  /** vendor:device in hex. */
  id: string;
  /** Class name. */
  class: string;
  /** What the device is, e.g. "virtio-net (modern)". */
  kind: string;
  /** True when a pvdrv driver handles it. */
  supported: boolean;
  /** Bound kernel driver. */
  driver: string | null;
  /** IOMMU group. */
  iommuGroup: number | null;
  /** Network interfaces of the function. */
  interfaces: string[];
  /** Disks of the function. */
  disks: string[];
  /** The machine uses it (an interface up or carrying its network, a disk mounted...): pvdrv does not offer to bind it. */
  inUse: boolean;
  /** Why the device is active (like dpdk-devbind's "*Active*"), or "" when it is not. */
  active: string;
  /** Whether VFIO can take it, or why not. */
  vfio: string;
  /** Whether uio_pci_generic can take it, or why not. */
  uio: string;
  /** The command that would bind it for pvdrv (empty when not applicable or active; never with --force). */
  bindCommand: string;
}

function driverLoaded(root: string, name: string): boolean {
  try {
    Deno.statSync(`${root}/bus/pci/drivers/${name}`);
    return true;
  } catch {
    return false;
  }
}

/** Probe every PCI function under `root` (`machine`: what the machine runs on, read from /proc by default). */
export function probe(root = SYSFS, machine?: Partial<Machine>): ProbeEntry[] {
  const m = machineFor(root, machine);
  const vfioLoaded = driverLoaded(root, "vfio-pci");
  const uioLoaded = driverLoaded(root, "uio_pci_generic");
  return listDevices(root).map((d) => {
    const { kind, supported } = deviceKind(d);
    let pin = 0;
    try {
      pin = parseConfig(readConfigBytes(d.address, root)).interruptPin;
    } catch {
      pin = 0;
    }
    const use = useOf(d, root, m);
    const active = use ? (use.level === "protected" ? use.reason + ": never bound" : use.reason) : "";
    const vfio = d.driver === "vfio-pci"
      ? "bound"
      : d.iommuGroup === null
      ? "no (no IOMMU group)"
      : vfioLoaded
      ? "yes"
      : "yes (load vfio-pci)";
    const uio = d.driver === "uio_pci_generic"
      ? "bound"
      : pin === 0
      ? "no (no INTx pin)"
      : uioLoaded
      ? "yes"
      : "yes (load uio_pci_generic)";
    let bindCommand = "";
    if (supported && !use && d.driver !== "vfio-pci" && d.driver !== "uio_pci_generic") {
      const target = vfio.startsWith("yes") ? "vfio-pci" : uio.startsWith("yes") ? "uio_pci_generic" : null;
      if (target) bindCommand = bindCommands(d.address, target);
    }
    return {
      address: d.address,
      id: `${hex4(d.vendorId)}:${hex4(d.deviceId)}`,
      class: className(d.classCode),
      kind,
      supported,
      driver: d.driver,
      iommuGroup: d.iommuGroup,
      interfaces: d.netInterfaces,
      disks: d.blockDevices,
      inUse: use !== null,
      active,
      vfio,
      uio,
      bindCommand,
    };
  });
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

/** Render probe entries as an aligned text table. */
export function formatTable(entries: ProbeEntry[]): string {
  const rows = [["ADDRESS", "ID", "KIND", "DRIVER", "GROUP", "NETIF/DISK", "VFIO", "UIO", "BIND WITH"]];
  for (const e of entries) {
    rows.push([
      e.address,
      e.id,
      e.kind,
      e.driver ?? "-",
      e.iommuGroup === null ? "-" : String(e.iommuGroup),
      [...e.interfaces, ...e.disks].join(",") || "-",
      e.vfio,
      e.uio,
      e.bindCommand || (e.active ? `- (active: ${e.active})` : "-"),
    ]);
  }
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((c, i) => i === r.length - 1 ? c : c.padEnd(w[i])).join("  ")).join("\n");
}
