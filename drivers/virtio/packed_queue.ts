/**
 * The packed virtqueue (virtio 1.2 §2.8), driver side, behind the same interface as the split one
 * ({@link Virtqueue}). One ring of 16-byte descriptors carries buffers both ways: a post writes a descriptor at
 * the next slot and makes it available through its flags; the device writes used descriptors back in ring order
 * (not necessarily in the order it was given them) with the buffer id and the length it wrote.
 *
 * Nothing the device writes is trusted: a used descriptor's id must name a buffer the device holds (the pool's
 * owner record for a bound queue, as in the split queue), its length must fit, and only descriptors published
 * to the device are ever read as used. A bad one breaks the queue with a clear error.
 *
 * Ordering: descriptors are written with plain stores except the first of a batch, whose flags are stored last,
 * at {@link PackedQueue.kick}, with `Atomics.store` (a full fence on x86): the device sees the batch whole or not
 * at all (§2.8.21), and the fence orders it before the read of the device's event-suppression area. A used
 * descriptor's flags are read with `Atomics.load` before its id and length.
 *
 * The buffer id of a chain is written into every descriptor of it: the spec puts it in the last (§2.8.6), Linux
 * and QEMU read the first.
 * @module
 */
import type { QueueAddresses } from "./transport.ts";
import type { DmaAllocator, DmaRegion } from "../../hal/dma.ts";
import { type BufferPool, OWNER, type PoolBuffer } from "../core/buffer_pool.ts";
import {
  advance,
  availFlags,
  EVENT_FLAGS,
  isUsed,
  packedQueueBytes,
  passesEvent,
  PDESC,
  PDESC_F,
} from "./packed_ring.ts";
import { type Segment, type Virtqueue, VirtqueueError } from "./queue.ts";

// A descriptor's fields (PDESC) as indices of the ring's views, from slot s's first word (s << 2) or halfword
// (s << 3): addr's low word (then its high one), len, the word of id and flags; id and flags alone.
const ADDR32 = PDESC.ADDR >> 2, LEN32 = PDESC.LEN >> 2, IDFLAGS32 = PDESC.ID >> 2;
const ID16 = PDESC.ID >> 1, FLAGS16 = PDESC.FLAGS >> 1;

// Owner states as module constants: the hot loops compare against them per buffer.
const { APP, DEVICE } = OWNER;
// The two flags that say who holds a descriptor (§2.8.1).
const BOTH = PDESC_F.AVAIL | PDESC_F.USED;

/** A packed virtqueue. */
export class PackedQueue implements Virtqueue {
  /** Ring slots (a power of two here, though the format allows any size). */
  readonly size: number;
  /** Device addresses of the ring and the two event-suppression areas. */
  readonly addresses: QueueAddresses;
  /** The ring memory. */
  readonly region: DmaRegion;
  /** Whether VIRTIO_F_EVENT_IDX was negotiated (the device's event area may then name a slot). */
  readonly eventIdx: boolean;
  /** Always "packed". */
  readonly format = "packed";

  readonly #d32: Uint32Array; // per slot: addr lo, addr hi, len, id | flags << 16
  readonly #d16: Uint16Array; // same memory: [8 s + 6] = id, [8 s + 7] = flags
  readonly #ev: Uint16Array; // driver area: off_wrap, flags; device area: off_wrap, flags
  #availLin = 0; // next slot to write (cursor with its wrap counter, packed_ring.ts)
  #usedLin = 0; // next slot the device writes used
  #scanLin = 0; // past the used descriptors already counted ready
  #ready = 0; // used descriptors seen and not yet popped
  #inFlight = 0; // buffers with the device, published or not
  #published = 0; // of those, published
  #pendHead = -1; // cursor of the first unpublished descriptor, or -1
  #pendFlags = 0; // its flags, stored at kick
  #descInUse = 0; // slots between #usedLin and #availLin
  #broken: VirtqueueError | null = null;
  // General chains (the control queue): buffer ids, their lengths in slots and writable capacity.
  readonly #freeIds: Uint16Array;
  #nfreeIds: number;
  readonly #chainLen: Uint16Array;
  readonly #cap: Uint32Array;
  readonly #owned: Uint8Array;
  // Bound to a pool: its owner record and each buffer's address, length and flags.
  #owners: Uint8Array | null = null;
  #addrLo: Uint32Array | null = null;
  #addrHi: Uint32Array | null = null;
  #slotLen = 0;
  #slotCap = 0;
  #slotFlags = 0;
  /** Length the device reported for the last entry returned by {@link popUsed} or {@link popSlot}. */
  lastLen = 0;

  /** Allocate a queue of `size` slots from `dma`. */
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
    this.eventIdx = eventIdx;
    const { driverOff, total } = packedQueueBytes(size);
    this.region = dma.alloc(total);
    const buf = this.region.bytes.buffer, base = this.region.bytes.byteOffset;
    this.#d32 = new Uint32Array(buf, base, 4 * size);
    this.#d16 = new Uint16Array(buf, base, 8 * size);
    this.#ev = new Uint16Array(buf, base + driverOff, 4);
    const a = this.region.deviceAddress;
    this.addresses = { desc: a, driver: a + driverOff, device: a + driverOff + 4 };
    this.#freeIds = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.#freeIds[i] = size - 1 - i;
    this.#nfreeIds = size;
    this.#chainLen = new Uint16Array(size);
    this.#cap = new Uint32Array(size);
    this.#owned = new Uint8Array(size);
  }

  /** Free slots (bound to a pool: buffers the device does not hold). */
  get freeCount(): number {
    return this.size - this.#descInUse;
  }
  /** Buffers with the device. */
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

  #break(msg: string): VirtqueueError {
    return this.#broken ??= new VirtqueueError(`queue ${this.index}: ${msg}`);
  }

  /**
   * Bind the queue to `pool` (exactly `size` buffers, each one descriptor of `len` bytes from its slot start;
   * `write`: device-writable). Buffers then go out with {@link postSlots} / {@link postFrames} and come back
   * with {@link popSlot} / {@link popSlots}; the chain methods refuse.
   */
  bindPool(pool: BufferPool<PoolBuffer>, len: number, write: boolean): void {
    if (pool.buffers.length !== this.size || this.#inFlight !== 0 || this.#owners) {
      throw new RangeError(
        `queue ${this.index}: bind an idle queue to a pool of exactly ${this.size} buffers`,
      );
    }
    const lo = new Uint32Array(this.size), hi = new Uint32Array(this.size);
    for (const b of pool.buffers) {
      if (b.deviceAddress < 0 || len > pool.slotSize) {
        throw new RangeError(
          `queue ${this.index}: pool ${pool.name} has no device addresses or ${len}-byte slots`,
        );
      }
      lo[b.index] = b.deviceAddress >>> 0;
      hi[b.index] = (b.deviceAddress / 0x1_0000_0000) >>> 0;
    }
    this.#addrLo = lo;
    this.#addrHi = hi;
    this.#owners = pool.owners;
    this.#slotLen = len;
    this.#slotCap = write ? len : 0;
    this.#slotFlags = write ? PDESC_F.WRITE : 0;
  }

  /**
   * Write buffer `id`'s descriptor at cursor `lin` as the first of an unpublished batch: whole but for its flags,
   * which stay "not available" (the state the slot's last lap left) until {@link kick} stores `flags`.
   */
  #putHead(lin: number, lo: number, hi: number, len: number, id: number, flags: number): void {
    const o = (lin & (this.size - 1)) << 2;
    this.#d32[o + ADDR32] = lo;
    this.#d32[o + ADDR32 + 1] = hi;
    this.#d32[o + LEN32] = len;
    this.#d32[o + IDFLAGS32] = id | ((lin < this.size ? 0 : PDESC_F.AVAIL | PDESC_F.USED) << 16); // AVAIL = USED
    this.#pendHead = lin;
    this.#pendFlags = flags;
  }

  /** Bound queue: queue buffers `ids[0..n)` (just marked the device's), each `lens[k]` bytes (TX). */
  postFrames(ids: Uint16Array, lens: Uint32Array, n: number): void {
    if (this.#broken) throw this.#broken;
    if (n === 0) return;
    const d32 = this.#d32, lo = this.#addrLo!, hi = this.#addrHi!, f = this.#slotFlags, size = this.size;
    let lin = this.#availLin, k = 0;
    if (this.#pendHead < 0) {
      const i = ids[0];
      this.#putHead(lin, lo[i], hi[i], lens[0], i, f | availFlags(lin, size));
      lin = advance(lin, 1, size);
      k = 1;
    }
    // One loop of plain stores: each descriptor is written whole, behind the batch's held-back head.
    for (; k < n; k++) {
      const i = ids[k], o = (lin & (size - 1)) << 2;
      d32[o + ADDR32] = lo[i];
      d32[o + ADDR32 + 1] = hi[i];
      d32[o + LEN32] = lens[k];
      d32[o + IDFLAGS32] = i | ((f | (lin < size ? PDESC_F.AVAIL : PDESC_F.USED)) << 16);
      lin = lin + 1 === 2 * size ? 0 : lin + 1;
    }
    this.#posted(lin, n);
  }

  /** Bound queue: queue buffers `ids[0..n)` whole (RX; just marked the device's). */
  postSlots(ids: Uint16Array, n: number): void {
    if (this.#broken) throw this.#broken;
    if (n === 0) return;
    const d32 = this.#d32, lo = this.#addrLo!, hi = this.#addrHi!, f = this.#slotFlags, size = this.size;
    const len = this.#slotLen;
    let lin = this.#availLin, k = 0;
    if (this.#pendHead < 0) {
      const i = ids[0];
      this.#putHead(lin, lo[i], hi[i], len, i, f | availFlags(lin, size));
      lin = advance(lin, 1, size);
      k = 1;
    }
    for (; k < n; k++) {
      const i = ids[k], o = (lin & (size - 1)) << 2;
      d32[o + ADDR32] = lo[i];
      d32[o + ADDR32 + 1] = hi[i];
      d32[o + LEN32] = len;
      d32[o + IDFLAGS32] = i | ((f | (lin < size ? PDESC_F.AVAIL : PDESC_F.USED)) << 16);
      lin = lin + 1 === 2 * size ? 0 : lin + 1;
    }
    this.#posted(lin, n);
  }

  #posted(lin: number, n: number): void {
    this.#availLin = lin;
    this.#inFlight += n;
    this.#descInUse += n;
  }

  /**
   * The flags of the descriptor at cursor `lin`; `acquire` for the first read of a scan. That one is
   * `Atomics.load`: a barrier the compiler does not move loads across or fold into an earlier read (a poll would
   * otherwise spin on a stale value). The rest of the scan reads plain, in order after it (x86 keeps loads in
   * program order), each slot's flags before its id and length, as §2.8.21 asks. An `Atomics.load` costs ≈ 7 ns
   * here against < 1 ns for a plain one: once per batch, not per descriptor.
   */
  #flagsAt(lin: number, acquire: boolean): number {
    const at = ((lin & (this.size - 1)) << 3) + FLAGS16;
    return acquire ? Atomics.load(this.#d16, at) : this.#d16[at];
  }

  /**
   * Bound queue: pop the next used descriptor (call only after {@link pending} said so), checked against the
   * pool's owner record and handed to the driver there: its buffer index, length in `lastLen`.
   */
  popSlot(): number {
    if (this.#ready === 0) this.#noneReady();
    const lin = this.#usedLin, size = this.size, s = lin & (size - 1);
    const id = this.#d16[(s << 3) + ID16], len = this.#d32[(s << 2) + LEN32];
    if (!this.#usedOk(id, len)) this.fail(this.#usedFault(id, len));
    this.#owners![id] = APP;
    this.#usedLin = lin + 1 === 2 * size ? 0 : lin + 1;
    if (--this.#ready === 0) this.#scanLin = this.#usedLin;
    this.#inFlight--;
    this.#published--;
    this.#descInUse--;
    this.lastLen = len;
    return id;
  }

  /**
   * Bound queue: pop every used descriptor there is, up to `max`, as {@link popSlot} does each; their buffer
   * indices into `ids` and, given `lens`, the lengths the device wrote. Returns how many. A bad one breaks the
   * queue without throwing here: the ones before it are the caller's to give back first, then {@link broken} says
   * why.
   */
  popSlots(ids: Uint16Array, max: number, lens?: Uint32Array): number {
    // pending() reads the flags (the first an acquire) and counts; the loop then reads ids and lengths only.
    const n = Math.min(this.pending(), max), d16 = this.#d16, d32 = this.#d32, owners = this.#owners!;
    const size = this.size, mask = size - 1, cap = this.#slotCap;
    let lin = this.#usedLin, k = 0;
    for (; k < n; k++) {
      const s = lin & mask, id = d16[(s << 3) + ID16], len = d32[(s << 2) + LEN32];
      if (!(id < size && owners[id] === DEVICE && len <= cap)) { // #usedOk, with the fields in locals
        this.#break(this.#usedFault(id, len));
        break;
      }
      owners[id] = APP;
      ids[k] = id;
      if (lens) lens[k] = len;
      lin = lin + 1 === 2 * size ? 0 : lin + 1;
    }
    this.#ready -= k;
    this.#popped(lin, k, k);
    return k;
  }

  #noneReady(): never {
    throw new RangeError(`queue ${this.index}: popSlot without a pending entry`);
  }

  #popped(lin: number, bufs: number, slots: number): void {
    this.#usedLin = lin;
    if (this.#ready === 0) this.#scanLin = lin;
    this.#inFlight -= bufs;
    this.#published -= bufs;
    this.#descInUse -= slots;
  }

  #usedOk(id: number, len: number): boolean {
    return id < this.size && this.#owners![id] === DEVICE && len <= this.#slotCap;
  }

  #usedFault(id: number, len: number): string {
    return id < this.size && this.#owners![id] === DEVICE
      ? `device wrote ${len} bytes into a ${this.#slotCap}-byte buffer (id ${id})`
      : `device returned buffer id ${id}, which it does not own`;
  }

  #unbound(): void {
    if (this.#owners) {
      throw new RangeError(`queue ${this.index} is bound to a pool: post its buffers by index`);
    }
  }

  /** Queue one single-descriptor buffer (not yet visible to the device); returns its id, or -1 when full. */
  add(addr: number, len: number, write: boolean): number {
    return this.addChain([{ addr, len, write }]);
  }

  /** Queue a chain (device-readable segments first, then writable ones, §2.8.6); its id or -1 when full. */
  addChain(segs: Segment[]): number {
    if (this.#broken) throw this.#broken;
    this.#unbound();
    const n = segs.length, size = this.size;
    if (n === 0 || this.freeCount < n || this.#nfreeIds === 0) return -1;
    let seenWrite = false, cap = 0;
    for (const s of segs) {
      if (seenWrite && !s.write) throw new RangeError("readable segments must precede writable ones");
      seenWrite ||= s.write;
      if (s.write) cap += s.len;
    }
    const id = this.#freeIds[--this.#nfreeIds];
    let lin = this.#availLin;
    segs.forEach((s, k) => {
      const flags = availFlags(lin, size) | (s.write ? PDESC_F.WRITE : 0) | (k < n - 1 ? PDESC_F.NEXT : 0);
      const lo = s.addr >>> 0, hi = (s.addr / 0x1_0000_0000) >>> 0;
      if (this.#pendHead < 0) this.#putHead(lin, lo, hi, s.len, id, flags);
      else {
        const o = (lin & (size - 1)) << 2;
        this.#d32.set([lo, hi, s.len, (id | (flags << 16)) >>> 0], o);
      }
      lin = advance(lin, 1, size);
    });
    this.#chainLen[id] = n;
    this.#cap[id] = cap;
    this.#owned[id] = 1;
    this.#availLin = lin;
    this.#inFlight++;
    this.#descInUse += n;
    return id;
  }

  /** Throws when the queue is broken (a packed ring has no index the device could run ahead with). */
  verify(): void {
    if (this.#broken) throw this.#broken;
  }

  /** Publish queued buffers (the batch's first flags, fenced) and notify unless the device suppressed it. */
  kick(): boolean {
    const head = this.#pendHead;
    if (head < 0) return false;
    this.verify();
    Atomics.store(this.#d16, ((head & (this.size - 1)) << 3) + FLAGS16, this.#pendFlags);
    this.#pendHead = -1;
    this.#published = this.#inFlight;
    const flags = Atomics.load(this.#ev, 3);
    const need = flags === EVENT_FLAGS.DESC && this.eventIdx
      ? passesEvent(this.#ev[2], this.#availLin, head, this.size) // §2.8.10
      : flags !== EVENT_FLAGS.DISABLE;
    if (need) {
      try {
        this.notify();
      } catch (e) {
        this.fail(`notification failed after publishing buffers: ${(e as Error).message}`);
      }
    }
    return need;
  }

  /** Used descriptors ready to pop (only published buffers are looked at). */
  pending(): number {
    if (this.#broken) throw this.#broken;
    let ready = this.#ready, lin = this.#scanLin;
    const published = this.#published, size = this.size, d16 = this.#d16, mask = size - 1;
    if (ready >= published || !isUsed(this.#flagsAt(lin, true), lin, size)) return ready;
    if (this.#owners) {
      // Bound: one slot per buffer. isUsed written out: a used slot has AVAIL = USED = its lap's wrap counter.
      do {
        ready++;
        lin = lin + 1 === 2 * size ? 0 : lin + 1;
      } while (ready < published && (d16[((lin & mask) << 3) + FLAGS16] & BOTH) === (lin < size ? BOTH : 0));
    } else {
      do {
        ready++;
        lin = advance(lin, this.#chainAt(lin), size);
      } while (ready < published && isUsed(this.#flagsAt(lin, false), lin, size));
    }
    this.#ready = ready;
    this.#scanLin = lin;
    return ready;
  }

  /** Unbound queue: the slots of the chain whose used descriptor is at `lin` (its id checked first). */
  #chainAt(lin: number): number {
    const id = this.#d16[((lin & (this.size - 1)) << 3) + ID16];
    if (!(id < this.size) || this.#owned[id] === 0) {
      this.fail(`device returned buffer id ${id}, which it does not own`);
    }
    return this.#chainLen[id];
  }

  /** Pop the next used chain (call only after {@link pending} said so): its id; length in `lastLen`. */
  popUsed(): number {
    if (this.#ready === 0) throw new RangeError(`queue ${this.index}: popUsed without a pending entry`);
    const s = this.#usedLin & (this.size - 1),
      id = this.#d16[(s << 3) + ID16],
      len = this.#d32[(s << 2) + LEN32];
    if (!(id < this.size) || this.#owned[id] === 0) {
      this.fail(`device returned buffer id ${id}, which it does not own`);
    }
    if (len > this.#cap[id]) {
      this.fail(`device wrote ${len} bytes into a ${this.#cap[id]}-byte buffer (id ${id})`);
    }
    const n = this.#chainLen[id];
    this.#owned[id] = 0;
    this.#freeIds[this.#nfreeIds++] = id;
    this.#ready--;
    this.#popped(advance(this.#usedLin, n, this.size), 1, n);
    this.lastLen = len;
    return id;
  }

  /** Ask for interrupts again (every used buffer: §2.8.10's ENABLE); true when entries are already pending. */
  enableInterrupts(): boolean {
    Atomics.store(this.#ev, 1, EVENT_FLAGS.ENABLE);
    return this.pending() > 0;
  }

  /** Suppress interrupts while polling. */
  disableInterrupts(): void {
    this.#ev[1] = EVENT_FLAGS.DISABLE;
  }

  /** Free the ring memory. */
  free(): void {
    this.region.free();
  }
}
