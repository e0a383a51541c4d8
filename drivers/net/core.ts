/**
 * The NIC class core: everything a pvdrv network driver does the same way whatever its rings look like, on the
 * class-agnostic device core (drivers/core/device.ts: queue lookup, health, interrupt waits, owned resources,
 * close). A driver (virtio-net, Xen netfront) extends {@link NicCore} and supplies the ring steps (collect
 * received frames, post RX buffers, post TX frames, reclaim TX completions, arm and disarm RX interrupts, report a
 * broken queue, tear down); the NIC core adds the frame-size rule (a driver's TX step applies it), TX buffer
 * allocation, buffer release to the right (possibly retired) pool and statistics.
 *
 * Every step runs per batch, never per packet, except {@link NicCore.deliver} (one frame into the caller's array).
 * @module
 */
import { DeviceCore } from "../core/device.ts";
import type { ErrorKind } from "../../hal/errors.ts";
import type { IrqSource } from "../../hal/irq.ts";
import { MIN_FRAME, type Nic, type QueueStats } from "./nic.ts";
import type { PacketBuffer, PacketPool } from "./packet_pool.ts";
import type { PacketBatch } from "./packet_batch.ts";
import { OWNER } from "../core/buffer_pool.ts";
import { PvdrvError } from "../../hal/errors.ts";

export type { Closeable } from "../core/device.ts";

/** What the NIC core needs of one queue pair (a driver's pair type extends it). */
export interface QueuePair {
  /** Buffers the application fills for sending. */
  readonly txPool: PacketPool;
  /** Buffers posted to the device for receiving. */
  readonly rxPool: PacketPool;
  /** The pair's counters. */
  readonly stats: QueueStats;
  /** The RX interrupt source, or null when polling. */
  readonly irq: IrqSource | null;
}

/** The shared part of every pvdrv NIC. */
export abstract class NicCore<Q extends QueuePair> extends DeviceCore<Q> implements Nic {
  /** Misuse of a NIC is a "nic" error. */
  protected readonly errorKind: ErrorKind = "nic";
  abstract readonly mac: Uint8Array;
  abstract readonly mtu: number;
  abstract readonly maxFrame: number;
  abstract readonly txChecksum: boolean;
  /** Frames {@link NicCore.collect} moved into the caller's array so far in this receiveBatch, and their bytes. */
  #got = 0;
  #gotBytes = 0;
  /** The generic {@link NicCore.collectInto}'s buffer objects (grown once to the largest batch). */
  #scratch: PacketBuffer[] = [];
  #onePool = false;

  // ---- ring steps a driver supplies (each per batch) ----

  /**
   * Move up to `max` received frames into `out` with {@link NicCore.deliver} (or fill `out` itself and say so with
   * {@link NicCore.delivered}, also when it throws); break the queue on bad input.
   */
  protected abstract collect(q: Q, out: PacketBuffer[], max: number): void;
  /** Post free RX buffers to the device. */
  protected abstract refill(q: Q): void;
  /**
   * Put `n` frames on the TX ring and notify; returns how many were taken. A batch with a frame outside the
   * frame-size rule ({@link NicCore.checkFrames}) is refused whole.
   */
  protected abstract post(q: Q, pkts: PacketBuffer[], n: number): number;
  /** Return completed TX buffers to their pool; returns how many frames completed. */
  protected abstract reclaim(q: Q): number;
  /**
   * Optional: hand the application's RX buffers at the front of `pkts` straight back to `q`'s receive ring (they
   * skip the free list; the {@link NicCore.refill} that follows publishes them); returns how many it took (the rest
   * are released as usual). It must not throw once it has taken a buffer. Default: none.
   */
  protected repost(_q: Q, _pkts: PacketBuffer[], _n: number): number {
    return 0;
  }

  /**
   * Optional: as {@link NicCore.repost}, by buffer index: `ids[0..n)` of `q`'s receive pool. Default: none.
   */
  protected repostIds(_q: Q, _ids: Uint16Array, _n: number): number {
    return 0;
  }

  /**
   * Optional: as {@link NicCore.post}, by buffer index: frames `ids[0..n)` of `q`'s TX pool, `lens[k]` bytes
   * each, with no checksum offload; returns how many were taken. A batch with a frame the application does not
   * hold or outside the frame-size rule is refused whole. Default: {@link NicCore.post} on the buffer objects.
   */
  protected postIds(q: Q, ids: Uint16Array, lens: Uint32Array, n: number): number {
    const s = this.#scratch, bufs = q.txPool.buffers, owners = q.txPool.owners;
    while (s.length < n) s.push(null as unknown as PacketBuffer); // once per larger batch
    for (let k = 0; k < n; k++) {
      const i = ids[k], b = bufs[i];
      if (!b) throw new PvdrvError(this.errorKind, `${this.name}: ${i} is not a TX buffer index`);
      if (owners[i] === OWNER.APP) { // one the application does not hold is left as it is: post refuses it
        b.reset();
        b.length = lens[k];
      }
      s[k] = b;
    }
    return this.post(q, s, n);
  }

  /**
   * Move up to `max` received frames, all from one pool, into `batch` (ids, lengths, flags; `batch.count` set)
   * and report them with {@link NicCore.delivered}; returns their pool (null when none came). When it throws it
   * has given back what it took and left the batch empty. Default: {@link NicCore.collect} into buffer objects,
   * with {@link NicCore.onePool} set: a driver whose frames come from more than one pool (Xen's gather buffers)
   * stops its batch before a frame from another pool, leaving it for the next call. A driver overrides this to
   * fill the batch without the objects.
   */
  protected collectInto(q: Q, batch: PacketBatch, max: number): PacketPool | null {
    const s = this.#scratch;
    while (s.length < max) s.push(null as unknown as PacketBuffer); // once per larger batch
    this.#onePool = true;
    try {
      this.collect(q, s, max);
    } catch (e) {
      this.#giveBack(s);
      throw e;
    } finally {
      this.#onePool = false;
    }
    const n = this.#got, ids = batch.ids, lens = batch.lengths, flags = batch.flags;
    const pool = n ? s[0].pool : null;
    let k = 0, bytes = 0;
    for (; k < n && s[k].pool === pool; k++) {
      const b = s[k];
      ids[k] = b.index;
      lens[k] = b.length;
      flags[k] = b.flags;
      bytes += b.length;
    }
    if (k < n) { // a driver that did not stop at another pool: those frames are dropped, not leaked
      for (let j = k; j < n; j++) s[j].pool.put(s[j], "app");
      q.stats.rxDropped += n - k;
    }
    batch.count = k;
    this.delivered(k, bytes);
    return pool;
  }

  /** While {@link NicCore.collectInto} collects: every frame of one batch must come from one pool. */
  protected get onePool(): boolean {
    return this.#onePool;
  }

  /** Give the frames collected so far (`out[0..got)`) back after a failure. */
  #giveBack(out: PacketBuffer[]): void {
    for (let i = 0; i < this.#got; i++) out[i].pool.put(out[i], "app");
    this.#got = 0;
  }

  // ---- helpers for drivers ----

  /** Hand one received frame to the caller (from {@link NicCore.collect}); it is the application's now. */
  protected deliver(_q: Q, out: PacketBuffer[], b: PacketBuffer): void {
    out[this.#got++] = b; // counted once per batch by receiveBatch
    this.#gotBytes += b.length;
  }

  /** {@link NicCore.collect} filled `out[0..count)` itself, `bytes` in all: they are the application's now. */
  protected delivered(count: number, bytes: number): void {
    this.#got = count;
    this.#gotBytes = bytes;
  }

  // ---- the Nic interface ----

  abstract linkUp(): boolean;

  allocTx(out: PacketBuffer[], n: number, queue = 0): number {
    const q = this.queue(queue);
    if (q.txPool.available < n) this.reclaim(q);
    return q.txPool.takeMany(out, n);
  }

  sendBatch(pkts: PacketBuffer[], n: number, queue = 0): number {
    return this.post(this.queue(queue), pkts, n);
  }

  /**
   * The frame-size rule, MIN_FRAME..maxFrame, for a whole batch before any buffer is taken: a driver's
   * {@link NicCore.post} calls it first, or applies the rule in its own per-frame loop and calls it to say which
   * frame broke it.
   */
  protected checkFrames(pkts: PacketBuffer[], n: number): void {
    const min = MIN_FRAME, max = this.maxFrame;
    for (let i = 0; i < n; i++) {
      const len = pkts[i].length;
      if (!(len >= min && len <= max)) this.#badLength(len);
    }
  }

  /** {@link NicCore.checkFrames} for frames by length: `lens[0..n)`. */
  protected checkLengths(lens: Uint32Array, n: number): void {
    const min = MIN_FRAME, max = this.maxFrame;
    for (let i = 0; i < n; i++) {
      const len = lens[i];
      if (!(len >= min && len <= max)) this.#badLength(len);
    }
  }

  #badLength(len: number): never {
    throw new RangeError(`${this.name}: frame length ${len} outside ${MIN_FRAME}..${this.maxFrame}`);
  }

  receiveBatch(out: PacketBuffer[], max: number, queue = 0): number {
    const q = this.queue(queue);
    this.#got = 0;
    this.#gotBytes = 0;
    try {
      this.collect(q, out, max);
    } catch (e) {
      // The queue broke part-way: frames already moved to `out` go back, so the caller holds nothing it was not told of.
      this.#giveBack(out);
      throw e;
    }
    return this.#received(q);
  }

  /**
   * Receive up to `batch.capacity` frames into `batch` by buffer index (no buffer objects touched); give them back
   * with {@link NicCore.releaseBatch}. The batch must be empty.
   */
  receiveInto(batch: PacketBatch, queue = 0): number {
    if (batch.count !== 0) this.#notEmpty(batch, "release them");
    const q = this.queue(queue);
    this.#got = 0;
    this.#gotBytes = 0;
    const pool = this.collectInto(q, batch, batch.capacity);
    if (pool) batch.bind(pool, queue);
    return this.#received(q);
  }

  /** A batch must come empty to be filled: say what to do with the frames it still holds. */
  #notEmpty(batch: PacketBatch, todo: string): never {
    throw new PvdrvError(
      this.errorKind,
      `${this.name}: the batch still holds ${batch.count} frames; ${todo} first`,
    );
  }

  /** Count what a receive delivered and post free buffers again. */
  #received(q: Q): number {
    const k = this.#got;
    q.stats.rxPackets += k;
    q.stats.rxBytes += this.#gotBytes;
    try {
      this.refill(q);
    } catch (e) {
      // The ring broke while refilling: the frames received are good and go to the caller; the next call throws.
      if (k === 0) throw e;
    }
    return k;
  }

  /**
   * Take up to `n` empty TX buffers (at most `batch.capacity`) into `batch` by index, reclaiming completed ones
   * first; each frame's length starts at 0. Write frame k at `batch.bytes[batch.offset(k)..]`, set
   * `batch.lengths[k]`, and {@link NicCore.sendFrom} the batch. The batch must be empty.
   */
  allocInto(batch: PacketBatch, n: number, queue = 0): number {
    if (batch.count !== 0) this.#notEmpty(batch, "send or release them");
    const q = this.queue(queue), pool = q.txPool, want = Math.min(n, batch.capacity);
    if (pool.available < want) this.reclaim(q);
    const k = pool.takeIndices(batch.ids, want);
    batch.lengths.fill(0, 0, k);
    batch.flags.fill(0, 0, k);
    batch.bind(pool, queue);
    batch.count = k;
    return k;
  }

  /**
   * Send the frames of `batch` (from {@link NicCore.allocInto}, lengths set; no checksum offload) on its queue;
   * returns how many went. Those not taken (a full ring) move to the front of the batch and stay the
   * application's; a batch with a frame outside the frame-size rule is refused whole.
   */
  sendFrom(batch: PacketBatch): number {
    const n = batch.count;
    if (n === 0) return 0;
    const q = this.queue(batch.queue);
    if (batch.pool !== q.txPool) {
      throw new PvdrvError(
        this.errorKind,
        `${this.name}: the batch does not hold TX buffers of queue ${batch.queue}`,
      );
    }
    const sent = this.postIds(q, batch.ids, batch.lengths, n);
    if (sent < n) {
      const ids = batch.ids, lens = batch.lengths;
      for (let k = sent; k < n; k++) {
        ids[k - sent] = ids[k];
        lens[k - sent] = lens[k];
      }
    }
    batch.count = n - sent;
    return sent;
  }

  /**
   * Give every frame of `batch` back (to its queue's ring when that is live, else to its possibly retired pool);
   * the batch is empty after, also when an index is refused (it was not a buffer the application held).
   */
  releaseBatch(batch: PacketBatch): void {
    const n = batch.count, pool = batch.pool;
    if (n === 0 || !pool) return;
    const live = !this.closed && !this.unavailable() && batch.queue < this.pairs.length;
    const q = live ? this.queue(batch.queue) : null;
    const ring = q && q.rxPool === pool && !this.fault(q) ? q : null;
    // Another device's batch stays whole (its own NIC takes it back); ours is empty after, refused or not.
    if (!ring && !this.ownsPool(pool)) {
      throw new PvdrvError(
        this.errorKind,
        `${this.name}: the batch's frames are from pool ${pool.name}, not ours`,
      );
    }
    batch.count = 0;
    const k = ring ? this.repostIds(ring, batch.ids, n) : 0;
    try {
      if (k < n) this.releaseIds(pool, batch.ids, n, k);
    } finally {
      if (ring) this.refill(ring);
    }
  }

  release(pkts: PacketBuffer[], n: number, queue = 0): void {
    // The queue to hand buffers back to: none while closed, reconnecting or broken.
    const live = !this.closed && !this.unavailable(), q = live ? this.queue(queue) : null;
    const ring = q && !this.fault(q) ? q : null;
    const k = ring ? this.repost(ring, pkts, n) : 0;
    // A buffer held across a close or a reconnect goes back to its retired pool, which frees the memory with the last.
    try {
      if (k < n) this.releaseBuffers(pkts, n, k);
    } finally {
      if (ring) this.refill(ring); // what repost queued is published even when a later buffer is refused
    }
  }

  reclaimTx(queue = 0): number {
    return this.reclaim(this.queue(queue));
  }

  waitRx(queue = 0): Promise<void> {
    return this.waitIrq(queue);
  }

  sleepRx(timeoutMs: number, queue = 0, alsoFd?: number): boolean {
    return this.sleepIrq(queue, timeoutMs, alsoFd);
  }

  stats(): QueueStats[] {
    return this.pairs.map((q) => ({ ...q.stats }));
  }
}
