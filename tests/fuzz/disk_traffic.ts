/**
 * The caller's side of the disk targets (`blk`, `blkfront`): valid traffic on any pvdrv `Disk` — reads and writes
 * of whole blocks that never overlap what is in flight, flushes, discards and write-zeroes — with a shadow of
 * what an honest device must hold, and the checks of every completion against it.
 */
import {
  type BlockBuffer,
  BlockOp,
  BlockRequest,
  BlockStatus,
  Completions,
  type Disk,
} from "../../drivers/block/disk.ts";
import { type Rng, Silent } from "./oracle.ts";

/** A request in flight. */
interface Pending {
  op: number;
  off: number;
  len: number;
  bufs: BlockBuffer[];
}

/** Traffic on `disk`, whose honest contents are `size` bytes (the shadow). */
export class DiskTraffic {
  /** What an honest device holds. */
  readonly shadow: Uint8Array;
  /** Requests in flight, by tag. */
  readonly pending = new Map<number, Pending>();
  /** Whether the device lied (statuses and contents are no longer checked). */
  hostile = false;
  /** Completions seen. */
  events = 0;
  #tag = 0;
  readonly #done = new Completions(64);

  constructor(readonly disk: Disk, size: number, readonly rng: Rng) {
    this.shadow = new Uint8Array(size);
  }

  /** Whether `[off, off+len)` overlaps a request in flight (the device may serve them in any order). */
  overlaps(off: number, len: number): boolean {
    for (const p of this.pending.values()) if (off < p.off + p.len && p.off < off + len) return true;
    return false;
  }

  /** Poll queue `q`: each completion was submitted, an honest one succeeded and a read returned the shadow. */
  complete(q = 0): void {
    const done = this.#done, n = this.disk.poll(done, done.n, q);
    this.events += n;
    for (let i = 0; i < n; i++) {
      const p = this.pending.get(done.tags[i]);
      if (!p) throw new Silent(`completion for tag ${done.tags[i]}, never submitted`);
      this.pending.delete(done.tags[i]);
      try {
        this.#check(p, done.status[i]);
      } finally {
        this.disk.release(p.bufs, p.bufs.length); // a failed check must not show as a leak too
      }
    }
  }

  /** An honest device's completion succeeded, and a read returned the shadow. */
  #check(p: Pending, st: number): void {
    if (this.hostile) return;
    if (st !== BlockStatus.Ok) throw new Silent(`an honest device's request ended with ${st}`);
    if (p.op !== BlockOp.Read) return;
    let o = 0;
    for (const b of p.bufs) {
      for (let k = 0; k < b.length; k++) {
        if (b.data[k] !== this.shadow[p.off + o + k]) {
          throw new Silent(`read at ${p.off} returned a wrong byte`);
        }
      }
      o += b.length;
    }
  }

  /** A read or write of whole blocks on queue `q`; `serve` lets a device that waits for it serve first. */
  readWrite(q: number, serve: () => void): void {
    const rng = this.rng, disk = this.disk, info = disk.info, lbs = info.logicalBlockSize;
    const blocks = Math.floor(Math.min(info.capacity, this.shadow.length) / lbs);
    if (blocks < 1) return;
    const n = rng.int(1, Math.max(1, Math.min(blocks, info.maxTransferBytes / lbs, 64)));
    const off = rng.int(0, blocks - n) * lbs, len = n * lbs;
    if (this.overlaps(off, len)) return;
    const need = Math.ceil(len / info.maxSegmentBytes), bufs: BlockBuffer[] = [];
    if (disk.allocBuffers(bufs, need, q) < need) {
      disk.release(bufs, bufs.length);
      serve();
      this.complete(q);
      return;
    }
    for (let k = 0; k < need; k++) {
      bufs[k].length = Math.min(info.maxSegmentBytes, len - k * info.maxSegmentBytes);
    }
    const write = rng.bool(0.5) && !info.readOnly;
    const data = write ? new Uint8Array(len) : null;
    if (data) {
      for (let k = 0; k < len; k++) data[k] = rng.int(0, 255);
      let o = 0;
      for (const b of bufs) b.data.set(data.subarray(o, o + b.length)), o += b.length;
    }
    const r = new BlockRequest().io(write ? BlockOp.Write : BlockOp.Read, off, bufs, need, ++this.#tag);
    r.fua = rng.bool(0.1);
    if (disk.submit([r], 1, q) === 0) return void disk.release(bufs, need);
    if (data) this.shadow.set(data, off);
    this.pending.set(this.#tag, { op: r.op, off, len, bufs });
  }

  /** One of `ops` (flush, discard, write-zeroes) on queue `q`, where the disk has it. */
  other(q: number, ops: BlockOp[]): void {
    const info = this.disk.info, lbs = info.logicalBlockSize, r = new BlockRequest();
    r.op = this.rng.pick(ops);
    r.tag = ++this.#tag;
    if (r.op !== BlockOp.Flush) {
      const align = r.op === BlockOp.Discard ? info.discardAlignment : lbs;
      const blocks = Math.floor(Math.min(info.capacity, this.shadow.length) / align);
      if (blocks < 1 || (r.op === BlockOp.Discard ? !info.discard : !info.writeZeroes)) return;
      const n = this.rng.int(1, Math.min(blocks, 8));
      r.offset = this.rng.int(0, blocks - n) * align;
      r.length = Math.min(
        n * align,
        r.op === BlockOp.Discard ? info.maxDiscardBytes : info.maxWriteZeroesBytes,
      );
      r.length -= r.length % lbs;
      if (r.length === 0 || this.overlaps(r.offset, r.length)) return;
    }
    if (this.disk.submit([r], 1, q) === 0) return;
    if (r.op !== BlockOp.Flush) this.shadow.fill(0, r.offset, r.offset + r.length);
    this.pending.set(r.tag, {
      op: r.op,
      off: r.offset,
      len: r.op === BlockOp.Flush ? 0 : r.length,
      bufs: [],
    });
  }

  /**
   * On an honest device: a few rounds of serving and polling every queue complete everything (a FUA write's
   * flush is posted by the first poll), and the device holds the shadow (`held`).
   */
  drain(serve: () => void, held: Uint8Array): void {
    for (let round = 0; round < 4 && this.pending.size > 0; round++) {
      serve();
      for (let q = 0; q < this.disk.queues; q++) this.complete(q);
    }
    if (this.pending.size !== 0) {
      throw new Silent(`${this.pending.size} requests never completed on an honest device`);
    }
    for (let i = 0; i < this.shadow.length; i++) {
      if (held[i] !== this.shadow[i]) throw new Silent(`the device holds a wrong byte at ${i}`);
    }
  }

  /** Give back the buffers of requests still in flight that the caller holds again (after a close). */
  releaseHeld(): void {
    for (const p of this.pending.values()) {
      const own = p.bufs.filter((b) => b.pool.owner(b) === "app");
      if (own.length) this.disk.release(own, own.length);
    }
  }
}
