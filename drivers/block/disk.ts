/**
 * The block device class: the {@link Disk} interface every pvdrv disk driver implements (virtio-blk; Xen blkfront
 * next), what a disk says of itself ({@link DiskInfo}), requests and completions, and the disk's DMA buffers.
 *
 * The zero-copy path: take buffers ({@link Disk.allocBuffers}), fill a reusable {@link BlockRequest} and submit it
 * in a batch (one doorbell), then poll completions into a {@link Completions} record of typed arrays: nothing is
 * allocated per request. The copying helpers (`read`, `write`, `flush`, ...) sit on top for everything else.
 * @module
 */
import { BufferPool, PoolBuffer, type PoolMemory } from "../core/buffer_pool.ts";

export type { IrqMode } from "../core/device.ts";

/** What a request does. */
export const BlockOp = {
  /** Read `length` bytes at `offset` into the buffers. */
  Read: 0,
  /** Write the buffers' bytes at `offset` (`fua`: durable before it completes). */
  Write: 1,
  /** Make every completed write durable (a no-op on a disk without a volatile cache). */
  Flush: 2,
  /** The range's contents are no longer needed (the device may unmap it). */
  Discard: 3,
  /** The range reads as zeroes afterwards (`unmap`: the device may unmap it). */
  WriteZeroes: 4,
  /** Read the device's serial into one buffer of at least 20 bytes. */
  GetId: 5,
} as const;
/** A {@link BlockOp} value. */
export type BlockOp = typeof BlockOp[keyof typeof BlockOp];

/** How a request ended (the virtio-blk status values, §5.2.6; blkif's map onto them). */
export const BlockStatus = {
  /** Done. */
  Ok: 0,
  /** The device failed it. */
  IoError: 1,
  /** The device does not do it. */
  Unsupported: 2,
} as const;

/** What a disk says of itself, checked at open. */
export interface DiskInfo {
  /** Size in bytes (a multiple of the logical block size). */
  capacity: number;
  /** The unit of every request's offset and length. */
  logicalBlockSize: number;
  /** The size writes should be multiples of for speed. */
  physicalBlockSize: number;
  /** Writes, discards and write-zeroes are refused. */
  readOnly: boolean;
  /** The device has a volatile write cache: only a flush (or FUA) makes writes durable. */
  writeCache: boolean;
  /** Discard is supported. */
  discard: boolean;
  /** Write-zeroes is supported. */
  writeZeroes: boolean;
  /** Buffers in one read or write. */
  maxSegments: number;
  /** Bytes in one buffer of a request. */
  maxSegmentBytes: number;
  /** Bytes in one read or write. */
  maxTransferBytes: number;
  /** Bytes in one discard. */
  maxDiscardBytes: number;
  /** Discards start at multiples of this (bytes). */
  discardAlignment: number;
  /** Bytes in one write-zeroes. */
  maxWriteZeroesBytes: number;
  /** Requests in flight per queue, at most. */
  queueDepth: number;
}

/** One reusable DMA buffer of a disk. */
export class BlockBuffer extends PoolBuffer {
  /** The pool the buffer belongs to. */
  declare readonly pool: BlockPool;
  /** Bytes of the buffer a request uses (reads fill them, writes send them). */
  length = 0;

  /** A taken buffer starts with no length. */
  override reset(): void {
    this.length = 0;
  }
}

/** A pool of {@link BlockBuffer}s (misuse is a "disk" error). */
export class BlockPool extends BufferPool<BlockBuffer> {
  /** `count` buffers of `size` bytes in `region`. */
  constructor(name: string, region: PoolMemory, count: number, size: number) {
    super(
      name,
      region,
      count,
      size,
      0,
      (p, i, off, addr, data) => new BlockBuffer(p, i, off, addr, data),
      "disk",
    );
  }
}

/** A request, filled by the caller and reusable at once: the disk copies what it needs when it is submitted. */
export class BlockRequest {
  /** What it does. */
  op: BlockOp = BlockOp.Read;
  /** Byte offset on the disk (a multiple of the logical block size). */
  offset = 0;
  /** Bytes (reads and writes: the buffers' lengths summed; discard and write-zeroes: the range). */
  length = 0;
  /** Writes: durable before completion (Force Unit Access). */
  fua = false;
  /** Write-zeroes: the device may unmap the range. */
  unmap = false;
  /** The buffers of a read, write or get-id, in order. */
  readonly buffers: BlockBuffer[] = [];
  /** How many of {@link buffers} the request uses. */
  count = 0;
  /** The caller's number for it, returned with its completion. */
  tag = 0;

  /** Set this request up as a read or write of `bufs[0..n)` at `offset` (length: their lengths summed). */
  io(
    op: typeof BlockOp.Read | typeof BlockOp.Write,
    offset: number,
    bufs: BlockBuffer[],
    n: number,
    tag = 0,
  ): this {
    this.op = op;
    this.offset = offset;
    this.count = n;
    let len = 0;
    for (let i = 0; i < n; i++) {
      this.buffers[i] = bufs[i];
      len += bufs[i].length;
    }
    this.length = len;
    this.fua = false;
    this.tag = tag;
    return this;
  }
}

/** Completed requests, written by {@link Disk.poll}: made once, reused. */
export class Completions {
  /** Each completion's tag. */
  readonly tags: Uint32Array;
  /** Each completion's {@link BlockStatus}. */
  readonly status: Uint8Array;
  /** Room for `n` completions. */
  constructor(readonly n: number) {
    this.tags = new Uint32Array(n);
    this.status = new Uint8Array(n);
  }
}

/** Counters of one disk queue. */
export interface DiskStats {
  /** Reads completed. */
  reads: number;
  /** Writes completed. */
  writes: number;
  /** Flushes completed. */
  flushes: number;
  /** Discards and write-zeroes completed. */
  discards: number;
  /** Bytes read. */
  bytesRead: number;
  /** Bytes written. */
  bytesWritten: number;
  /** Requests that completed with an error status. */
  errors: number;
  /** Doorbells rung (after suppression). */
  notifications: number;
  /** Interrupts waited for. */
  interrupts: number;
}

/** A fresh zeroed {@link DiskStats}. */
export function emptyDiskStats(): DiskStats {
  return {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    bytesRead: 0,
    bytesWritten: 0,
    errors: 0,
    notifications: 0,
    interrupts: 0,
  };
}

/** A block device driven by pvdrv. */
export interface Disk {
  /** Human name (driver and address). */
  readonly name: string;
  /** What the disk says of itself. */
  readonly info: DiskInfo;
  /** Request queues. */
  readonly queues: number;
  /** Take up to `n` free buffers (each `info.maxSegmentBytes` long) into `out`; returns how many. */
  allocBuffers(out: BlockBuffer[], n: number, queue?: number): number;
  /** Give buffers back. */
  release(bufs: BlockBuffer[], n: number): void;
  /**
   * Submit `reqs[0..n)`: every request is checked first (nothing is posted if one is bad: a RangeError or a
   * "disk" error says which and why); returns how many were posted (fewer when the queue is full), with one
   * doorbell. The buffers are the device's until the request completes.
   */
  submit(reqs: BlockRequest[], n: number, queue?: number): number;
  /** Completed requests (at most `max`) into `done`; their buffers are the caller's again. */
  poll(done: Completions, max: number, queue?: number): number;
  /** Requests in flight on `queue`. */
  inFlight(queue?: number): number;
  /** Await the queue's completion interrupt (opened with interrupts). */
  waitCompletion(queue?: number): Promise<void>;
  /** Block this thread up to `timeoutMs` for the queue's interrupt; true when woken or completions wait. */
  sleepCompletion(timeoutMs: number, queue?: number): boolean;
  /** Read `length` bytes at `offset` (copying; any length the limits allow, split as needed). */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Write `data` at `offset` (copying); `fua`: durable when this resolves. */
  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void>;
  /** Make completed writes durable. */
  flush(): Promise<void>;
  /** Discard a range. */
  discard(offset: number, length: number): Promise<void>;
  /** Zero a range (`unmap`: the device may unmap it). */
  writeZeroes(offset: number, length: number, opts?: { unmap?: boolean }): Promise<void>;
  /** The device's serial ("" when it has none). */
  serial(): Promise<string>;
  /** Re-read what the device says of itself after it changed (a resize); true when the capacity changed. */
  refresh(): boolean;
  /** Per-queue counters. */
  stats(): DiskStats[];
  /** Throws the error that broke a queue, if any. */
  checkHealth(): void;
  /** Stop the device and release everything (idempotent). */
  close(): Promise<void>;
}
