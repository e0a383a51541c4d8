/**
 * The split virtqueue (virtio 1.2 §2.7), driver side.
 *
 * Layout: the legacy contiguous form (§2.7.2: descriptor table, then the avail ring, then the used ring on the
 * next 4 KiB boundary), valid for both transports. Views over it are made once. Descriptors live on a free stack
 * (no scans); a shadow of each chain's links and writable capacity is kept in private arrays, so nothing the
 * device writes is trusted: every used entry is checked (id in range and owned by the device, length within the
 * buffer, used.idx advancing by no more than what is outstanding) and a bad one breaks the queue with a clear
 * error instead of a wrong read.
 *
 * A queue whose every buffer is one descriptor (virtio-net's frames) can be bound to a pool of exactly `size`
 * buffers ({@link SplitQueue.bindPool}): descriptor i is buffer i for good, written once, and the pool's
 * per-buffer owner record is the queue's record of what the device holds. A post then writes a length and an
 * avail entry, and a used entry maps to its buffer by its id: no second free list, no head → buffer map.
 *
 * Ordering: ring entries are plain stores; `avail.idx` is published with `Atomics.store` (a full fence on x86),
 * which also orders it before the notification-suppression read that follows (§2.7.10, §2.7.7).
 * @module
 */
import type { QueueAddresses } from "./transport.ts";
import type { DmaAllocator, DmaRegion } from "../../hal/dma.ts";
import { type BufferPool, OWNER, type PoolBuffer } from "../core/buffer_pool.ts";

import {
  AVAIL_F_NO_INTERRUPT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  needsEvent,
  splitQueueBytes,
  USED_F_NO_NOTIFY,
} from "./split_ring.ts";

export { splitQueueBytes } from "./split_ring.ts";
export { type Segment, type Virtqueue, VirtqueueError } from "./queue.ts";
import { type Segment, type Virtqueue, VirtqueueError } from "./queue.ts";

// Owner states as module constants: the hot loops compare against them per buffer.
const { APP, DEVICE } = OWNER;

/** A split virtqueue. */
export class SplitQueue implements Virtqueue {
  /** Number of descriptors (a power of two). */
  readonly size: number;
  /** Device addresses of the three parts. */
  readonly addresses: QueueAddresses;
  /** The ring memory. */
  readonly region: DmaRegion;
  /** Whether VIRTIO_F_EVENT_IDX was negotiated. */
  readonly eventIdx: boolean;
  /** Always "split". */
  readonly format = "split";

  readonly #mask: number;
  readonly #desc: Uint32Array; // per descriptor: addr lo, addr hi, len, flags | next << 16
  readonly #avail: Uint16Array; // flags, idx, ring[size], used_event
  readonly #used: Uint32Array; // flags | idx << 16, then (id, len) per entry
  readonly #used16: Uint16Array; // same memory: [1] = idx, [2 + 4*size] = avail_event
  readonly #free: Uint16Array;
  #nfree: number;
  readonly #next: Uint16Array; // shadow links
  readonly #chain: Uint16Array; // descriptors in the chain at a head
  readonly #cap: Uint32Array; // writable bytes of the chain at a head
  readonly #owned: Uint8Array; // head is with the device
  readonly #ids: Uint16Array; // scratch: the descriptors of the chain being added
  #availIdx = 0;
  #kickedIdx = 0;
  #lastUsed = 0;
  #inFlight = 0;
  #broken: VirtqueueError | null = null;
  /** Bound to a pool: its owner record (descriptor i is buffer i), else null. */
  #owners: Uint8Array | null = null;
  #slotCap = 0; // bound: writable bytes of every descriptor
  /** Length the device reported for the last entry returned by {@link popUsed}. */
  lastLen = 0;

  /** Allocate a queue of `size` entries from `dma`. */
  constructor(
    dma: DmaAllocator,
    readonly index: number,
    size: number,
    eventIdx: boolean,
    readonly notify: () => void,
  ) {
    if (!(size >= 2 && size <= 32768 && (size & (size - 1)) === 0)) {
      throw new VirtqueueError(`queue ${index}: size ${size} is not a power of two in 2..32768`);
    }
    this.size = size;
    this.#mask = size - 1;
    this.eventIdx = eventIdx;
    const { availOff, usedOff, total } = splitQueueBytes(size);
    this.region = dma.alloc(total);
    const buf = this.region.bytes.buffer, base = this.region.bytes.byteOffset;
    this.#desc = new Uint32Array(buf, base, 4 * size);
    this.#avail = new Uint16Array(buf, base + availOff, 3 + size);
    this.#used = new Uint32Array(buf, base + usedOff, 1 + 2 * size + 1);
    this.#used16 = new Uint16Array(buf, base + usedOff, 3 + 4 * size);
    const a = this.region.deviceAddress;
    this.addresses = { desc: a, driver: a + availOff, device: a + usedOff };
    this.#free = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.#free[i] = size - 1 - i; // pop gives 0, 1, 2...
    this.#nfree = size;
    this.#next = new Uint16Array(size);
    this.#chain = new Uint16Array(size);
    this.#cap = new Uint32Array(size);
    this.#owned = new Uint8Array(size);
    this.#ids = new Uint16Array(size);
  }

  /** Free descriptors (bound to a pool: those of buffers the device does not hold). */
  get freeCount(): number {
    return this.#owners ? this.size - this.#inFlight : this.#nfree;
  }
  /** Heads with the device. */
  get inFlight(): number {
    return this.#inFlight;
  }
  /** The error that broke the queue, if any. */
  get broken(): VirtqueueError | null {
    return this.#broken;
  }

  /** Break the queue with `msg` (the device violated the protocol) and throw. */
  fail(msg: string): never {
    throw this.#break(msg);
  }

  /** Record that the device broke the queue with `msg` (the first reason stays); the error. */
  #break(msg: string): VirtqueueError {
    return this.#broken ??= new VirtqueueError(`queue ${this.index}: ${msg}`);
  }

  #setDesc(i: number, addr: number, len: number, flags: number, next: number): void {
    const d = this.#desc, o = i << 2;
    d[o] = addr >>> 0;
    d[o + 1] = addr > 0xffff_ffff ? (addr / 0x1_0000_0000) >>> 0 : 0;
    d[o + 2] = len;
    d[o + 3] = flags | (next << 16);
  }

  #offer(head: number, count: number, cap: number): void {
    this.#chain[head] = count;
    this.#cap[head] = cap;
    this.#owned[head] = 1;
    this.#inFlight++;
    this.#avail[2 + (this.#availIdx & this.#mask)] = head;
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
  }

  /**
   * Bind descriptor i to buffer i of `pool` for good (the pool has exactly `size` buffers, each one descriptor of
   * `len` bytes from its slot start; `write`: device-writable). Afterwards buffers go to the device with
   * {@link postSlot} and come back with {@link popSlot}; the chain methods refuse.
   */
  bindPool(pool: BufferPool<PoolBuffer>, len: number, write: boolean): void {
    if (pool.buffers.length !== this.size || this.#inFlight !== 0 || this.#owners) {
      throw new RangeError(
        `queue ${this.index}: bind an idle queue to a pool of exactly ${this.size} buffers`,
      );
    }
    for (const b of pool.buffers) {
      if (b.deviceAddress < 0 || len > pool.slotSize) {
        throw new RangeError(
          `queue ${this.index}: pool ${pool.name} has no device addresses or ${len}-byte slots`,
        );
      }
      this.#setDesc(b.index, b.deviceAddress, len, write ? DESC_F_WRITE : 0, 0);
    }
    this.#owners = pool.owners;
    this.#slotCap = write ? len : 0;
    this.#nfree = 0; // descriptors are the pool's now
  }

  /**
   * Bound queue: queue buffers `ids[0..n)`, which the pool has just marked as the device's, each `lens[k]` bytes
   * long (device-readable buffers: the header then the frame). Typed arrays in, so the loop loads no objects.
   */
  postFrames(ids: Uint16Array, lens: Uint32Array, n: number): void {
    if (this.#broken) throw this.#broken;
    const desc = this.#desc, avail = this.#avail, mask = this.#mask;
    let idx = this.#availIdx;
    for (let k = 0; k < n; k++) {
      const i = ids[k];
      desc[(i << 2) + 2] = lens[k];
      avail[2 + (idx & mask)] = i;
      idx = (idx + 1) & 0xffff;
    }
    this.#availIdx = idx;
    this.#inFlight += n;
  }

  /** Bound queue: queue buffers `ids[0..n)` as bound (the pool has just marked them as the device's). */
  postSlots(ids: Uint16Array, n: number): void {
    if (this.#broken) throw this.#broken;
    const avail = this.#avail, mask = this.#mask;
    let idx = this.#availIdx;
    for (let k = 0; k < n; k++) {
      avail[2 + (idx & mask)] = ids[k];
      idx = (idx + 1) & 0xffff;
    }
    this.#availIdx = idx;
    this.#inFlight += n;
  }

  /**
   * Bound queue: pop the next used entry (call only after {@link pending} said so), checked against the pool's
   * owner record and handed to the driver there (the device's → the application's), so an id the device repeats
   * is refused: its buffer index, length in `lastLen`.
   */
  popSlot(): number {
    const slot = this.#lastUsed & this.#mask, owners = this.#owners!;
    const id = this.#used[1 + 2 * slot], len = this.#used[2 + 2 * slot];
    if (!this.#usedOk(id, len)) this.fail(this.#usedFault(id, len));
    owners[id] = APP;
    this.#inFlight--;
    this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
    this.lastLen = len;
    return id;
  }

  /**
   * Bound queue: pop every used entry there is, up to `max`, as {@link popSlot} does each; their buffer indices
   * into `ids` and, given `lens`, the lengths the device wrote into it. Returns how many. A bad entry breaks the
   * queue but does not throw here: the entries before it are the caller's to give back first, then
   * {@link broken} says why.
   */
  popSlots(ids: Uint16Array, max: number, lens?: Uint32Array): number {
    const n = Math.min(this.pending(), max), used = this.#used, owners = this.#owners!, mask = this.#mask;
    let last = this.#lastUsed, k = 0;
    for (; k < n; k++) {
      const slot = last & mask, id = used[1 + 2 * slot], len = used[2 + 2 * slot];
      if (!this.#usedOk(id, len)) {
        this.#break(this.#usedFault(id, len));
        break;
      }
      owners[id] = APP;
      ids[k] = id;
      if (lens) lens[k] = len;
      last = (last + 1) & 0xffff;
    }
    this.#lastUsed = last;
    this.#inFlight -= k;
    return k;
  }

  /** Bound queue: a used entry names a buffer the device holds, and says it wrote no more than the slot holds. */
  #usedOk(id: number, len: number): boolean {
    return id < this.size && this.#owners![id] === DEVICE && len <= this.#slotCap;
  }

  /** What is wrong with a used entry {@link #usedOk} refused. */
  #usedFault(id: number, len: number): string {
    return id < this.size && this.#owners![id] === DEVICE
      ? this.#lenFault(id, len, this.#slotCap)
      : this.#idFault(id);
  }

  #idFault(id: number): string {
    return `device returned descriptor id ${id}, which it does not own`;
  }

  #lenFault(id: number, len: number, cap: number): string {
    return `device wrote ${len} bytes into a ${cap}-byte buffer (id ${id})`;
  }

  #unbound(): void {
    if (this.#owners) {
      throw new RangeError(`queue ${this.index} is bound to a pool: post its buffers by index`);
    }
  }

  /** Queue one single-descriptor buffer (not yet visible to the device); returns its head id, or -1 when full. */
  add(addr: number, len: number, write: boolean): number {
    if (this.#broken) throw this.#broken;
    this.#unbound();
    if (this.#nfree === 0) return -1;
    const id = this.#free[--this.#nfree];
    this.#setDesc(id, addr, len, write ? DESC_F_WRITE : 0, 0);
    this.#offer(id, 1, write ? len : 0);
    return id;
  }

  /** Queue a chain (device-readable segments first, then writable ones, §2.7.4.2); head id or -1 when full. */
  addChain(segs: Segment[]): number {
    if (this.#broken) throw this.#broken;
    this.#unbound();
    if (segs.length === 0 || this.#nfree < segs.length) return -1;
    let seenWrite = false, cap = 0;
    for (const s of segs) {
      if (seenWrite && !s.write) throw new RangeError("readable segments must precede writable ones");
      seenWrite ||= s.write;
    }
    const ids = segs.map(() => this.#free[--this.#nfree]);
    segs.forEach((s, k) => {
      const last = k === segs.length - 1;
      this.#setDesc(
        ids[k],
        s.addr,
        s.len,
        (s.write ? DESC_F_WRITE : 0) | (last ? 0 : DESC_F_NEXT),
        last ? 0 : ids[k + 1],
      );
      this.#next[ids[k]] = last ? 0 : ids[k + 1];
      if (s.write) cap += s.len;
    });
    this.#offer(ids[0], segs.length, cap);
    return ids[0];
  }

  /**
   * Queue a chain given as parallel arrays, allocating nothing (the block driver's hot path): `n` segments,
   * device-readable ones first (§2.7.4.2); head id, or -1 when fewer than `n` descriptors are free.
   */
  addChainOf(addr: Float64Array, len: Uint32Array, write: Uint8Array, n: number): number {
    if (this.#broken) throw this.#broken;
    this.#unbound();
    if (n === 0 || this.#nfree < n) return -1;
    let seenWrite = false, cap = 0;
    for (let k = 0; k < n; k++) {
      if (seenWrite && !write[k]) throw new RangeError("readable segments must precede writable ones");
      if (write[k]) {
        seenWrite = true;
        cap += len[k];
      }
    }
    const ids = this.#ids;
    for (let k = 0; k < n; k++) ids[k] = this.#free[--this.#nfree];
    for (let k = 0; k < n; k++) {
      const last = k === n - 1, next = last ? 0 : ids[k + 1];
      this.#setDesc(ids[k], addr[k], len[k], (write[k] ? DESC_F_WRITE : 0) | (last ? 0 : DESC_F_NEXT), next);
      this.#next[ids[k]] = next;
    }
    this.#offer(ids[0], n, cap);
    return ids[0];
  }

  /**
   * Check used.idx against what the device was given (published buffers only): call before queueing a batch, so a
   * used.idx published ahead of time is caught before new buffers would make it look valid. Throws when broken.
   */
  verify(): void {
    if (this.#broken) throw this.#broken;
    const published = this.#inFlight - ((this.#availIdx - this.#kickedIdx) & 0xffff);
    const usedIdx = Atomics.load(this.#used16, 1);
    if (((usedIdx - this.#lastUsed) & 0xffff) > published) this.#usedAhead(usedIdx, published);
  }

  // Failure paths live in their own small methods: the hot ones stay small enough for the JIT to inline whole.
  #usedAhead(usedIdx: number, outstanding: number): never {
    this.fail(
      `device moved used.idx from ${this.#lastUsed} to ${usedIdx} with only ${outstanding} buffers outstanding`,
    );
  }

  #notifyFailed(e: unknown): never {
    this.fail(`notification failed after publishing buffers: ${(e as Error).message}`);
  }

  /** Publish queued buffers (one fenced store) and notify the device unless it suppressed notifications. */
  kick(): boolean {
    const newIdx = this.#availIdx, old = this.#kickedIdx;
    if (newIdx === old) return false;
    this.verify(); // again, right before publishing
    Atomics.store(this.#avail, 1, newIdx);
    this.#kickedIdx = newIdx;
    let need: boolean;
    if (this.eventIdx) {
      const ev = Atomics.load(this.#used16, 2 + 4 * this.size);
      need = needsEvent(ev, newIdx, old); // §2.7.10
    } else {
      need = (Atomics.load(this.#used16, 0) & USED_F_NO_NOTIFY) === 0;
    }
    if (need) {
      try {
        this.notify();
      } catch (e) {
        this.#notifyFailed(e);
      }
    }
    return need;
  }

  /** Number of used entries ready to pop (checked against what is outstanding). */
  pending(): number {
    if (this.#broken) throw this.#broken;
    const idx = Atomics.load(this.#used16, 1);
    const n = (idx - this.#lastUsed) & 0xffff;
    if (n > this.#inFlight) this.#usedAhead(idx, this.#inFlight);
    return n;
  }

  /** Pop the next used entry (call only after {@link pending} said so): its head id; length in `lastLen`. */
  popUsed(): number {
    const slot = this.#lastUsed & this.#mask;
    const id = this.#used[1 + 2 * slot], len = this.#used[2 + 2 * slot];
    if (!(id < this.size) || this.#owned[id] === 0) this.fail(this.#idFault(id));
    if (len > this.#cap[id]) this.fail(this.#lenFault(id, len, this.#cap[id]));
    this.#owned[id] = 0;
    this.#inFlight--;
    let d = id;
    for (let k = this.#chain[id]; k > 0; k--) {
      this.#free[this.#nfree++] = d;
      d = this.#next[d];
    }
    this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
    this.lastLen = len;
    return id;
  }

  /** Ask for interrupts again; true when entries are already pending (do not sleep then). */
  enableInterrupts(): boolean {
    if (this.eventIdx) Atomics.store(this.#avail, 2 + this.size, this.#lastUsed); // used_event
    else Atomics.store(this.#avail, 0, 0);
    return this.pending() > 0;
  }

  /** Suppress interrupts while polling. */
  disableInterrupts(): void {
    if (this.eventIdx) this.#avail[2 + this.size] = (this.#lastUsed - 1) & 0xffff; // furthest point from now
    else this.#avail[0] = AVAIL_F_NO_INTERRUPT;
  }

  /** Free the ring memory. */
  free(): void {
    this.region.free();
  }
}
