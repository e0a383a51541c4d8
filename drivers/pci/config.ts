/**
 * PCI configuration space: the type-0 header, the capability list, MSI-X, and the virtio vendor capabilities
 * (virtio 1.2 §4.1.4). Parsing works on a byte snapshot, so fixtures and live devices share one code path; a
 * malformed list (loops, pointers into the header, out-of-range lengths) gives an error, never a hang.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import { type PciFunction, snapshotConfig } from "../../hal/pci.ts";

/** Standard capability ids. */
export const CAP_MSI = 0x05, CAP_VENDOR = 0x09, CAP_PCIE = 0x10, CAP_MSIX = 0x11;

/** virtio PCI capability types (virtio 1.2 §4.1.4). */
export const VIRTIO_PCI_CAP = {
  COMMON: 1,
  NOTIFY: 2,
  ISR: 3,
  DEVICE: 4,
  PCI_CFG: 5,
  SHARED_MEMORY: 8,
  VENDOR: 9,
} as const;

/** One entry of the capability list. */
export interface Capability {
  /** Capability id. */
  id: number;
  /** Offset in config space. */
  offset: number;
}

/** A virtio_pci_cap (virtio 1.2 §4.1.4). */
export interface VirtioCap {
  /** cfg_type. */
  type: number;
  /** BAR index 0..5. */
  bar: number;
  /** Offset within the BAR. */
  offset: number;
  /** Length of the structure. */
  length: number;
  /** Where the capability itself sits in config space. */
  capOffset: number;
  /** For NOTIFY: notify_off_multiplier. */
  notifyOffMultiplier?: number;
}

/** The MSI-X capability. */
export interface MsixCap {
  /** Offset in config space. */
  capOffset: number;
  /** Number of table entries. */
  tableSize: number;
  /** BAR and offset of the vector table. */
  tableBar: number;
  /** Offset of the table within its BAR. */
  tableOffset: number;
  /** BAR of the pending-bit array. */
  pbaBar: number;
  /** Offset of the PBA within its BAR. */
  pbaOffset: number;
  /** MSI-X enable bit. */
  enabled: boolean;
}

/** The parsed header and capabilities of a function. */
export interface PciConfig {
  /** Vendor id. */
  vendorId: number;
  /** Device id. */
  deviceId: number;
  /** Command register. */
  command: number;
  /** Status register. */
  status: number;
  /** Revision id. */
  revision: number;
  /** Class code (base << 16 | sub << 8 | prog-if). */
  classCode: number;
  /** Header type (low 7 bits). */
  headerType: number;
  /** Subsystem vendor id (type-0 header). */
  subsystemVendorId: number;
  /** Subsystem id. */
  subsystemId: number;
  /** Interrupt pin (0 none, 1 INTA...). */
  interruptPin: number;
  /** Raw BAR registers (type-0: 6). */
  bars: number[];
  /** The capability list in order. */
  capabilities: Capability[];
  /** virtio vendor capabilities. */
  virtio: VirtioCap[];
  /** MSI-X capability, if present. */
  msix?: MsixCap;
}

/** Error for a config space that does not parse. */
export class PciConfigError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("pci-config", msg);
  }
}

/** Read and parse the config space of an opened function. */
export function readConfigOf(pci: PciFunction): PciConfig {
  return parseConfig(snapshotConfig(pci.config));
}

/** Parse a config-space snapshot (at least the 64-byte header; usually 256 or 4096 bytes). */
export function parseConfig(bytes: Uint8Array): PciConfig {
  if (bytes.length < 64) throw new PciConfigError(`config space too short: ${bytes.length} bytes`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u8 = (o: number) => dv.getUint8(o);
  const u16 = (o: number) => dv.getUint16(o, true);
  const u32 = (o: number) => dv.getUint32(o, true);
  const vendorId = u16(0);
  if (vendorId === 0xffff) throw new PciConfigError("no device (vendor id 0xffff)");
  const headerType = u8(0x0e) & 0x7f;
  const status = u16(0x06);
  const cfg: PciConfig = {
    vendorId,
    deviceId: u16(2),
    command: u16(4),
    status,
    revision: u8(8),
    classCode: u32(8) >>> 8,
    headerType,
    subsystemVendorId: headerType === 0 ? u16(0x2c) : 0,
    subsystemId: headerType === 0 ? u16(0x2e) : 0,
    interruptPin: u8(0x3d),
    bars: headerType === 0 ? [0, 1, 2, 3, 4, 5].map((i) => u32(0x10 + 4 * i)) : [],
    capabilities: [],
    virtio: [],
  };
  if (!(status & 0x10)) return cfg; // no capability list
  const limit = Math.min(bytes.length, 256);
  const seen = new Set<number>();
  let ptr = u8(0x34) & 0xfc;
  while (ptr !== 0) {
    if (ptr < 0x40 || ptr + 2 > limit) {
      throw new PciConfigError(`capability pointer 0x${ptr.toString(16)} out of range`);
    }
    if (seen.has(ptr)) throw new PciConfigError(`capability list loops at 0x${ptr.toString(16)}`);
    seen.add(ptr);
    const id = u8(ptr);
    cfg.capabilities.push({ id, offset: ptr });
    if (id === CAP_VENDOR) {
      const v = parseVirtioCap(dv, ptr, limit);
      if (v) cfg.virtio.push(v);
    } else if (id === CAP_MSIX) {
      if (ptr + 12 > limit) throw new PciConfigError("truncated MSI-X capability");
      const ctl = u16(ptr + 2), table = u32(ptr + 4), pba = u32(ptr + 8);
      cfg.msix = {
        capOffset: ptr,
        tableSize: (ctl & 0x7ff) + 1,
        enabled: (ctl & 0x8000) !== 0,
        tableBar: table & 7,
        tableOffset: (table & ~7) >>> 0,
        pbaBar: pba & 7,
        pbaOffset: (pba & ~7) >>> 0,
      };
    }
    ptr = u8(ptr + 1) & 0xfc;
  }
  return cfg;
}

function parseVirtioCap(dv: DataView, at: number, limit: number): VirtioCap | undefined {
  // struct virtio_pci_cap { u8 cap_vndr, cap_next, cap_len, cfg_type, bar, id, padding[2]; le32 offset, length; }
  if (at + 16 > limit) throw new PciConfigError(`truncated vendor capability at 0x${at.toString(16)}`);
  const capLen = dv.getUint8(at + 2);
  if (capLen < 16) return undefined; // a vendor capability that is not virtio's
  const cap: VirtioCap = {
    type: dv.getUint8(at + 3),
    bar: dv.getUint8(at + 4),
    offset: dv.getUint32(at + 8, true),
    length: dv.getUint32(at + 12, true),
    capOffset: at,
  };
  if (cap.type === VIRTIO_PCI_CAP.NOTIFY) {
    // struct virtio_pci_notify_cap { struct virtio_pci_cap cap; le32 notify_off_multiplier; }
    if (capLen < 20 || at + 20 > limit) throw new PciConfigError("truncated virtio notify capability");
    cap.notifyOffMultiplier = dv.getUint32(at + 16, true);
  }
  return cap;
}

/** Size in bytes of a capability-described structure, checked against its BAR size. */
export function checkCapInBar(cap: VirtioCap, barSize: number): void {
  if (cap.bar > 5) throw new PciConfigError(`virtio capability type ${cap.type} names BAR ${cap.bar}`);
  // virtio 1.2 §4.1.4: a structure's offset (and so every register in it) is 4-byte aligned.
  if (cap.offset % 4 !== 0) {
    throw new PciConfigError(
      `virtio capability type ${cap.type} at BAR${cap.bar} offset 0x${
        cap.offset.toString(16)
      } is not 4-byte aligned`,
    );
  }
  if (cap.offset + cap.length > barSize) {
    throw new PciConfigError(
      `virtio capability type ${cap.type} (BAR${cap.bar} 0x${cap.offset.toString(16)}+0x${
        cap.length.toString(16)
      }) exceeds the BAR (0x${barSize.toString(16)})`,
    );
  }
}

/** Human name of a class code. */
export function className(classCode: number): string {
  const base = classCode >>> 16, sub = (classCode >>> 8) & 0xff;
  const names: Record<number, string> = {
    0x01: "storage",
    0x02: "network",
    0x03: "display",
    0x04: "multimedia",
    0x05: "memory",
    0x06: "bridge",
    0x07: "communication",
    0x08: "system",
    0x0c: "serial bus",
    0xff: "other",
  };
  if (base === 0x02 && sub === 0) return "ethernet";
  return names[base] ?? `class ${base.toString(16)}`;
}
