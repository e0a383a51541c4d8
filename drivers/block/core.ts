/**
 * The disk class core: everything a pvdrv block driver does the same way whatever its rings look like, on the
 * class-agnostic device core (drivers/core/device.ts). A driver (virtio-blk; blkfront next) extends
 * {@link DiskCore} and supplies the ring steps (does a request fit, post it, ring the doorbell, collect
 * completions, arm and disarm interrupts, report a broken queue, re-read the device's limits, tear down); the core
 * checks every request before it is posted, keeps the in-flight slots (each id checked when the device answers,
 * nothing completed twice), hands buffers to and from the device, counts, and offers the copying helpers.
 *
 * The hot path (submit, poll) allocates nothing per request.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { IrqSource } from "../../hal/irq.ts";
import { tick } from "../../hal/event_loop.ts";
import { DeviceCore } from "../core/device.ts";
import { RequestIds } from "../core/request_ids.ts";
import {
  type BlockBuffer,
  BlockOp,
  type BlockPool,
  BlockRequest,
  BlockStatus,
  Completions,
  type Disk,
  type DiskInfo,
  type DiskStats,
} from "./disk.ts";

/** Bytes a GET_ID answer needs (virtio-blk's serial; blkfront reads its id from xenstore). */
export const SERIAL_BYTES = 20;
/** Polls between yields while a copying helper waits without interrupts. */
const POLLS_PER_YIELD = 64;

/** The in-flight bookkeeping of one disk queue, made by {@link DiskCore.slots}. */
export interface RequestSlots {
  /** Slot ids, each in flight with its request's op. */
  readonly ids: RequestIds;
  /** Per slot: the caller's tag. */
  readonly tag: Uint32Array;
  /** Per slot: bytes (reads and writes, for the counters). */
  readonly bytes: Float64Array;
  /** Per slot: buffers the device holds (maxSegments per slot). */
  readonly bufs: (BlockBuffer | null)[];
  /** Per slot: how many. */
  readonly nbufs: Uint8Array;
  /** Completions made without the device (a flush on a disk with no volatile cache): their tags. */
  readonly local: Uint32Array;
  /** How many wait in {@link local}. */
  nlocal: number;
}

/** What the disk core needs of one queue (a driver's queue type extends it). */
export interface DiskQueue {
  /** The queue's buffers. */
  readonly pool: BlockPool;
  /** In-flight requests. */
  readonly slots: RequestSlots;
  /** Counters. */
  readonly stats: DiskStats;
  /** The completion interrupt, or null when polling. */
  readonly irq: IrqSource | null;
}

/** The shared part of every pvdrv disk. */
export abstract class DiskCore<Q extends DiskQueue> extends DeviceCore<Q> implements Disk {
  /** Misuse of a disk is a "disk" error. */
  protected readonly errorKind = "disk" as const;
  /** What the disk says of itself (re-read by {@link refresh}). */
  abstract info: DiskInfo;

  // ---- ring steps a driver supplies ----

  /** Whether `req` (checked) fits in `q`'s ring now. */
  protected abstract fits(q: Q, req: BlockRequest): boolean;
  /** Put checked request `req` on `q`'s ring as in-flight slot `slot` (not yet visible to the device). */
  protected abstract post(q: Q, slot: number, req: BlockRequest): void;
  /** Publish what {@link post} queued and notify the device if it wants. */
  protected abstract kick(q: Q): void;
  /** Move up to `max - k` completions into `done` from index `k` with {@link finish}; returns the new count. */
  protected abstract collect(q: Q, done: Completions, k: number, max: number): number;
  /** Read what the device says of itself again (capacity, limits). */
  protected abstract readInfo(): DiskInfo;

  // ---- helpers for drivers ----

  /** In-flight bookkeeping for a queue of `depth` requests. */
  protected slots(depth: number): RequestSlots {
    return {
      ids: new RequestIds(depth),
      tag: new Uint32Array(depth),
      bytes: new Float64Array(depth),
      bufs: new Array(depth * this.info.maxSegments).fill(null),
      nbufs: new Uint8Array(depth),
      local: new Uint32Array(depth),
      nlocal: 0,
    };
  }

  /**
   * Slot `slot` of `q` completed with `status` (already checked to be a {@link BlockStatus}): its buffers are the
   * caller's again and its tag goes into `done` at `k`. A slot not in flight is the device's error: the caller
   * breaks the queue with the returned false.
   */
  protected finish(q: Q, slot: number, status: number, done: Completions, k: number): boolean {
    const s = q.slots, op = s.ids.complete(slot);
    if (op < 0) return false;
    const base = slot * this.info.maxSegments, n = s.nbufs[slot];
    for (let i = 0; i < n; i++) {
      const b = s.bufs[base + i]!;
      s.bufs[base + i] = null;
      b.pool.toApp(b);
    }
    s.nbufs[slot] = 0;
    done.tags[k] = s.tag[slot];
    done.status[k] = status;
    const st = q.stats;
    if (status !== BlockStatus.Ok) st.errors++;
    else if (op === BlockOp.Read) st.reads++, st.bytesRead += s.bytes[slot];
    else if (op === BlockOp.Write) st.writes++, st.bytesWritten += s.bytes[slot];
    else if (op === BlockOp.Flush) st.flushes++;
    else if (op === BlockOp.Discard || op === BlockOp.WriteZeroes) st.discards++;
    return true;
  }

  // ---- the Disk interface ----

  allocBuffers(out: BlockBuffer[], n: number, queue = 0): number {
    return this.queue(queue).pool.takeMany(out, n);
  }

  release(bufs: BlockBuffer[], n: number): void {
    this.releaseBuffers(bufs, n);
  }

  inFlight(queue = 0): number {
    const s = this.queue(queue).slots;
    return s.ids.size - s.ids.available + s.nlocal;
  }

  submit(reqs: BlockRequest[], n: number, queue = 0): number {
    const q = this.queue(queue);
    const f = this.fault(q);
    if (f) throw f; // a broken queue takes nothing, whatever the requests
    for (let i = 0; i < n; i++) this.#check(reqs[i]);
    const s = q.slots;
    let k = 0;
    try {
      for (; k < n; k++) {
        const r = reqs[k];
        if (r.op === BlockOp.Flush && !this.info.writeCache) {
          // Nothing volatile to flush: complete it here, in order with what was posted before.
          if (s.nlocal === s.local.length || s.ids.available === 0) break;
          s.local[s.nlocal++] = r.tag;
          continue;
        }
        if (s.ids.available === 0 || !this.fits(q, r)) break;
        const slot = s.ids.take(r.op);
        this.#hand(q, slot, r);
        this.post(q, slot, r);
      }
    } finally {
      this.kick(q);
    }
    return k;
  }

  /** Hand request `r`'s buffers to the device as slot `slot` (every buffer, or none: a buffer given twice). */
  #hand(q: Q, slot: number, r: BlockRequest): void {
    const s = q.slots, base = slot * this.info.maxSegments;
    s.tag[slot] = r.tag;
    s.bytes[slot] = r.op === BlockOp.Read || r.op === BlockOp.Write ? r.length : 0;
    const n = r.op === BlockOp.Read || r.op === BlockOp.Write || r.op === BlockOp.GetId ? r.count : 0;
    let i = 0;
    try {
      for (; i < n; i++) {
        const b = r.buffers[i];
        b.pool.toDevice(b);
        s.bufs[base + i] = b;
      }
    } catch (e) {
      for (let j = 0; j < i; j++) r.buffers[j].pool.toApp(r.buffers[j]);
      s.ids.complete(slot);
      throw e;
    }
    s.nbufs[slot] = n;
  }

  poll(done: Completions, max: number, queue = 0): number {
    const q = this.queue(queue), s = q.slots;
    max = Math.min(max, done.n);
    let k = 0;
    if (s.nlocal > 0) {
      const m = Math.min(s.nlocal, max);
      for (; k < m; k++) {
        done.tags[k] = s.local[k];
        done.status[k] = BlockStatus.Ok;
        q.stats.flushes++;
      }
      s.local.copyWithin(0, m, s.nlocal);
      s.nlocal -= m;
    }
    return k < max ? this.collect(q, done, k, max) : k;
  }

  waitCompletion(queue = 0): Promise<void> {
    return this.waitIrq(queue);
  }

  sleepCompletion(timeoutMs: number, queue = 0): boolean {
    return this.sleepIrq(queue, timeoutMs);
  }

  stats(): DiskStats[] {
    return this.pairs.map((q) => ({ ...q.stats }));
  }

  /**
   * Re-read what the disk says of itself after a change. Only the capacity and the write-cache mode may change:
   * the queues were built for the request limits, and requests already checked against the logical block size
   * would be wrong under another, so a change of it breaks every queue ({@link breakQueues}) and throws.
   */
  refresh(): boolean {
    const old = this.info, now = this.readInfo();
    if (now.logicalBlockSize !== old.logicalBlockSize) {
      throw this.breakQueues(
        `device changed ${this.blockSizeName} from ${old.logicalBlockSize} to ${now.logicalBlockSize} while in use`,
      );
    }
    this.info = { ...old, capacity: now.capacity, writeCache: now.writeCache };
    return now.capacity !== old.capacity;
  }

  /** Whether the device answers get-id (virtio-blk does; blkif has no such operation). */
  protected readonly hasDeviceId: boolean = true;
  /** What the device calls its logical block size, for errors (virtio-blk: blk_size; blkif: sector-size). */
  protected abstract readonly blockSizeName: string;
  /** Break every queue with `msg` (the device went wrong under them); returns the error to throw. */
  protected abstract breakQueues(msg: string): Error;

  /** Check `r` against the disk's limits before anything is posted. */
  #check(r: BlockRequest): void {
    const i = this.info, op = r.op, name = this.name;
    if (!Number.isSafeInteger(r.offset) || r.offset < 0) {
      throw new RangeError(`${name}: bad offset ${r.offset}`);
    }
    if (!Number.isSafeInteger(r.length) || r.length < 0) {
      throw new RangeError(`${name}: bad length ${r.length}`);
    }
    const writes = op === BlockOp.Write || op === BlockOp.Discard || op === BlockOp.WriteZeroes;
    if (writes && i.readOnly) throw new PvdrvError("disk", `${name} is read-only`);
    switch (op) {
      case BlockOp.Read:
      case BlockOp.Write: {
        if (r.count < 1 || r.count > i.maxSegments) {
          throw new RangeError(`${name}: a read or write takes 1..${i.maxSegments} buffers, got ${r.count}`);
        }
        let sum = 0;
        for (let k = 0; k < r.count; k++) {
          const b = r.buffers[k];
          this.#held(b);
          // Whole 512-byte sectors per buffer: blkif segments count sectors (first_sect..last_sect).
          if (
            !(b.length > 0 && b.length <= b.data.length && b.length <= i.maxSegmentBytes) || b.length % 512
          ) {
            throw new RangeError(
              `${name}: buffer ${k} length ${b.length} is not a multiple of 512 in 512..${i.maxSegmentBytes}`,
            );
          }
          sum += b.length;
        }
        if (sum !== r.length) {
          throw new RangeError(`${name}: buffers hold ${sum} bytes, the request ${r.length}`);
        }
        if (r.length > i.maxTransferBytes) {
          throw new RangeError(
            `${name}: ${r.length} bytes exceed the ${i.maxTransferBytes}-byte transfer limit`,
          );
        }
        this.#range(r.offset, r.length, i.logicalBlockSize);
        return;
      }
      case BlockOp.Flush:
        return;
      case BlockOp.Discard:
      case BlockOp.WriteZeroes: {
        const discard = op === BlockOp.Discard;
        if (discard ? !i.discard : !i.writeZeroes) {
          throw new PvdrvError("disk", `${name} does not support ${discard ? "discard" : "write-zeroes"}`);
        }
        const max = discard ? i.maxDiscardBytes : i.maxWriteZeroesBytes;
        if (r.length > max) throw new RangeError(`${name}: ${r.length} bytes exceed the ${max}-byte limit`);
        if (discard && r.offset % i.discardAlignment !== 0) {
          throw new RangeError(
            `${name}: discard offset ${r.offset} is not a multiple of ${i.discardAlignment}`,
          );
        }
        this.#range(r.offset, r.length, i.logicalBlockSize);
        return;
      }
      case BlockOp.GetId:
        if (!this.hasDeviceId) {
          throw new PvdrvError("disk", `${name} has no device id to get`, { code: "UNSUPP" });
        }
        if (r.count !== 1) throw new RangeError(`${name}: get-id takes one buffer`);
        this.#held(r.buffers[0]);
        if (r.buffers[0].data.length < SERIAL_BYTES) {
          throw new RangeError(`${name}: get-id needs a buffer of ${SERIAL_BYTES} bytes`);
        }
        return;
      default:
        throw new RangeError(`${name}: unknown block op ${op}`);
    }
  }

  /** `length` bytes at `offset`: whole logical blocks, inside the disk, not empty. */
  #range(offset: number, length: number, block: number): void {
    if (length === 0 || offset % block !== 0 || length % block !== 0) {
      throw new RangeError(
        `${this.name}: offset ${offset} and length ${length} must be non-empty multiples of ${block}`,
      );
    }
    if (offset + length > this.info.capacity) {
      throw new RangeError(
        `${this.name}: ${length} bytes at ${offset} end past the disk (capacity ${this.info.capacity})`,
      );
    }
  }

  /** `b` is this disk's and the caller holds it. */
  #held(b: BlockBuffer | undefined): void {
    if (!b || !this.ownsPool(b.pool) || b.pool.owner(b) !== "app") {
      throw new PvdrvError(
        "disk",
        `${this.name}: a request's buffer is not one the caller holds from this disk`,
      );
    }
  }

  // ---- the copying helpers (convenience: they allocate per call, never per request on the hot path) ----

  read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    return this.#transfer(BlockOp.Read, offset, length, out, false).then(() => out);
  }

  write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    return this.#transfer(BlockOp.Write, offset, data.length, data, opts.fua ?? false);
  }

  flush(): Promise<void> {
    return this.#one((r) => void (r.op = BlockOp.Flush, r.length = 0, r.count = 0));
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#one((r) => void (r.op = BlockOp.Discard, r.offset = offset, r.length = length, r.count = 0));
  }

  writeZeroes(offset: number, length: number, opts: { unmap?: boolean } = {}): Promise<void> {
    return this.#one((r) => {
      r.op = BlockOp.WriteZeroes;
      r.offset = offset;
      r.length = length;
      r.unmap = opts.unmap ?? false;
      r.count = 0;
    });
  }

  async serial(): Promise<string> {
    const bufs: BlockBuffer[] = [];
    if (this.allocBuffers(bufs, 1) !== 1) throw new PvdrvError("disk", `${this.name}: no free buffer`);
    const b = bufs[0];
    try {
      b.data.fill(0, 0, SERIAL_BYTES);
      b.length = SERIAL_BYTES;
      await this.#one((r) => {
        r.op = BlockOp.GetId;
        r.count = 1;
        r.buffers[0] = b;
        r.length = SERIAL_BYTES;
      }, true);
      const raw = b.data.subarray(0, SERIAL_BYTES);
      const end = raw.indexOf(0);
      return new TextDecoder().decode(raw.subarray(0, end < 0 ? SERIAL_BYTES : end));
    } catch (e) {
      if (e instanceof PvdrvError && e.code === "UNSUPP") return "";
      throw e;
    } finally {
      if (b.pool.owner(b) === "app") this.release(bufs, 1);
    }
  }

  /** Submit one request made by `fill` on queue 0 and wait for it; a failed status throws. */
  async #one(fill: (r: BlockRequest) => void, unsupportedIsCode = false): Promise<void> {
    const r = new BlockRequest();
    fill(r);
    r.tag = 0;
    while (this.submit([r], 1) === 0) await this.#idle(0);
    const done = new Completions(1);
    while (this.poll(done, 1) === 0) await this.#idle(0);
    this.#status(done.status[0], r.op, r.offset, unsupportedIsCode);
  }

  #status(st: number, op: BlockOp, offset: number, unsupportedIsCode: boolean): void {
    if (st === BlockStatus.Ok) return;
    const what = ["read", "write", "flush", "discard", "write-zeroes", "get-id"][op];
    if (st === BlockStatus.Unsupported) {
      throw new PvdrvError("disk", `${this.name}: the device does not support ${what}`, {
        code: unsupportedIsCode ? "UNSUPP" : "",
      });
    }
    throw new PvdrvError("disk", `${this.name}: ${what} at ${offset} failed: I/O error`, { code: "EIO" });
  }

  /** Wait for something to happen on queue `q` without spinning the event loop dry. */
  #idleCount = 0;
  async #idle(q: number): Promise<void> {
    const queue = this.queue(q);
    if (queue.irq) {
      if (this.inFlight(q) > 0) await this.waitCompletion(q);
      else await tick();
    } else if (++this.#idleCount % POLLS_PER_YIELD === 0) await tick();
  }

  /** A read or write of any length, split into requests the limits allow, several in flight. */
  async #transfer(
    op: BlockOp,
    offset: number,
    length: number,
    data: Uint8Array,
    fua: boolean,
  ): Promise<void> {
    const i = this.info, seg = i.maxSegmentBytes;
    const chunk = Math.max(
      i.logicalBlockSize,
      i.maxTransferBytes - (i.maxTransferBytes % i.logicalBlockSize),
    );
    const chunks = Math.ceil(length / chunk);
    const depth = Math.max(1, Math.min(i.queueDepth, 8));
    const reqs = Array.from({ length: depth }, () => new BlockRequest());
    const inflight = new Map<number, { req: BlockRequest; at: number }>();
    const done = new Completions(depth);
    let next = 0, failure: Error | null = null;
    while (inflight.size > 0 || (!failure && next < chunks)) {
      while (!failure && next < chunks && inflight.size < depth) {
        const at = next * chunk, len = Math.min(chunk, length - at);
        const r = reqs.find((x) => ![...inflight.values()].some((v) => v.req === x))!;
        const need = Math.ceil(len / seg);
        const bufs: BlockBuffer[] = [];
        if (this.allocBuffers(bufs, need) < need) {
          this.release(bufs, bufs.length);
          break;
        }
        for (let k = 0; k < need; k++) {
          const b = bufs[k], o = k * seg;
          b.length = Math.min(seg, len - o);
          if (op === BlockOp.Write) b.data.set(data.subarray(at + o, at + o + b.length));
        }
        r.io(op as typeof BlockOp.Read, offset + at, bufs, need, next);
        r.fua = fua;
        let posted = 0;
        try {
          posted = this.submit([r], 1);
        } catch (err) {
          // Refused before posting (read-only, past the end, a broken ring): the buffers are still ours.
          this.release(bufs, need);
          failure ??= err as Error;
          break;
        }
        if (posted === 0) {
          this.release(bufs, need);
          break;
        }
        inflight.set(next, { req: r, at });
        next++;
      }
      const n = this.poll(done, done.n);
      for (let k = 0; k < n; k++) {
        const e = inflight.get(done.tags[k])!;
        inflight.delete(done.tags[k]);
        try {
          this.#status(done.status[k], op, offset + e.at, false);
          if (op === BlockOp.Read) {
            let o = e.at;
            for (let b = 0; b < e.req.count; b++) {
              const buf = e.req.buffers[b];
              data.set(buf.data.subarray(0, buf.length), o);
              o += buf.length;
            }
          }
        } catch (err) {
          failure ??= err as Error; // stop posting; what is in flight drains first
        }
        this.release(e.req.buffers, e.req.count);
      }
      if (n === 0) await this.#idle(0);
    }
    if (failure) throw failure;
  }
}
