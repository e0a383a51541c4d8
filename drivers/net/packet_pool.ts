/**
 * Packet buffers: fixed-size slots in one device-reachable region, each with a view made once. A pool tracks
 * who holds each buffer (free, the application, the device) so a buffer can never be handed out twice or
 * returned by the wrong owner.
 *
 * A pool whose NIC closes (or whose Xen backend goes away) is retired: the device loses access at once, but the
 * memory under buffers the application still holds stays valid until the last of them is released, so a held
 * buffer never points at unmapped memory or at memory reused for a later connection's rings.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";

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

const FREE = 0, APP = 1, DEVICE = 2;

/** One reusable frame buffer. */
export class PacketBuffer {
  /** The frame bytes (capacity: the slot minus headroom). Made once. */
  readonly data: Uint8Array<ArrayBuffer>;
  /** Frame length in bytes. */
  length = 0;
  /** Receive flags (RX_CSUM_*), or on send: 0. */
  flags = 0;
  /** On send with checksum offload: where checksumming starts (0: no offload). */
  csumStart = 0;
  /** On send with checksum offload: where the checksum goes, relative to csumStart. */
  csumOffset = 0;
  /** Creates the buffer (pools do this). */
  constructor(
    readonly pool: PacketPool,
    readonly index: number,
    /** Byte offset of the slot in the pool memory. */
    readonly slotOffset: number,
    /** Device address of the slot start (headroom included); -1 when the pool's memory has none (plain bytes). */
    readonly deviceAddress: number,
    data: Uint8Array<ArrayBuffer>,
  ) {
    this.data = data;
  }
}

/** A pool of {@link PacketBuffer}s. */
export class PacketPool {
  /** All buffers, by index. */
  readonly buffers: PacketBuffer[];
  /** The pool memory as bytes and u16 (for header writes without per-packet views). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** u16 view of the whole pool. */
  readonly u16: Uint16Array;
  readonly #free: Uint32Array;
  #nfree: number;
  readonly #state: Uint8Array;
  #held = 0; // buffers the application holds
  #retired = false;

  /** `count` slots of `slotSize` bytes with `headroom` bytes before each frame, in `region`. */
  constructor(
    readonly name: string,
    readonly region: PoolMemory,
    count: number,
    readonly slotSize: number,
    readonly headroom: number,
  ) {
    if (count * slotSize > region.bytes.length) {
      throw new RangeError(`${name}: ${count} x ${slotSize} bytes exceed the region`);
    }
    const base = region.deviceAddress ?? -1;
    if (slotSize % 4 !== 0) throw new RangeError("slot size must be a multiple of 4");
    this.bytes = region.bytes;
    this.u16 = new Uint16Array(region.bytes.buffer, region.bytes.byteOffset, region.bytes.byteLength >> 1);
    this.buffers = [];
    for (let i = 0; i < count; i++) {
      const off = i * slotSize;
      const data = region.bytes.subarray(off + headroom, off + slotSize);
      this.buffers.push(new PacketBuffer(this, i, off, base < 0 ? -1 : base + off, data));
    }
    this.#free = new Uint32Array(count);
    for (let i = 0; i < count; i++) this.#free[i] = count - 1 - i;
    this.#nfree = count;
    this.#state = new Uint8Array(count);
  }

  /** Buffers free in the pool. */
  get available(): number {
    return this.#nfree;
  }

  /** Who holds `b` now (diagnostics; a buffer given to a send that failed may have become the device's). */
  owner(b: PacketBuffer): "free" | "app" | "device" {
    const st = this.#state[b.index];
    return st === APP ? "app" : st === DEVICE ? "device" : "free";
  }

  /** Whether the pool was retired (its NIC closed or its backend went away). */
  get retired(): boolean {
    return this.#retired;
  }

  /** Take a free buffer for the application (null when empty). */
  take(): PacketBuffer | null {
    if (this.#nfree === 0 || this.#retired) return null;
    const b = this.buffers[this.#free[--this.#nfree]];
    this.#state[b.index] = APP;
    this.#held++;
    b.length = 0;
    b.flags = 0;
    b.csumStart = 0;
    b.csumOffset = 0;
    return b;
  }

  /** Take up to `n` free buffers for the application into `out`; returns how many. */
  takeMany(out: PacketBuffer[], n: number): number {
    let k = 0;
    while (k < n) {
      const b = this.take();
      if (!b) break;
      out[k++] = b;
    }
    return k;
  }

  /** Take a free buffer for the device (null when empty). */
  takeForDevice(): PacketBuffer | null {
    if (this.#nfree === 0 || this.#retired) return null;
    const b = this.buffers[this.#free[--this.#nfree]];
    this.#state[b.index] = DEVICE;
    return b;
  }

  /** Check that the application holds `b` (from this pool) before it goes to the device. */
  toDevice(b: PacketBuffer): void {
    if (b.pool !== this) {
      throw new PvdrvError(
        "nic",
        b.pool.retired
          ? `${this.name}: the buffer is from a pool retired when its NIC closed or disconnected: release it`
          : `${this.name}: buffer belongs to pool ${b.pool.name}`,
      );
    }
    if (this.#state[b.index] !== APP) {
      throw new PvdrvError("nic", `${this.name}: buffer ${b.index} is not held by the application`);
    }
    if (this.#retired) {
      throw new PvdrvError("nic", `${this.name}: the NIC was closed or disconnected; release the buffer`);
    }
    this.#state[b.index] = DEVICE;
    this.#held--;
  }

  /** The device gave `b` back to the application (a received frame). */
  toApp(b: PacketBuffer): void {
    if (this.#state[b.index] !== DEVICE) {
      throw new PvdrvError(
        "nic",
        `${this.name}: buffer ${b.index} handed to the application but the device did not hold it`,
      );
    }
    this.#state[b.index] = APP;
    this.#held++;
  }

  /** Return `b` to the free list; `from` is who must hold it. */
  put(b: PacketBuffer, from: "app" | "device"): void {
    if (b.pool !== this) throw new PvdrvError("nic", `${this.name}: buffer belongs to pool ${b.pool.name}`);
    const want = from === "app" ? APP : DEVICE;
    if (this.#state[b.index] !== want) {
      throw new PvdrvError("nic", `${this.name}: buffer ${b.index} returned twice or by the wrong owner`);
    }
    this.#state[b.index] = FREE;
    this.#free[this.#nfree++] = b.index;
    if (want === APP && --this.#held === 0 && this.#retired) this.region.free();
  }

  /**
   * Stop using the pool (the device must already be stopped): buffers the device held become free, device access
   * ends, and the memory goes back now, or when the application releases the last buffer it holds.
   */
  retire(): void {
    if (this.#retired) return;
    this.#retired = true;
    for (let i = 0; i < this.#state.length; i++) {
      if (this.#state[i] === DEVICE) {
        this.#state[i] = FREE;
        this.#free[this.#nfree++] = i;
      }
    }
    this.region.revoke?.();
    if (this.#held === 0) this.region.free();
  }
}

/**
 * Give `n` application-held buffers back to the pools they came from, which must be among `owned` (a NIC's pools,
 * retired ones included: a buffer held across a close or a reconnect goes back to its retired pool).
 */
export function releaseOwned(pkts: PacketBuffer[], n: number, owned: WeakSet<PacketPool>, nic: string): void {
  let checked: PacketPool | null = null; // a batch comes from one pool: one WeakSet lookup per pool change
  for (let i = 0; i < n; i++) {
    const b = pkts[i], p = b.pool;
    if (p !== checked) {
      if (!owned.has(p)) throw new PvdrvError("nic", `${nic}: buffer from pool ${p.name} is not ours`);
      checked = p;
    }
    p.put(b, "app");
  }
}
