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
  DESC,
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

function view(mem: GuestMemory, addr: number, len: number): DataView {
  const b = mem(addr, len);
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** One split virtqueue, device side. */
export class DeviceQueue implements DeviceRing {
  readonly #desc: DataView;
  readonly #avail: DataView;
  readonly #used: DataView;
  /** Next avail ring index to take. */
  lastAvail = 0;
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
    this.#desc = view(mem, addrs.desc, DESC_SIZE * size);
    this.#avail = view(mem, addrs.driver, usedEventOffset(size) + 2);
    this.#used = view(mem, addrs.device, availEventOffset(size) + 2);
  }

  /** The driver's avail.idx. */
  availIdx(): number {
    return this.#avail.getUint16(RING.IDX, true);
  }

  /** Chains the driver made available and the device has not taken (checked: at most the ring's size). */
  available(): number {
    const n = (this.availIdx() - this.lastAvail) & 0xffff;
    if (n > this.size) {
      throw new DeviceQueueError(`queue ${this.index}: avail.idx is ${n} ahead of a ring of ${this.size}`);
    }
    return n;
  }

  /** Read the chain `ahead` places past the next one into `out`, without taking it; false when not available. */
  peek(out: Chain, ahead = 0): boolean {
    if (ahead >= this.available()) return false;
    const head = this.#avail.getUint16(availEntry((this.lastAvail + ahead) & (this.size - 1)), true);
    this.#walk(head, out);
    return true;
  }

  /** Take the next available chain into `out`; false when there is none. */
  take(out: Chain): boolean {
    if (!this.peek(out)) return false;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return true;
  }

  /** Take `n` chains already read with {@link DeviceQueue.peek}. */
  skip(n: number): void {
    if (n > this.available()) {
      throw new DeviceQueueError(`queue ${this.index}: ${n} chains are not available`);
    }
    this.lastAvail = (this.lastAvail + n) & 0xffff;
  }

  /**
   * Put a used element (`id`, `len` bytes written) and publish used.idx; true when the driver wants an interrupt
   * for it (§2.7.7: its used_event with EVENT_IDX, else the NO_INTERRUPT flag). `id` is not checked: a hostile
   * model may forge one.
   */
  putUsed(id: number, len: number): boolean {
    const u = this.#used, at = usedElem(this.usedIdx & (this.size - 1)), old = this.usedIdx;
    u.setUint32(at, id, true);
    u.setUint32(at + 4, len, true);
    this.usedIdx = (old + 1) & 0xffff;
    u.setUint16(RING.IDX, this.usedIdx, true);
    return this.wantsInterrupt(old);
  }

  /** Whether moving used.idx from `old` to where it is now calls for an interrupt. */
  wantsInterrupt(old: number): boolean {
    const a = this.#avail;
    if (this.eventIdx) return needsEvent(a.getUint16(usedEventOffset(this.size), true), this.usedIdx, old);
    return (a.getUint16(RING.FLAGS, true) & AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** With EVENT_IDX, tell the driver where to notify next: avail_event = the next index to take (§2.7.10). */
  publishAvailEvent(): void {
    if (this.eventIdx) this.#used.setUint16(availEventOffset(this.size), this.lastAvail, true);
  }

  /** used.idx as the driver reads it from the ring (where a restarted device resumes publishing). */
  publishedUsed(): number {
    return this.#used.getUint16(RING.IDX, true);
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
    this.#used.setUint16(RING.FLAGS, on ? 0 : USED_F_NO_NOTIFY, true);
  }

  /** Move used.idx by `n` without elements (a hostile device's knob). */
  jumpUsed(n: number): void {
    this.usedIdx = (this.usedIdx + n) & 0xffff;
    this.#used.setUint16(RING.IDX, this.usedIdx, true);
  }

  #walk(head: number, out: Chain): void {
    const q = this.index, size = this.size, d = this.#desc;
    if (head >= size) {
      throw new DeviceQueueError(`queue ${q}: available head ${head} out of range (size ${size})`);
    }
    out.head = head;
    out.count = 0;
    out.readable = 0;
    out.writable = 0;
    let i = head, sawWrite = false;
    for (;;) {
      if (out.count === size) throw new DeviceQueueError(`queue ${q}: the chain at ${head} loops`);
      const o = DESC_SIZE * i,
        flags = d.getUint16(o + DESC.FLAGS, true),
        len = d.getUint32(o + DESC.LEN, true);
      if (flags & DESC_F_INDIRECT) {
        throw new DeviceQueueError(`queue ${q}: indirect descriptor ${i} without VIRTIO_F_INDIRECT_DESC`);
      }
      const write = (flags & DESC_F_WRITE) !== 0;
      if (!write && sawWrite) {
        throw new DeviceQueueError(`queue ${q}: readable descriptor ${i} after a writable one (§2.7.4.2)`);
      }
      const k = out.count++;
      out.addr[k] = d.getUint32(o + DESC.ADDR, true) + d.getUint32(o + DESC.ADDR + 4, true) * 0x1_0000_0000;
      out.len[k] = len;
      out.write[k] = write;
      if (write) out.writable += len, sawWrite = true;
      else out.readable += len;
      if (out.readable + out.writable > this.maxChainBytes) {
        throw new DeviceQueueError(
          `queue ${q}: the chain at ${head} holds more than ${this.maxChainBytes} bytes`,
        );
      }
      if (!(flags & DESC_F_NEXT)) return;
      i = d.getUint16(o + DESC.NEXT, true);
      if (i >= size) {
        throw new DeviceQueueError(`queue ${q}: descriptor next ${i} out of range (size ${size})`);
      }
    }
  }
}
