/**
 * The split virtqueue (virtio 1.2 §2.7), device side: what a device (pvdrv's device models today, a vhost-user
 * backend next) does with a queue a driver set up. It takes available chains and puts used elements, deciding
 * interrupts as §2.7.7 and §2.7.10 say, and it never trusts the driver: avail.idx may not run more than the
 * ring's size ahead, every head and `next` must be in range, a chain may not loop or outgrow the ring, device-
 * writable descriptors come after device-readable ones (§2.7.4.2), indirect descriptors only when negotiated
 * (refused here: pvdrv does not offer them), and a chain's bytes are bounded. A driver that breaks a rule gets a
 * {@link DeviceQueueError}; the device decides what that means (a real one would set DEVICE_NEEDS_RESET).
 *
 * Ring views are made once; taking a chain and putting a used element allocate nothing.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import {
  AVAIL_F_NO_INTERRUPT,
  availEntry,
  availEventOffset,
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  DESC_SIZE,
  needsEvent,
  RING,
  USED_F_NO_NOTIFY,
  usedElem,
  usedEventOffset,
} from "./split_ring.ts";

/** The driver broke the queue's protocol. */
export class DeviceQueueError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("virtqueue", msg);
  }
}

/** Where a queue's three areas are, as the driver programmed them (device addresses). */
export interface RingAddresses {
  /** Descriptor table. */
  desc: number;
  /** Avail ring ("driver area"). */
  driver: number;
  /** Used ring ("device area"). */
  device: number;
}

/** One descriptor chain, filled by {@link DeviceQueue.take} and {@link DeviceQueue.peek} (reused, not allocated). */
export class Chain {
  /** Head descriptor: the id the used element names. */
  head = 0;
  /** Descriptors in the chain. */
  count = 0;
  /** Guest addresses, lengths and directions of the descriptors 0 .. count-1. */
  readonly addr: number[] = [];
  /** Lengths. */
  readonly len: number[] = [];
  /** Device-writable. */
  readonly write: boolean[] = [];
  /** Bytes the device may read (the readable descriptors). */
  readable = 0;
  /** Bytes the device may write (the writable descriptors). */
  writable = 0;
}

/**
 * What a device does with a virtqueue, split ({@link DeviceQueue}, §2.7) or packed (`PackedDeviceQueue`, §2.8):
 * pvdrv's device models serve either through it.
 */
export interface DeviceRing {
  /** Queue index. */
  readonly index: number;
  /** Ring entries. */
  readonly size: number;
  /** Chains available and not taken. */
  available(): number;
  /** Read the chain `ahead` places past the next into `out` without taking it; false when there is none. */
  peek(out: Chain, ahead?: number): boolean;
  /** Take the next chain into `out`; false when there is none. */
  take(out: Chain): boolean;
  /** Take `n` chains already peeked. */
  skip(n: number): void;
  /** Give chain `id` back used with `len` bytes written; true when the driver wants an interrupt. */
  putUsed(id: number, len: number): boolean;
  /** With EVENT_IDX, ask to be notified at the next chain to take. */
  publishAvailEvent(): void;
  /** Ask for notifications or not. */
  setNotify(on: boolean): void;
  /** Move the used side on by `n` without real entries (a hostile device's knob). */
  jumpUsed(n: number): void;
}

/** Device memory as the device sees it: `len` bytes at guest address `addr` (throws when unmapped). */
export type GuestMemory = (addr: number, len: number) => Uint8Array;

/**
 * `len` bytes of ring area `what` at `addr`, which §2.7 (table "Virtqueue Part Alignment") says is aligned to
 * `align` (descriptor table 16, avail ring 2, used ring 4); refused unless it is, in guest and in host memory.
 */
function area(mem: GuestMemory, addr: number, len: number, align: number, what: string): Uint8Array {
  const b = mem(addr, len);
  if (addr % align !== 0 || b.byteOffset % Math.min(align, 4) !== 0) {
    throw new DeviceQueueError(
      `split ring ${what} at 0x${addr.toString(16)} is not ${align}-byte aligned (§2.7)`,
    );
  }
  return b;
}

// The rings' fields as indices of the views (split_ring.ts has their byte offsets): flags and idx halfwords, the
// first avail entry's halfword, the first used element's word.
const FLAGS = RING.FLAGS >> 1, IDX = RING.IDX >> 1, ENTRY = availEntry(0) >> 1, ELEM = usedElem(0) >> 2;

/** One split virtqueue, device side. */
export class DeviceQueue implements DeviceRing {
  readonly #desc: Uint32Array; // per descriptor: addr lo, addr hi, len, flags | next << 16
  readonly #avail: Uint16Array; // flags, idx, ring[size], used_event
  readonly #used32: Uint32Array; // flags | idx << 16, then (id, len) per element
  readonly #used16: Uint16Array; // same memory: [1] = idx, [2 + 4*size] = avail_event
  #seen = 0; // avail.idx as last read: chains up to it need no new read
  #last = 0;
  /** used.idx as published. */
  usedIdx = 0;

  /**
   * The queue `index` of `size` entries at `addrs` in `mem`; `eventIdx` when VIRTIO_F_EVENT_IDX was negotiated;
   * chains longer than `maxChainBytes` in all are refused.
   */
  constructor(
    readonly index: number,
    readonly size: number,
    mem: GuestMemory,
    addrs: RingAddresses,
    readonly eventIdx: boolean,
    readonly maxChainBytes: number = 0xffffffff,
  ) {
    if (!(size >= 1 && size <= 32768 && (size & (size - 1)) === 0)) {
      throw new DeviceQueueError(`queue ${index}: size ${size} is not a power of two in 1..32768`);
    }
    const d = area(mem, addrs.desc, DESC_SIZE * size, 16, "descriptor table");
    const a = area(mem, addrs.driver, usedEventOffset(size) + 2, 2, "avail ring");
    const u = area(mem, addrs.device, availEventOffset(size) + 2, 4, "used ring");
    this.#desc = new Uint32Array(d.buffer, d.byteOffset, 4 * size);
    this.#avail = new Uint16Array(a.buffer, a.byteOffset, 3 + size);
    this.#used32 = new Uint32Array(u.buffer, u.byteOffset, 1 + 2 * size);
    this.#used16 = new Uint16Array(u.buffer, u.byteOffset, 3 + 4 * size);
  }

  /** Next avail ring index to take (set when a device resumes at a ring base: nothing past it is seen yet). */
  get lastAvail(): number {
    return this.#last;
  }
  set lastAvail(v: number) {
    this.#last = v & 0xffff;
    this.#seen = this.#last;
  }

  /** The driver's avail.idx (an acquire: ring entries read after it are at least as new, §2.7.13). */
  availIdx(): number {
    return Atomics.load(this.#avail, IDX);
  }

  /** Chains the driver made available and the device has not taken (checked: at most the ring's size). */
  available(): number {
    const idx = this.availIdx(), n = (idx - this.#last) & 0xffff;
    if (n > this.size) {
      throw new DeviceQueueError(`queue ${this.index}: avail.idx is ${n} ahead of a ring of ${this.size}`);
    }
    this.#seen = idx;
    return n;
  }

  /**
   * Chains available from the next one, enough to say whether the one `ahead` places on is: avail.idx is read
   * again only past those seen.
   */
  #ready(ahead: number): number {
    const n = (this.#seen - this.#last) & 0xffff;
    return ahead < n && n <= this.size ? n : this.available();
  }

  /** Whether a chain `ahead` places past the next is available. */
  #has(ahead: number): boolean {
    return ahead < this.#ready(ahead);
  }

  /** Read the chain `ahead` places past the next one into `out`, without taking it; false when not available. */
  peek(out: Chain, ahead = 0): boolean {
    if (!this.#has(ahead)) return false;
    this.#walk(this.#avail[ENTRY + ((this.#last + ahead) & (this.size - 1))], out);
    return true;
  }

  /** Take the next available chain into `out`; false when there is none. */
  take(out: Chain): boolean {
    if (!this.peek(out)) return false;
    this.#last = (this.#last + 1) & 0xffff;
    return true;
  }

  /**
   * Read up to `max` available chains, from the one `ahead` places past the next, while each is a single
   * descriptor (the usual chain: one frame, or one buffer for one) that is device-writable when `write`, readable
   * otherwise: head, guest address and length of each into `heads`, `addrs` and `lens`. Nothing is taken
   * ({@link DeviceQueue.skip} takes them). Returns how many; it stops before any other chain, which
   * {@link DeviceQueue.peek} reads (and checks) whole. Each is checked as peek checks it.
   */
  peekSingles(
    heads: Uint16Array,
    addrs: Float64Array,
    lens: Uint32Array,
    max: number,
    write: boolean,
    ahead = 0,
  ): number {
    const n = this.#ready(ahead);
    const size = this.size, mask = size - 1, d = this.#desc, avail = this.#avail, cap = this.maxChainBytes;
    const want = write ? DESC_F_WRITE : 0, end = Math.min(max, n - ahead);
    let k = 0;
    for (; k < end; k++) {
      const head = avail[ENTRY + ((this.#last + ahead + k) & mask)];
      if (head >= size) break; // peek names the fault
      const o = head << 2, len = d[o + 2];
      if ((d[o + 3] & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE)) !== want || len > cap) break;
      heads[k] = head;
      addrs[k] = d[o] + d[o + 1] * 0x1_0000_0000;
      lens[k] = len;
    }
    return k;
  }

  /** Take `n` chains already read with {@link DeviceQueue.peek}. */
  skip(n: number): void {
    if (n > 0 && !this.#has(n - 1)) {
      throw new DeviceQueueError(`queue ${this.index}: ${n} chains are not available`);
    }
    this.#last = (this.#last + n) & 0xffff;
  }

  /**
   * Put a used element (`id`, `len` bytes written) and publish used.idx; true when the driver wants an interrupt
   * for it (§2.7.7: its used_event with EVENT_IDX, else the NO_INTERRUPT flag). `id` is not checked: a hostile
   * model may forge one.
   */
  putUsed(id: number, len: number): boolean {
    const old = this.usedIdx;
    this.addUsed(id, len);
    return this.wantsInterrupt(old);
  }

  /**
   * Put a used element and publish used.idx, leaving the interrupt to the batch: a device on another CPU than its
   * driver ends a batch with {@link DeviceQueue.flushUsed}, then asks {@link DeviceQueue.wantsInterrupt}.
   */
  addUsed(id: number, len: number): void {
    const u = this.#used32, e = ELEM + ((this.usedIdx & (this.size - 1)) << 1);
    u[e] = id;
    u[e + 1] = len;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.#used16[IDX] = this.usedIdx; // plain: x86 keeps stores in order, the element lands first
  }

  /**
   * Publish used.idx with a full fence, so the driver's used_event (or flags), read next by
   * {@link DeviceQueue.wantsInterrupt}, is not read ahead of it (§2.7.10: the driver's mirror of the avail side).
   */
  flushUsed(): void {
    Atomics.store(this.#used16, IDX, this.usedIdx);
  }

  /** Whether moving used.idx from `old` to where it is now calls for an interrupt. */
  wantsInterrupt(old: number): boolean {
    const a = this.#avail;
    if (this.eventIdx) return needsEvent(a[2 + this.size], this.usedIdx, old);
    return (a[FLAGS] & AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** With EVENT_IDX, tell the driver where to notify next: avail_event = the next index to take (§2.7.10). */
  publishAvailEvent(): void {
    if (this.eventIdx) Atomics.store(this.#used16, 2 + 4 * this.size, this.#last);
  }

  /** used.idx as the driver reads it from the ring (where a restarted device resumes publishing). */
  publishedUsed(): number {
    return Atomics.load(this.#used16, IDX);
  }

  /**
   * Ask the driver for notifications or not: without EVENT_IDX the used ring's NO_NOTIFY flag (§2.7.7); with it,
   * `on` publishes avail_event (§2.7.10) and `off` leaves it behind, so the driver stops notifying.
   */
  setNotify(on: boolean): void {
    if (this.eventIdx) {
      if (on) this.publishAvailEvent();
      return;
    }
    Atomics.store(this.#used16, FLAGS, on ? 0 : USED_F_NO_NOTIFY);
  }

  /** Move used.idx by `n` without elements (a hostile device's knob). */
  jumpUsed(n: number): void {
    this.usedIdx = (this.usedIdx + n) & 0xffff;
    this.#used16[IDX] = this.usedIdx;
  }

  #walk(head: number, out: Chain): void {
    const q = this.index, size = this.size, d = this.#desc, max = this.maxChainBytes;
    if (head >= size) {
      throw new DeviceQueueError(`queue ${q}: available head ${head} out of range (size ${size})`);
    }
    let i = head, k = 0, readable = 0, writable = 0, sawWrite = false;
    for (;;) {
      if (k === size) throw new DeviceQueueError(`queue ${q}: the chain at ${head} loops`);
      const o = i << 2, len = d[o + 2], fn = d[o + 3], flags = fn & 0xffff;
      if (flags & DESC_F_INDIRECT) {
        throw new DeviceQueueError(`queue ${q}: indirect descriptor ${i} without VIRTIO_F_INDIRECT_DESC`);
      }
      const write = (flags & DESC_F_WRITE) !== 0;
      if (write) writable += len, sawWrite = true;
      else if (sawWrite) {
        throw new DeviceQueueError(`queue ${q}: readable descriptor ${i} after a writable one (§2.7.4.2)`);
      } else readable += len;
      out.addr[k] = d[o] + d[o + 1] * 0x1_0000_0000;
      out.len[k] = len;
      out.write[k] = write;
      k++;
      if (readable + writable > max) {
        throw new DeviceQueueError(`queue ${q}: the chain at ${head} holds more than ${max} bytes`);
      }
      if (!(flags & DESC_F_NEXT)) break;
      i = fn >>> 16;
      if (i >= size) {
        throw new DeviceQueueError(`queue ${q}: descriptor next ${i} out of range (size ${size})`);
      }
    }
    out.head = head;
    out.count = k;
    out.readable = readable;
    out.writable = writable;
  }
}
