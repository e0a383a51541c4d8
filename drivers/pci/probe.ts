/**
 * What pvdrv sees in each PCI function: which driver could take it and how it would be bound. Read-only.
 * @module
 */
import { bindCommands } from "./bind.ts";
import { className, parseConfig } from "./config.ts";
import { interfaceInUse, listDevices, type PciDeviceInfo, readConfigBytes, SYSFS } from "./sysfs.ts";

/** virtio device types by modern PCI id (0x1040 + type) (virtio 1.2 §5). */
const VIRTIO_TYPES: Record<number, string> = {
  1: "net",
  2: "block",
  3: "console",
  4: "rng",
  5: "balloon",
  8: "scsi",
  9: "9p",
  16: "gpu",
  18: "input",
  19: "vsock",
  20: "crypto",
  26: "fs",
};
const TRANSITIONAL_TYPE: Record<number, number> = {
  0x1000: 1,
  0x1001: 2,
  0x1002: 5,
  0x1003: 3,
  0x1004: 8,
  0x1005: 4,
  0x1009: 9,
};

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
  /** An interface is up: binding would need --force. */
  inUse: boolean;
  /** Whether VFIO can take it, or why not. */
  vfio: string;
  /** Whether uio_pci_generic can take it, or why not. */
  uio: string;
  /** The command that would bind it for pvdrv (empty when not applicable). */
  bindCommand: string;
}

/** Classify a function by ids. */
export function deviceKind(
  d: Pick<PciDeviceInfo, "vendorId" | "deviceId" | "subsystemId">,
): { kind: string; supported: boolean } {
  if (d.vendorId === 0x5853 && d.deviceId === 0x0001) return { kind: "xen-platform", supported: false };
  if (d.vendorId !== 0x1af4) return { kind: "-", supported: false };
  if (d.deviceId >= 0x1040 && d.deviceId <= 0x107f) {
    const t = d.deviceId - 0x1040;
    return { kind: `virtio-${VIRTIO_TYPES[t] ?? t} (modern)`, supported: t === 1 };
  }
  if (d.deviceId >= 0x1000 && d.deviceId <= 0x103f) {
    const t = TRANSITIONAL_TYPE[d.deviceId] ?? d.subsystemId;
    return { kind: `virtio-${VIRTIO_TYPES[t] ?? t} (transitional)`, supported: t === 1 };
  }
  return { kind: "virtio (unknown)", supported: false };
}

function driverLoaded(root: string, name: string): boolean {
  try {
    Deno.statSync(`${root}/bus/pci/drivers/${name}`);
    return true;
  } catch {
    return false;
  }
}

/** Probe every PCI function under `root`. */
export function probe(root = SYSFS): ProbeEntry[] {
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
    const inUse = d.netInterfaces.some((n) => interfaceInUse(n, root));
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
    if (supported && d.driver !== "vfio-pci" && d.driver !== "uio_pci_generic") {
      const target = vfio.startsWith("yes") ? "vfio-pci" : uio.startsWith("yes") ? "uio_pci_generic" : null;
      if (target) bindCommand = bindCommands(d.address, target) + (inUse ? " --force" : "");
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
      inUse,
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
  const rows = [["ADDRESS", "ID", "KIND", "DRIVER", "GROUP", "NETIF", "VFIO", "UIO", "BIND WITH"]];
  for (const e of entries) {
    rows.push([
      e.address,
      e.id,
      e.kind,
      e.driver ?? "-",
      e.iommuGroup === null ? "-" : String(e.iommuGroup),
      e.interfaces.length ? e.interfaces.join(",") + (e.inUse ? " (up)" : "") : "-",
      e.vfio,
      e.uio,
      e.bindCommand || "-",
    ]);
  }
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((c, i) => i === r.length - 1 ? c : c.padEnd(w[i])).join("  ")).join("\n");
}
