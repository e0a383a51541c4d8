/**
 * The NIC queue core: everything a pvdrv network driver does the same way whatever its rings look like. A driver
 * (virtio-net, Xen netfront) extends {@link NicCore} and supplies the ring steps (collect received frames, post RX
 * buffers, post TX frames, reclaim TX completions, arm and disarm RX interrupts, report a broken queue, tear down);
 * the core owns the rest: queue lookup, the frame-size rule, TX buffer allocation, buffer release to the right
 * (possibly retired) pool, statistics, health, interrupt waits and an idempotent async `close()` that also closes
 * what the NIC was given to own.
 *
 * Every step runs per batch, never per packet, except {@link NicCore.deliver} (one frame into the caller's array).
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { IrqSource } from "../../hal/irq.ts";
import { MIN_FRAME, type Nic, type QueueStats } from "./nic.ts";
import { type PacketBuffer, type PacketPool, releaseOwned } from "./packet_pool.ts";

/** Something a NIC can be given to own and close with itself (a PCI function, a xenstore connection). */
export interface Closeable {
  /** Release it. */
  close(): void | Promise<void>;
}

/** What the core needs of one queue pair. */
export interface CoreQueue {
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
export abstract class NicCore<Q extends CoreQueue> implements Nic {
  abstract readonly name: string;
  abstract readonly mac: Uint8Array;
  abstract readonly mtu: number;
  abstract readonly maxFrame: number;
  abstract readonly txChecksum: boolean;
  /** Queue pairs, in queue order (drivers fill it when they connect). */
  protected readonly pairs: Q[] = [];
  /** Every pool the NIC made: buffers from retired pools may still be released. */
  readonly #pools = new WeakSet<PacketPool>();
  readonly #owned: Closeable[] = [];
  #closed = false;
  #closing: Promise<void> | null = null;
  /** Frames {@link NicCore.collect} moved into the caller's array so far in this receiveBatch. */
  #got = 0;

  // ---- ring steps a driver supplies (each per batch) ----

  /** Move up to `max` received frames into `out` with {@link NicCore.deliver}; break the queue on bad input. */
  protected abstract collect(q: Q, out: PacketBuffer[], max: number): void;
  /** Post free RX buffers to the device. */
  protected abstract refill(q: Q): void;
  /** Put `n` frames (lengths already checked) on the TX ring and notify; returns how many were taken. */
  protected abstract post(q: Q, pkts: PacketBuffer[], n: number): number;
  /** Return completed TX buffers to their pool; returns how many frames completed. */
  protected abstract reclaim(q: Q): number;
  /** The error that made `q` unusable, or null. */
  protected abstract fault(q: Q): Error | null;
  /** Enable RX interrupts; true when frames are already waiting (no need to sleep). */
  protected abstract armRx(q: Q): boolean;
  /** Disable RX interrupts again (polling resumes). */
  protected abstract disarmRx(q: Q): void;
  /** Acknowledge an interrupt that woke a wait (INTx: read the ISR and unmask). */
  protected ackIrq(_q: Q): void {}
  /** Why no queue can be used right now (netfront: the backend is reconnecting), or null. */
  protected unavailable(): string | null {
    return null;
  }
  /** Stop the device and free its memory (pools are retired, not freed, so held buffers stay valid). */
  protected abstract teardown(): void | Promise<void>;

  // ---- helpers for drivers ----

  /** Record pools this NIC made (buffers from them are accepted by release, even after close). */
  protected adopt(...pools: PacketPool[]): void {
    for (const p of pools) this.#pools.add(p);
  }

  /** Close `r` when the NIC closes (after the device is stopped), last adopted first. */
  own(r: Closeable): void {
    this.#owned.push(r);
  }

  /** Whether {@link close} was called. */
  protected get closed(): boolean {
    return this.#closed;
  }

  /** Hand one received frame to the caller (from {@link NicCore.collect}); it is the application's now. */
  protected deliver(q: Q, out: PacketBuffer[], b: PacketBuffer): void {
    out[this.#got++] = b;
    q.stats.rxPackets++;
    q.stats.rxBytes += b.length;
  }

  /** Queue `i`, or a clear error when the NIC is closed, unavailable or has no such queue. */
  protected queue(i: number): Q {
    if (this.#closed) throw new PvdrvError("nic", `${this.name} is closed`);
    const why = this.unavailable();
    if (why) throw new PvdrvError("nic", `${this.name}: ${why}`);
    const q = this.pairs[i];
    if (!q) throw new RangeError(`${this.name}: queue ${i} out of range (0..${this.pairs.length - 1})`);
    return q;
  }

  // ---- the Nic interface ----

  get queues(): number {
    return this.pairs.length;
  }

  abstract linkUp(): boolean;

  allocTx(out: PacketBuffer[], n: number, queue = 0): number {
    const q = this.queue(queue);
    if (q.txPool.available < n) this.reclaim(q);
    return q.txPool.takeMany(out, n);
  }

  sendBatch(pkts: PacketBuffer[], n: number, queue = 0): number {
    const q = this.queue(queue);
    // The frame-size rule, for the whole batch before any buffer is taken: MIN_FRAME..maxFrame.
    for (let i = 0; i < n; i++) {
      const len = pkts[i].length;
      if (!(len >= MIN_FRAME && len <= this.maxFrame)) {
        throw new RangeError(`${this.name}: frame length ${len} outside ${MIN_FRAME}..${this.maxFrame}`);
      }
    }
    return this.post(q, pkts, n);
  }

  receiveBatch(out: PacketBuffer[], max: number, queue = 0): number {
    const q = this.queue(queue);
    this.#got = 0;
    try {
      this.collect(q, out, max);
    } catch (e) {
      // The queue broke part-way: frames already moved to `out` go back, so the caller holds nothing it was not told of.
      for (let i = 0; i < this.#got; i++) out[i].pool.put(out[i], "app");
      this.#got = 0;
      throw e;
    }
    const k = this.#got;
    try {
      this.refill(q);
    } catch (e) {
      // The ring broke while refilling: the frames in `out` are good and go to the caller; the next call throws.
      if (k === 0) throw e;
    }
    return k;
  }

  release(pkts: PacketBuffer[], n: number, queue = 0): void {
    // A buffer held across a close or a reconnect goes back to its retired pool, which frees the memory with the last.
    releaseOwned(pkts, n, this.#pools, this.name);
    if (this.#closed || this.unavailable()) return;
    const q = this.queue(queue);
    if (!this.fault(q)) this.refill(q);
  }

  reclaimTx(queue = 0): number {
    return this.reclaim(this.queue(queue));
  }

  async waitRx(queue = 0): Promise<void> {
    const q = this.queue(queue);
    if (!this.#armForWait(q)) return;
    await q.irq!.wait();
    this.#endWait(q, true);
  }

  sleepRx(timeoutMs: number, queue = 0, alsoFd?: number): boolean {
    const q = this.queue(queue);
    if (!this.#armForWait(q)) return true;
    const woke = q.irq!.waitSync(timeoutMs, alsoFd);
    this.#endWait(q, woke);
    return woke;
  }

  /** Arm `q`'s RX interrupt before a wait; false (and disarmed again) when frames already wait. */
  #armForWait(q: Q): boolean {
    if (!q.irq) {
      throw new PvdrvError("nic", `${this.name} was opened in polling mode: open it with interrupts to wait`);
    }
    if (this.armRx(q)) {
      this.disarmRx(q);
      return false;
    }
    return true;
  }

  /** After a wait on `q`'s interrupt: count and acknowledge it if it fired, then go back to polling. */
  #endWait(q: Q, fired: boolean): void {
    if (fired) {
      q.stats.interrupts++;
      this.ackIrq(q);
    }
    this.disarmRx(q);
  }

  stats(): QueueStats[] {
    return this.pairs.map((q) => ({ ...q.stats }));
  }

  /** Throws the error that broke a queue (or the device), if any. */
  checkHealth(): void {
    for (const q of this.pairs) {
      const f = this.fault(q);
      if (f) throw f;
    }
  }

  /**
   * Stop the device, release everything and close what the NIC owns (idempotent; every call returns the same
   * promise). A driver whose teardown is synchronous has finished it, owned resources included, before this returns.
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    let done: void | Promise<void>;
    try {
      done = this.teardown();
    } catch (e) {
      done = Promise.reject(e);
    }
    if (done instanceof Promise) {
      this.#closing = done.finally(() => this.#closeOwned());
    } else {
      const owned = this.#closeOwned();
      this.#closing = owned ?? Promise.resolve();
    }
    return this.#closing;
  }

  /** Close owned resources, last first; returns a promise only when one of them is asynchronous. */
  #closeOwned(): Promise<void> | undefined {
    const pending: Promise<void>[] = [];
    for (const r of this.#owned.splice(0).reverse()) {
      try {
        const p = r.close();
        if (p instanceof Promise) pending.push(p.catch(() => {}));
      } catch { /* a resource that fails to close does not stop the others */ }
    }
    return pending.length ? Promise.all(pending).then(() => {}) : undefined;
  }
}
