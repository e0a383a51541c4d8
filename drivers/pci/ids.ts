/**
 * PCI ids pvdrv recognises (virtio 1.2 §4.1.2: vendor 0x1af4, modern ids 0x1040 + type, transitional 0x1000..0x103f
 * with the type in the subsystem id; the Xen platform device 5853:0001) and which of them a pvdrv driver serves.
 * @module
 */

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

/** Classify a function by ids. */
export function deviceKind(
  d: { vendorId: number; deviceId: number; subsystemId: number },
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
