/**
 * virtio-blk's device config (virtio 1.2 §5.2.4) as the driver reads it: every negotiated feature's field inside
 * the structure the device described, read consistently (config_generation), each value checked; and what the
 * disk then says of itself (DiskInfo) within the driver's buffer and queue options.
 * @module
 */
import type { DiskInfo } from "../block/disk.ts";
import { BLK_F } from "./features.ts";
import { BLK_CONFIG as CFG, SECTOR } from "./blk_wire.ts";
import { readConfig, VirtioError, type VirtioTransport } from "./transport.ts";

/** The largest capacity a JS number addresses exactly, in 512-byte sectors (2^53 bytes). */
const MAX_SECTORS = 2 ** 44;

/** Least common multiple of two positive integers. */
function lcm(a: number, b: number): number {
  let x = a, y = b;
  while (y) [x, y] = [y, x % y];
  return (a / x) * b;
}

/** The device config as pvdrv reads it. */
export interface BlkConfig {
  capacitySectors: number;
  blkSize: number;
  physExp: number;
  segMax: number;
  sizeMax: number;
  writeback: number;
  numQueues: number;
  maxDiscardSectors: number;
  discardAlignment: number;
  maxWriteZeroesSectors: number;
}

/** The driver options that bound what a disk says of itself. */
export interface BlkInfoOptions {
  /** Bytes of one DMA buffer, a multiple of 4096 (default 64 KiB). */
  bufferBytes?: number;
  /** Buffers in one request (default 8). */
  maxSegments?: number;
  /** Requests in flight per queue (default 32). */
  queueDepth?: number;
}

/** virtio_blk_config (§5.2.4), read consistently and checked field by field; `name` is for the errors. */
export function readBlkConfig(t: VirtioTransport, f: bigint, name: string): BlkConfig {
  const size = t.deviceConfig.size;
  // Each negotiated feature's fields must lie inside the device-config structure the device described.
  const need = (f & BLK_F.WRITE_ZEROES)
    ? CFG.WRITE_ZEROES_MAY_UNMAP + 1
    : (f & BLK_F.DISCARD)
    ? CFG.DISCARD_SECTOR_ALIGNMENT + 4
    : (f & BLK_F.MQ)
    ? CFG.NUM_QUEUES + 2
    : (f & BLK_F.CONFIG_WCE)
    ? CFG.WRITEBACK + 1
    : (f & BLK_F.TOPOLOGY)
    ? CFG.OPT_IO_SIZE + 4
    : (f & BLK_F.BLK_SIZE)
    ? CFG.BLK_SIZE + 4
    : (f & BLK_F.SEG_MAX)
    ? CFG.SEG_MAX + 4
    : CFG.SIZE_MAX;
  if (size < need) {
    throw new VirtioError(
      `${name}: device config is ${size} bytes, too short for its features (needs ${need})`,
    );
  }
  const c = readConfig(t, (dc) => ({
    capacitySectors: dc.read32(CFG.CAPACITY) + dc.read32(CFG.CAPACITY + 4) * 0x1_0000_0000,
    blkSize: f & BLK_F.BLK_SIZE ? dc.read32(CFG.BLK_SIZE) : SECTOR,
    physExp: f & BLK_F.TOPOLOGY ? dc.read8(CFG.PHYSICAL_BLOCK_EXP) : 0,
    segMax: f & BLK_F.SEG_MAX ? dc.read32(CFG.SEG_MAX) : 1,
    sizeMax: f & BLK_F.SIZE_MAX ? dc.read32(CFG.SIZE_MAX) : 0,
    writeback: f & BLK_F.CONFIG_WCE ? dc.read8(CFG.WRITEBACK) : 1,
    numQueues: f & BLK_F.MQ ? dc.read16(CFG.NUM_QUEUES) : 1,
    maxDiscardSectors: f & BLK_F.DISCARD ? dc.read32(CFG.MAX_DISCARD_SECTORS) : 0,
    discardAlignment: f & BLK_F.DISCARD ? dc.read32(CFG.DISCARD_SECTOR_ALIGNMENT) : 0,
    maxWriteZeroesSectors: f & BLK_F.WRITE_ZEROES ? dc.read32(CFG.MAX_WRITE_ZEROES_SECTORS) : 0,
  }));
  const bad = (what: string) => {
    throw new VirtioError(`${name}: device reports ${what}`);
  };
  if (c.capacitySectors > MAX_SECTORS) bad(`capacity ${c.capacitySectors} sectors (more than 8 PiB)`);
  if (c.blkSize < SECTOR || c.blkSize > 65536 || (c.blkSize & (c.blkSize - 1))) {
    bad(`blk_size ${c.blkSize}`);
  }
  if (c.physExp > 15) bad(`physical_block_exp ${c.physExp}`);
  if (c.segMax < 1) bad(`seg_max ${c.segMax}`);
  if (f & BLK_F.SIZE_MAX && c.sizeMax < c.blkSize) {
    bad(`size_max ${c.sizeMax} (below blk_size ${c.blkSize})`);
  }
  if (c.numQueues < 1) bad(`num_queues ${c.numQueues}`);
  if (f & BLK_F.DISCARD && c.maxDiscardSectors < 1) bad(`max_discard_sectors ${c.maxDiscardSectors}`);
  if (f & BLK_F.WRITE_ZEROES && c.maxWriteZeroesSectors < 1) {
    bad(`max_write_zeroes_sectors ${c.maxWriteZeroesSectors}`);
  }
  return c;
}

/** What the disk says of itself: the config `c` for features `f`, within the driver's options `o`. */
export function diskInfo(c: BlkConfig, f: bigint, o: BlkInfoOptions): DiskInfo {
  const lbs = c.blkSize;
  const bufferBytes = o.bufferBytes ?? 65536;
  if (bufferBytes % 4096 !== 0 || bufferBytes < 4096) throw new RangeError(`bufferBytes ${bufferBytes}`);
  const seg = Math.min(bufferBytes, c.sizeMax || bufferBytes);
  const maxSegments = Math.max(1, Math.min(c.segMax, o.maxSegments ?? 8, 64));
  const capacity = Math.floor((c.capacitySectors * SECTOR) / lbs) * lbs;
  // Discards start at multiples of both the device's alignment and the logical block: their least common
  // multiple (a device alignment that makes it absurd leaves only offset 0).
  const align = lcm(lbs, (c.discardAlignment || 1) * SECTOR);
  return {
    capacity,
    logicalBlockSize: lbs,
    physicalBlockSize: lbs * 2 ** c.physExp,
    readOnly: (f & BLK_F.RO) !== 0n,
    writeCache: (f & BLK_F.FLUSH) !== 0n && c.writeback !== 0,
    discard: (f & BLK_F.DISCARD) !== 0n,
    writeZeroes: (f & BLK_F.WRITE_ZEROES) !== 0n,
    maxSegments,
    maxSegmentBytes: seg - (seg % lbs),
    maxTransferBytes: maxSegments * (seg - (seg % lbs)),
    maxDiscardBytes: Math.floor(Math.min(c.maxDiscardSectors * SECTOR, 2 ** 31) / lbs) * lbs,
    discardAlignment: align,
    maxWriteZeroesBytes: Math.floor(Math.min(c.maxWriteZeroesSectors * SECTOR, 2 ** 31) / lbs) * lbs,
    queueDepth: Math.max(1, Math.min(o.queueDepth ?? 32, 1024)),
  };
}
