/**
 * Names for the PCI devices pvdrv recognises (virtio 1.2 §4.1.2: vendor 0x1af4, modern ids 0x1040 + type,
 * transitional 0x1000..0x103f with the type in the subsystem id; the Xen platform device 5853:0001); whether a
 * pvdrv driver serves one is the driver table's answer (drivers/table.ts).
 * @module
 */
import { pciDriverFor } from "./table.ts";
import { VIRTIO_VENDOR, virtioDeviceType } from "../drivers/virtio/pci.ts";

/** Names of virtio device types (virtio 1.2 §5). */
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

/** Name a function by its ids, and whether a pvdrv driver (the driver table) serves it. */
export function deviceKind(
  d: { vendorId: number; deviceId: number; subsystemId: number },
): { kind: string; supported: boolean } {
  return { kind: kindName(d), supported: pciDriverFor(d) !== null };
}

function kindName(d: { vendorId: number; deviceId: number; subsystemId: number }): string {
  if (d.vendorId === 0x5853 && d.deviceId === 0x0001) return "xen-platform";
  const t = virtioDeviceType(d);
  if (t === null) return d.vendorId === VIRTIO_VENDOR ? "virtio (unknown)" : "-";
  return `virtio-${VIRTIO_TYPES[t] ?? t} (${d.deviceId >= 0x1040 ? "modern" : "transitional"})`;
}
