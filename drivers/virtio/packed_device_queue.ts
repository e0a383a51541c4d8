/**
 * The packed virtqueue (virtio 1.2 §2.8), device side, behind the same interface as the split one
 * ({@link DeviceRing}): pvdrv's device models serve a driver that negotiated VIRTIO_F_RING_PACKED with it.
 *
 * It never trusts the driver: areas must be aligned as §2.8.10.1 says, a chain may not outgrow the ring or the
 * byte bound, device-writable descriptors come after device-readable ones, indirect descriptors are refused (not
 * offered), a buffer id may not be reused while the device holds it, and no more slots are taken than the device
 * has given back. Cursors are `lin` values (slot and wrap counter in one number, packed_ring.ts).
 * @module
 */
import {
  Chain,
  DeviceQueueError,
  type DeviceRing,
  type GuestMemory,
  type RingAddresses,
} from "./device_queue.ts";
import {
  advance,
  EVENT,
  EVENT_FLAGS,
  isAvail,
  offWrapOf,
  PACKED_DESC_SIZE,
  passesEvent,
  PDESC,
  PDESC_F,
  usedFlags,
} from "./packed_ring.ts";

// A descriptor's fields (PDESC) as indices of the ring's views, from slot s's first word (s << 2) or halfword
// (s << 3): addr's low word (then its high one), len; id and flags.
const ADDR32 = PDESC.ADDR >> 2, LEN32 = PDESC.LEN >> 2;
const ID16 = PDESC.ID >> 1, FLAGS16 = PDESC.FLAGS >> 1;

function typed<T>(mem: GuestMemory, addr: number, len: number, what: string, make: (b: Uint8Array) => T): T {
  const b = mem(addr, len);
  if (addr % 4 !== 0 || b.byteOffset % 4 !== 0) {
    throw new DeviceQueueError(`packed ring ${what} at 0x${addr.toString(16)} is not aligned (§2.8.10.1)`);
  }
  return make(b);
}

/** One packed virtqueue, device side. */
export class PackedDeviceQueue implements DeviceRing {
  readonly #d32: Uint32Array; // per slot: addr lo, addr hi, len, id | flags << 16
  readonly #d16: Uint16Array;
  readonly #driverEv: Uint16Array; // the driver's area: off_wrap, flags (interrupt suppression)
  readonly #deviceEv: Uint16Array; // the device's area: off_wrap, flags (notification suppression)
  readonly #heldLen = new Uint16Array(65536); // slots of each buffer id the device holds (0: not held)
  #held = 0; // slots taken and not yet given back used
  /** Cursor of the next slot to take. */
  lastAvail = 0;
  /** Cursor of the next slot to write used. */
  usedIdx = 0;

  /**
   * The queue `index` of `size` slots at `addrs` in `mem`; `eventIdx` when VIRTIO_F_EVENT_IDX was negotiated;
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
    const ring = typed(mem, addrs.desc, PACKED_DESC_SIZE * size, "descriptor ring", (b) => b);
    if (addrs.desc % 16 !== 0) {
      throw new DeviceQueueError(`queue ${index}: descriptor ring not 16-byte aligned`);
    }
    this.#d32 = new Uint32Array(ring.buffer, ring.byteOffset, 4 * size);
    this.#d16 = new Uint16Array(ring.buffer, ring.byteOffset, 8 * size);
    const u16 = (b: Uint8Array) => new Uint16Array(b.buffer, b.byteOffset, 2);
    this.#driverEv = typed(mem, addrs.driver, 4, "driver area", u16);
    this.#deviceEv = typed(mem, addrs.device, 4, "device area", u16);
  }

  #flags(lin: number): number {
    return Atomics.load(this.#d16, ((lin & (this.size - 1)) << 3) + FLAGS16);
  }

  /** Read the chain at cursor `lin` into `out` (checked; `before` slots already read ahead of it); the cursor past it. */
  #walk(lin: number, out: Chain, before = 0): number {
    const q = this.index, size = this.size, d32 = this.#d32, d16 = this.#d16;
    out.count = 0;
    out.readable = 0;
    out.writable = 0;
    let sawWrite = false;
    for (;;) {
      if (this.#held + before + out.count >= size) {
        throw new DeviceQueueError(
          `queue ${q}: a chain runs past the ${size - this.#held - before} free slots`,
        );
      }
      const s = lin & (size - 1), flags = this.#flags(lin), len = d32[(s << 2) + LEN32];
      if (flags & PDESC_F.INDIRECT) {
        throw new DeviceQueueError(
          `queue ${q}: indirect descriptor at slot ${s} without VIRTIO_F_INDIRECT_DESC`,
        );
      }
      const write = (flags & PDESC_F.WRITE) !== 0;
      if (!write && sawWrite) {
        throw new DeviceQueueError(
          `queue ${q}: readable descriptor at slot ${s} after a writable one (§2.8.6)`,
        );
      }
      const k = out.count++;
      out.addr[k] = d32[(s << 2) + ADDR32] + d32[(s << 2) + ADDR32 + 1] * 0x1_0000_0000;
      out.len[k] = len;
      out.write[k] = write;
      if (write) out.writable += len, sawWrite = true;
      else out.readable += len;
      if (out.readable + out.writable > this.maxChainBytes) {
        throw new DeviceQueueError(`queue ${q}: a chain holds more than ${this.maxChainBytes} bytes`);
      }
      lin = advance(lin, 1, size);
      if (!(flags & PDESC_F.NEXT)) {
        out.head = d16[(s << 3) + ID16]; // the buffer id: in the last descriptor (§2.8.6)
        if (this.#heldLen[out.head] !== 0) {
          throw new DeviceQueueError(
            `queue ${q}: buffer id ${out.head} made available while the device holds it`,
          );
        }
        return lin;
      }
    }
  }

  /** Chains the driver made available and the device has not taken. */
  available(): number {
    const c = this.#scratch;
    let n = 0, lin = this.lastAvail, slots = 0;
    while (this.#held + slots < this.size && isAvail(this.#flags(lin), lin, this.size)) {
      lin = this.#walk(lin, c, slots);
      slots += c.count;
      n++;
    }
    return n;
  }
  readonly #scratch = new Chain();

  /** Read the chain `ahead` places past the next one into `out`, without taking it; false when not available. */
  peek(out: Chain, ahead = 0): boolean {
    let lin = this.lastAvail, slots = 0;
    for (let k = 0; k <= ahead; k++) {
      if (this.#held + slots >= this.size || !isAvail(this.#flags(lin), lin, this.size)) return false;
      lin = this.#walk(lin, out, slots);
      slots += out.count;
    }
    return true;
  }

  /** Take the next available chain into `out`; false when there is none. */
  take(out: Chain): boolean {
    if (this.#held >= this.size || !isAvail(this.#flags(this.lastAvail), this.lastAvail, this.size)) {
      return false;
    }
    const next = this.#walk(this.lastAvail, out);
    this.#hold(out);
    this.lastAvail = next;
    return true;
  }

  #hold(c: Chain): void {
    this.#heldLen[c.head] = c.count;
    this.#held += c.count;
  }

  /** Take `n` chains already read with {@link PackedDeviceQueue.peek}. */
  skip(n: number): void {
    const c = this.#scratch;
    for (let k = 0; k < n; k++) {
      if (!this.take(c)) throw new DeviceQueueError(`queue ${this.index}: ${n} chains are not available`);
    }
  }

  /**
   * Write a used descriptor (`id`, `len` bytes written) at the next used slot, its flags last; true when the
   * driver wants an interrupt for it. `id` is not checked: a hostile model may forge one (it then covers one slot).
   */
  putUsed(id: number, len: number): boolean {
    const old = this.usedIdx, s = old & (this.size - 1), slots = this.#heldLen[id & 0xffff] || 1;
    this.#d32[(s << 2) + LEN32] = len;
    this.#d16[(s << 3) + ID16] = id;
    Atomics.store(this.#d16, (s << 3) + FLAGS16, usedFlags(old, this.size) | (len ? PDESC_F.WRITE : 0));
    if (this.#heldLen[id & 0xffff]) this.#held -= slots;
    this.#heldLen[id & 0xffff] = 0;
    this.usedIdx = advance(old, Math.min(slots, this.size), this.size);
    return this.wantsInterrupt(old);
  }

  /** Whether moving the used cursor from `old` to where it is now calls for an interrupt (§2.8.10). */
  wantsInterrupt(old: number): boolean {
    const flags = Atomics.load(this.#driverEv, 1);
    if (flags === EVENT_FLAGS.DISABLE) return false;
    if (flags === EVENT_FLAGS.DESC && this.eventIdx) {
      return passesEvent(this.#driverEv[0], this.usedIdx, old, this.size);
    }
    return true;
  }

  /** With EVENT_IDX, ask to be notified when the driver makes the next slot to take available. */
  publishAvailEvent(): void {
    if (!this.eventIdx) return;
    this.#deviceEv[EVENT.OFF_WRAP >> 1] = offWrapOf(this.lastAvail, this.size);
    Atomics.store(this.#deviceEv, EVENT.FLAGS >> 1, EVENT_FLAGS.DESC);
  }

  /** Ask the driver for notifications (at the next slot with EVENT_IDX, else for every buffer) or not. */
  setNotify(on: boolean): void {
    if (on && this.eventIdx) this.publishAvailEvent();
    else Atomics.store(this.#deviceEv, EVENT.FLAGS >> 1, on ? EVENT_FLAGS.ENABLE : EVENT_FLAGS.DISABLE);
  }

  /**
   * Mark up to `n` (at most a ring's worth) slots used, all with the id the next one holds (a hostile device's
   * knob: a packed ring has no index to run ahead, so the lie is an id returned again).
   */
  jumpUsed(n: number): void {
    const id = this.#d16[((this.usedIdx & (this.size - 1)) << 3) + ID16];
    for (let k = 0; k < Math.min(n, this.size); k++) this.putUsed(id, 0);
  }
}
