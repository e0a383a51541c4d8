/**
 * The class-agnostic device core: what every pvdrv driver does the same way whatever its class (NIC, disk) or
 * bus (virtio, Xen). It owns queue lookup, health, interrupt waits, the buffer pools a device made (so buffers
 * held across a close go back to their retired pool) and an idempotent async `close()` that also closes what the
 * device was given to own. A class core (the NIC core in drivers/net/core.ts; a disk core beside it) extends it
 * with its class's interface; a driver extends the class core and supplies the ring steps.
 * @module
 */
import { type ErrorKind, PvdrvError } from "../../hal/errors.ts";
import type { IrqSource } from "../../hal/irq.ts";
import { type BufferPool, type PoolBuffer, releaseOwned } from "./buffer_pool.ts";

/** Interrupt delivery: polling, one MSI-X vector per queue, or the shared INTx line (Xen: event channels). */
export type IrqMode = "poll" | "msix" | "intx";

/** Something a device can be given to own and close with itself (a PCI function, a xenstore connection). */
export interface Closeable {
  /** Release it. */
  close(): void | Promise<void>;
}

/** What the device core needs of one queue (a NIC's queue pair, a disk's request queue). */
export interface CoreQueue {
  /** The queue's interrupt source, or null when polling. */
  readonly irq: IrqSource | null;
  /** The queue's counters; the core counts the interrupts it waited for. */
  readonly stats: { interrupts: number };
}

/** The shared part of every pvdrv device. */
export abstract class DeviceCore<Q extends CoreQueue> {
  /** Human name (driver and address). */
  abstract readonly name: string;
  /** The error kind of misuse (closed device, bad queue, foreign buffer). */
  protected abstract readonly errorKind: ErrorKind;
  /** Queues, in queue order (drivers fill it when they connect). */
  protected readonly pairs: Q[] = [];
  /** Every pool the device made: buffers from retired pools may still be released. */
  readonly #pools = new WeakSet<BufferPool<PoolBuffer>>();
  readonly #owned: Closeable[] = [];
  #closed = false;
  #closing: Promise<void> | null = null;

  // ---- steps a driver supplies ----

  /** The error that made `q` unusable, or null. */
  protected abstract fault(q: Q): Error | null;
  /** Enable `q`'s interrupt; true when work is already waiting (no need to sleep). */
  protected abstract armIrq(q: Q): boolean;
  /** Disable `q`'s interrupt again (polling resumes). */
  protected abstract disarmIrq(q: Q): void;
  /** Acknowledge an interrupt that woke a wait (INTx: read the ISR and unmask). */
  protected ackIrq(_q: Q): void {}
  /** Why no queue can be used right now (a Xen backend is reconnecting), or null. */
  protected unavailable(): string | null {
    return null;
  }
  /** Stop the device and free its memory (pools are retired, not freed, so held buffers stay valid). */
  protected abstract teardown(): void | Promise<void>;

  // ---- helpers for drivers ----

  /** Record pools this device made (buffers from them are accepted by release, even after close). */
  protected adopt(...pools: BufferPool<PoolBuffer>[]): void {
    for (const p of pools) this.#pools.add(p);
  }

  /** Whether `p` is one of this device's pools (retired ones included). */
  protected ownsPool(p: BufferPool<PoolBuffer>): boolean {
    return this.#pools.has(p);
  }

  /**
   * Give application-held buffers `bufs[from..n)` back to their pools, which must be this device's (retired ones
   * included).
   */
  protected releaseBuffers<B extends PoolBuffer>(bufs: B[], n: number, from = 0): void {
    releaseOwned(bufs, n, this.#pools as WeakSet<BufferPool<B>>, this.name, this.errorKind, from);
  }

  /**
   * Give the application's buffers `ids[from..n)` of `pool` back, by index; the pool must be this device's (retired
   * ones included).
   */
  protected releaseIds<B extends PoolBuffer>(
    pool: BufferPool<B>,
    ids: Uint16Array,
    n: number,
    from = 0,
  ): void {
    if (!this.#pools.has(pool)) {
      throw new PvdrvError(this.errorKind, `${this.name}: buffers from pool ${pool.name} are not ours`);
    }
    pool.putIds(ids, from, n);
  }

  /** Close `r` when the device closes (after it is stopped), last adopted first. */
  own(r: Closeable): void {
    this.#owned.push(r);
  }

  /** Whether {@link close} was called. */
  protected get closed(): boolean {
    return this.#closed;
  }

  /** Queue `i`, or a clear error when the device is closed, unavailable or has no such queue. */
  protected queue(i: number): Q {
    const q = this.pairs[i];
    if (this.#closed || !q || this.unavailable() !== null) this.#noQueue(i);
    return q;
  }

  // Out of the hot path (every batch looks its queue up): small methods are inlined whole.
  #noQueue(i: number): never {
    if (this.#closed) throw new PvdrvError(this.errorKind, `${this.name} is closed`);
    const why = this.unavailable();
    if (why) throw new PvdrvError(this.errorKind, `${this.name}: ${why}`);
    throw new RangeError(`${this.name}: queue ${i} out of range (0..${this.pairs.length - 1})`);
  }

  /** How many queues the device has. */
  get queues(): number {
    return this.pairs.length;
  }

  // ---- interrupt waits ----

  /** Wait (asynchronously) for queue `i`'s interrupt; returns at once when work is already waiting. */
  protected async waitIrq(i: number): Promise<void> {
    const q = this.queue(i);
    if (!this.#armForWait(q)) return;
    await q.irq!.wait();
    this.#endWait(q, true);
  }

  /** Block up to `timeoutMs` for queue `i`'s interrupt (or `alsoFd`); true when woken or work is waiting. */
  protected sleepIrq(i: number, timeoutMs: number, alsoFd?: number): boolean {
    const q = this.queue(i);
    if (!this.#armForWait(q)) return true;
    const woke = q.irq!.waitSync(timeoutMs, alsoFd);
    this.#endWait(q, woke);
    return woke;
  }

  /** Arm `q`'s interrupt before a wait; false (and disarmed again) when work already waits. */
  #armForWait(q: Q): boolean {
    if (!q.irq) {
      throw new PvdrvError(
        this.errorKind,
        `${this.name} was opened in polling mode: open it with interrupts to wait`,
      );
    }
    if (this.armIrq(q)) {
      this.disarmIrq(q);
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
    this.disarmIrq(q);
  }

  // ---- health and close ----

  /** Throws the error that broke a queue (or the device), if any. */
  checkHealth(): void {
    for (const q of this.pairs) {
      const f = this.fault(q);
      if (f) throw f;
    }
  }

  /**
   * Stop the device, release everything and close what the device owns (idempotent; every call returns the same
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
