/**
 * virtio-blk's wire formats (virtio 1.2 §5.2), written once and read by both sides: the driver
 * (drivers/virtio/blk.ts) and the device model (tests/models/virtio_blk_device.ts).
 *
 * A request is one descriptor chain: the 16-byte header (device-readable), then data (device-readable for
 * writes, device-writable for reads and GET_ID) or, for DISCARD and WRITE_ZEROES, 16-byte segments
 * (device-readable), then one status byte (device-writable) (§5.2.6). Sector fields are in 512-byte units
 * whatever the logical block size (§5.2.6).
 * @module
 */

/** The unit of every sector field. */
export const SECTOR = 512;

/** Offsets in `struct virtio_blk_config` (§5.2.4). */
export const BLK_CONFIG = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  GEOMETRY: 16,
  BLK_SIZE: 20,
  PHYSICAL_BLOCK_EXP: 24,
  ALIGNMENT_OFFSET: 25,
  MIN_IO_SIZE: 26,
  OPT_IO_SIZE: 28,
  WRITEBACK: 32,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
} as const;

/** Request types (§5.2.6). */
export const BLK_T = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  DISCARD: 11,
  WRITE_ZEROES: 13,
} as const;

/** Status values the device writes (§5.2.6); any other value is the device's error. */
export const BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** Bytes of the request header: type le32, reserved le32, sector le64. */
export const BLK_REQ_HDR = 16;
/** Bytes of one DISCARD / WRITE_ZEROES segment: sector le64, num_sectors le32, flags le32. */
export const BLK_DWZ_SEG = 16;
/** WRITE_ZEROES segment flag: the device may unmap the range (§5.2.6). */
export const BLK_DWZ_F_UNMAP = 1;
/** Bytes of a GET_ID answer: the serial, NUL-padded (§5.2.6). */
export const BLK_ID_BYTES = 20;

/** Write a request header at 32-bit word `w` of `u32` (x86 is little-endian, as virtio 1.x fields are). */
export function writeBlkHeader(u32: Uint32Array, w: number, type: number, sector: number): void {
  u32[w] = type;
  u32[w + 1] = 0;
  u32[w + 2] = sector >>> 0;
  u32[w + 3] = Math.floor(sector / 0x1_0000_0000) >>> 0;
}

/** A request header as the device reads it. */
export function readBlkHeader(b: Uint8Array): { type: number; sector: number } {
  const v = new DataView(b.buffer, b.byteOffset, BLK_REQ_HDR);
  return { type: v.getUint32(0, true), sector: v.getUint32(8, true) + v.getUint32(12, true) * 0x1_0000_0000 };
}

/** Write one DISCARD / WRITE_ZEROES segment at word `w` of `u32`. */
export function writeDwzSegment(
  u32: Uint32Array,
  w: number,
  sector: number,
  sectors: number,
  flags: number,
): void {
  u32[w] = sector >>> 0;
  u32[w + 1] = Math.floor(sector / 0x1_0000_0000) >>> 0;
  u32[w + 2] = sectors;
  u32[w + 3] = flags;
}

/** A DISCARD / WRITE_ZEROES segment as the device reads it. */
export function readDwzSegment(b: Uint8Array): { sector: number; sectors: number; flags: number } {
  const v = new DataView(b.buffer, b.byteOffset, BLK_DWZ_SEG);
  return {
    sector: v.getUint32(0, true) + v.getUint32(4, true) * 0x1_0000_0000,
    sectors: v.getUint32(8, true),
    flags: v.getUint32(12, true),
  };
}
