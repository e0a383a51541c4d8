/**
 * Buffer pools, for every device class: fixed-size slots in one device-reachable region, each with a view made
 * once. A pool tracks who holds each buffer (free, the application, the device) so a buffer can never be handed
 * out twice or returned by the wrong owner.
 *
 * A pool whose device closes (or whose Xen backend goes away) is retired: the device loses access at once, but the
 * memory under buffers the application still holds stays valid until the last of them is released, so a held
 * buffer never points at unmapped memory or at memory reused for a later connection's rings.
 * @module
 */
import { type ErrorKind, PvdrvError } from "../../hal/errors.ts";

/**
 * Memory a pool carves into buffers: DMA memory (a `DmaRegion`, whose buffers get device addresses) or plain bytes
 * (Xen granted pages, which the backend reaches by grant reference; gather buffers no device sees).
 */
export interface PoolMemory {
  /** The bytes (CPU view). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Device address of byte 0, when the device addresses this memory directly (DMA). */
  readonly deviceAddress?: number;
  /** Give the memory back (idempotent). */
  free(): void;
  /** End device access now, keeping the bytes valid until {@link PoolMemory.free}. */
  revoke?(): void;
}

/**
 * Who holds a buffer, as a pool's {@link BufferPool.owners} records it: the pool (free), the application, or the
 * device.
 */
export const OWNER = { FREE: 0, APP: 1, DEVICE: 2 } as const;
const { FREE, APP, DEVICE } = OWNER;

/** One reusable buffer of a {@link BufferPool}; a device class extends it with its own fields. */
export class PoolBuffer {
  /** The usable bytes (capacity: the slot minus headroom). Made once. */
  readonly data: Uint8Array<ArrayBuffer>;
  /** Creates the buffer (pools do this). */
  constructor(
    readonly pool: BufferPool<PoolBuffer>,
    readonly index: number,
    /** Byte offset of the slot in the pool memory. */
    readonly slotOffset: number,
    /** Device address of the slot start (headroom included); -1 when the pool's memory has none (plain bytes). */
    readonly deviceAddress: number,
    data: Uint8Array<ArrayBuffer>,
  ) {
    this.data = data;
  }

  /** Clear per-use fields when the application takes the buffer (a class's buffer overrides it). */
  reset(): void {}
}

/** How a pool makes its buffers (a class's buffer type). */
export type MakeBuffer<B extends PoolBuffer> = (
  pool: BufferPool<B>,
  index: number,
  slotOffset: number,
  deviceAddress: number,
  data: Uint8Array<ArrayBuffer>,
) => B;

/** A pool of buffers of one class ({@link PoolBuffer} or a subclass). */
export class BufferPool<B extends PoolBuffer> {
  /** All buffers, by index. */
  readonly buffers: B[];
  /** The pool memory as bytes. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** u16 view of the whole pool (header writes without per-buffer views). */
  readonly u16: Uint16Array;
  /** u32 view of the whole pool (header writes without per-buffer views). */
  readonly u32: Uint32Array;
  /**
   * Who holds each buffer, by index (an {@link OWNER} value): the one ownership record. A ring bound to the pool
   * (its descriptor i is buffer i, drivers/virtio/virtqueue.ts) checks what the device returns against it instead
   * of keeping a record of its own.
   */
  readonly owners: Uint8Array;
  readonly #free: Uint32Array;
  #nfree: number;
  #held = 0; // once retired: buffers the application still holds (counted at retirement, not per take)
  #retired = false;
  /** The error kind of misuse (a NIC's pools: "nic"). */
  readonly kind: ErrorKind;

  /** `count` slots of `slotSize` bytes with `headroom` bytes before each buffer's data, in `region`. */
  constructor(
    readonly name: string,
    readonly region: PoolMemory,
    count: number,
    readonly slotSize: number,
    readonly headroom: number,
    make: MakeBuffer<B>,
    kind: ErrorKind = "device",
  ) {
    if (count * slotSize > region.bytes.length) {
      throw new RangeError(`${name}: ${count} x ${slotSize} bytes exceed the region`);
    }
    const base = region.deviceAddress ?? -1;
    if (slotSize % 4 !== 0) throw new RangeError("slot size must be a multiple of 4");
    this.kind = kind;
    this.bytes = region.bytes;
    this.u16 = new Uint16Array(region.bytes.buffer, region.bytes.byteOffset, region.bytes.byteLength >> 1);
    this.u32 = new Uint32Array(region.bytes.buffer, region.bytes.byteOffset, region.bytes.byteLength >> 2);
    this.buffers = [];
    for (let i = 0; i < count; i++) {
      const off = i * slotSize;
      const data = region.bytes.subarray(off + headroom, off + slotSize);
      this.buffers.push(make(this, i, off, base < 0 ? -1 : base + off, data));
    }
    this.#free = new Uint32Array(count);
    for (let i = 0; i < count; i++) this.#free[i] = count - 1 - i;
    this.#nfree = count;
    this.owners = new Uint8Array(count);
  }

  /** Buffers free in the pool. */
  get available(): number {
    return this.#nfree;
  }

  /**
   * What is inconsistent in the pool's records, or null: every free-list entry a distinct free buffer, and every
   * free buffer on the list once (a buffer freed twice would be handed out twice). Diagnostics and fuzzers.
   */
  audit(): string | null {
    const seen = new Uint8Array(this.owners.length), free = this.#free;
    if (this.#nfree > free.length) return `${this.name}: ${this.#nfree} on a free list of ${free.length}`;
    let nFree = 0;
    for (let i = 0; i < this.owners.length; i++) if (this.owners[i] === FREE) nFree++;
    for (let j = 0; j < this.#nfree; j++) {
      const i = free[j];
      if (seen[i]) return `${this.name}: buffer ${i} is on the free list twice`;
      seen[i] = 1;
      if (this.owners[i] !== FREE) return `${this.name}: buffer ${i} is on the free list but not free`;
    }
    return nFree === this.#nfree
      ? null
      : `${this.name}: ${nFree} buffers free, ${this.#nfree} on the free list`;
  }

  /** Who holds `b` now (diagnostics; a buffer given to a request that failed may have become the device's). */
  owner(b: B): "free" | "app" | "device" {
    const st = this.owners[b.index];
    return st === APP ? "app" : st === DEVICE ? "device" : "free";
  }

  /** Whether the pool was retired (its device closed or its backend went away). */
  get retired(): boolean {
    return this.#retired;
  }

  /** Take a free buffer for the application (null when empty). */
  take(): B | null {
    if (this.#nfree === 0 || this.#retired) return null;
    const b = this.buffers[this.#free[--this.#nfree]];
    this.owners[b.index] = APP;
    b.reset();
    return b;
  }

  /** Take up to `n` free buffers for the application into `out` (from index `at`); returns how many. */
  takeMany(out: B[], n: number, at = 0): number {
    if (this.#retired) return 0;
    // One loop in one leaf method: the batch's per-buffer work compiles tight whatever its callers inline.
    const k = Math.min(n, this.#nfree), free = this.#free, owners = this.owners, bufs = this.buffers;
    let top = this.#nfree;
    for (let j = 0; j < k; j++) {
      const i = free[--top], b = bufs[i];
      owners[i] = APP;
      b.reset();
      out[at + j] = b;
    }
    this.#nfree = top;
    return k;
  }

  /** Take up to `max` free buffers for the application, their indices into `ids`; returns how many. */
  takeIndices(ids: Uint16Array, max: number): number {
    return this.#takeIndices(ids, max, APP);
  }

  /** Take a free buffer for the device (null when empty). */
  takeForDevice(): B | null {
    if (this.#nfree === 0 || this.#retired) return null;
    const b = this.buffers[this.#free[--this.#nfree]];
    this.owners[b.index] = DEVICE;
    return b;
  }

  /**
   * Take up to `max` free buffers for the device, their indices into `ids`; returns how many (a bound ring's
   * refill: the device gets buffer i through descriptor i).
   */
  takeIndicesForDevice(ids: Uint16Array, max: number): number {
    return this.#takeIndices(ids, max, DEVICE);
  }

  #takeIndices(ids: Uint16Array, max: number, owner: number): number {
    if (this.#retired) return 0;
    const k = Math.min(max, this.#nfree), free = this.#free, owners = this.owners;
    let top = this.#nfree;
    for (let j = 0; j < k; j++) {
      const i = free[--top];
      owners[i] = owner;
      ids[j] = i;
    }
    this.#nfree = top;
    return k;
  }

  /**
   * Buffers `ids[0..n)`, which a bound ring handed back from the device (it checked each was the device's and marked
   * it the application's), are free again: sent frames, dropped receives.
   */
  recycleMany(ids: Uint16Array, n: number): void {
    const free = this.#free, owners = this.owners;
    let top = this.#nfree;
    for (let j = 0; j < n; j++) {
      const i = ids[j];
      owners[i] = FREE;
      free[top++] = i;
    }
    this.#nfree = top;
  }

  /** Buffer `i`, which a bound ring handed back from the device (as {@link recycleMany}), is free again. */
  recycle(i: number): void {
    this.owners[i] = FREE;
    this.#free[this.#nfree++] = i;
  }

  /**
   * Check that the application holds each of `bufs[0..n)` (from this pool) and hand them all to the device; when
   * one is refused, none is handed over.
   */
  toDeviceMany(bufs: B[], n: number): void {
    const owners = this.owners;
    let j = 0;
    try {
      for (; j < n; j++) {
        const b = bufs[j];
        this.checkHeld(b);
        owners[b.index] = DEVICE;
      }
    } catch (e) {
      for (let u = 0; u < j; u++) owners[bufs[u].index] = APP; // undo: the batch goes whole or not at all
      throw e;
    }
  }

  /** Check that the application holds `b` (from this pool) before it goes to the device. */
  toDevice(b: B): void {
    this.checkHeld(b);
    this.owners[b.index] = DEVICE;
  }

  /** Throw unless the application holds `b`, from this pool, and the pool is live (a send it may be given to). */
  checkHeld(b: B): void {
    if (b.pool !== this || this.owners[b.index] !== APP || this.#retired) this.#notHeld(b);
  }

  #notHeld(b: B): never {
    if (b.pool !== this) {
      throw new PvdrvError(
        this.kind,
        b.pool.retired
          ? `${this.name}: the buffer is from a pool retired when its device closed or disconnected: release it`
          : `${this.name}: buffer belongs to pool ${b.pool.name}`,
      );
    }
    if (this.owners[b.index] !== APP) {
      throw new PvdrvError(this.kind, `${this.name}: buffer ${b.index} is not held by the application`);
    }
    throw new PvdrvError(
      this.kind,
      `${this.name}: the device was closed or disconnected; release the buffer`,
    );
  }

  /** The device gave `b` back to the application (a received frame, a completed read). */
  toApp(b: B): void {
    if (this.owners[b.index] !== DEVICE) {
      throw new PvdrvError(
        this.kind,
        `${this.name}: buffer ${b.index} handed to the application but the device did not hold it`,
      );
    }
    this.owners[b.index] = APP;
  }

  /** Return `b` to the free list; `from` is who must hold it. */
  put(b: B, from: "app" | "device"): void {
    const i = b.index;
    if (b.pool !== this || this.owners[i] !== (from === "app" ? APP : DEVICE)) this.#refuse(b);
    this.owners[i] = FREE;
    this.#free[this.#nfree++] = i;
    if (this.#retired && from === "app" && --this.#held === 0) this.region.free();
  }

  /**
   * Return buffers `bufs[from..n)`, which `holder` must hold, to the free list while they are this pool's, as
   * {@link put} does each (one loop for a batch); returns the index of the first from another pool, or `n`.
   */
  putRun(bufs: B[], from: number, n: number, holder: "app" | "device" = "app"): number {
    let i = from;
    if (this.#retired) { // rare: each put may be the last held one, which frees the memory
      for (; i < n && bufs[i].pool === this; i++) this.put(bufs[i], holder);
      return i;
    }
    const owners = this.owners, free = this.#free, held = holder === "app" ? APP : DEVICE;
    let top = this.#nfree;
    try {
      for (; i < n; i++) {
        const b = bufs[i], x = b.index;
        if (b.pool !== this) break;
        if (owners[x] !== held) this.#refuse(b);
        owners[x] = FREE;
        free[top++] = x;
      }
    } finally {
      this.#nfree = top; // the ones before a refused buffer are back
    }
    return i;
  }

  /**
   * Return the application's buffers `ids[from..n)`, by index, to the free list as {@link put} does each; an index
   * that is not a buffer the application holds is refused (the ones before it are back).
   */
  putIds(ids: Uint16Array, from: number, n: number): void {
    const bufs = this.buffers;
    for (let j = from; j < n; j++) {
      const i = ids[j];
      if (i >= bufs.length) throw new PvdrvError(this.kind, `${this.name}: ${i} is not a buffer index`);
      this.put(bufs[i], "app");
    }
  }

  #refuse(b: B): never {
    if (b.pool !== this) {
      throw new PvdrvError(this.kind, `${this.name}: buffer belongs to pool ${b.pool.name}`);
    }
    throw new PvdrvError(this.kind, `${this.name}: buffer ${b.index} returned twice or by the wrong owner`);
  }

  /**
   * Stop using the pool (the device must already be stopped): buffers the device held become free, device access
   * ends, and the memory goes back now, or when the application releases the last buffer it holds.
   */
  retire(): void {
    if (this.#retired) return;
    this.#retired = true;
    for (let i = 0; i < this.owners.length; i++) {
      if (this.owners[i] === DEVICE) {
        this.owners[i] = FREE;
        this.#free[this.#nfree++] = i;
      } else if (this.owners[i] === APP) this.#held++;
    }
    this.region.revoke?.();
    if (this.#held === 0) this.region.free();
  }
}

/**
 * Give application-held buffers `bufs[from..n)` back to the pools they came from, which must be among `owned` (a
 * device's pools, retired ones included: a buffer held across a close or a reconnect goes back to its retired
 * pool).
 */
export function releaseOwned<B extends PoolBuffer>(
  bufs: B[],
  n: number,
  owned: WeakSet<BufferPool<B>>,
  device: string,
  kind: ErrorKind,
  from = 0,
): void {
  let checked: BufferPool<B> | null = null; // a batch comes from one pool: one WeakSet lookup per pool change
  for (let i = from; i < n;) {
    const p = bufs[i].pool as BufferPool<B>;
    if (p !== checked) {
      if (!owned.has(p)) throw new PvdrvError(kind, `${device}: buffer from pool ${p.name} is not ours`);
      checked = p;
    }
    i = p.putRun(bufs, i, n);
  }
}
