/**
 * A guest's virtio-net driver reduced to its rings, for hostile tests of pvdrv's vhost-user backend: it lays out
 * one queue pair in the in-process front end's memory (tests/models/vhost_user_frontend.ts), posts TX frames and RX
 * buffers the way a driver does, reads what the device used — and writes anything a malicious driver could
 * (descriptor addresses, lengths, flags and links; avail indices; headers) through the same layout helpers.
 * @module
 */
import {
  availEntry,
  DESC,
  DESC_F_NEXT,
  DESC_F_WRITE,
  DESC_SIZE,
  RING,
  usedElem,
  usedEventOffset,
} from "../../drivers/virtio/split_ring.ts";
import { GUEST_BASE, type VhostUserFrontend } from "./vhost_user_frontend.ts";

/** Ring size of both vrings. */
export const Q = 64;
/** Guest addresses: the RX and TX rings, then 2 KiB buffers (RX slots 0..Q-1, TX slots Q..2Q-1). */
export const LAYOUT = {
  rx: { desc: GUEST_BASE, driver: GUEST_BASE + 0x400, device: GUEST_BASE + 0x800 },
  tx: { desc: GUEST_BASE + 0x1000, driver: GUEST_BASE + 0x1400, device: GUEST_BASE + 0x1800 },
  buffers: GUEST_BASE + 0x10000,
} as const;
const BUF = 2048;

/** One vring as the driver sees it. */
export class DriverRing {
  readonly dv: DataView;
  availIdx = 0;
  lastUsed = 0;
  readonly free: number[] = [];

  constructor(
    readonly fe: VhostUserFrontend,
    readonly addr: { desc: number; driver: number; device: number },
  ) {
    this.dv = new DataView(fe.mem.bytes.buffer, fe.mem.bytes.byteOffset, fe.mem.bytes.byteLength);
    for (let i = Q - 1; i >= 0; i--) this.free.push(i);
  }

  #o(guest: number): number {
    return guest - GUEST_BASE;
  }

  /** Write descriptor `i`. */
  desc(i: number, addr: number, len: number, flags: number, next: number): void {
    const o = this.#o(this.addr.desc) + DESC_SIZE * (i & (Q - 1));
    this.dv.setUint32(o + DESC.ADDR, addr % 0x1_0000_0000, true);
    this.dv.setUint32(o + DESC.ADDR + 4, Math.floor(addr / 0x1_0000_0000), true);
    this.dv.setUint32(o + DESC.LEN, len >>> 0, true);
    this.dv.setUint16(o + DESC.FLAGS, flags, true);
    this.dv.setUint16(o + DESC.NEXT, next & 0xffff, true);
  }

  /** Make `head` available and publish avail.idx (optionally moved by `jump` more). */
  publish(head: number, jump = 0): void {
    this.dv.setUint16(this.#o(this.addr.driver) + availEntry(this.availIdx & (Q - 1)), head & 0xffff, true);
    this.availIdx = (this.availIdx + 1 + jump) & 0xffff;
    this.dv.setUint16(this.#o(this.addr.driver) + RING.IDX, this.availIdx, true);
  }

  /** Make heads `first`, `first + 1`, … (`n` of them, mod the ring) available with one avail.idx store. */
  publishRun(first: number, n: number): void {
    const a = this.#avail16 ??= new Uint16Array(
      this.fe.mem.bytes.buffer,
      this.fe.mem.bytes.byteOffset + this.#o(this.addr.driver),
      3 + Q,
    );
    let idx = this.availIdx;
    for (let k = 0; k < n; k++, idx = (idx + 1) & 0xffff) a[2 + (idx & (Q - 1))] = (first + k) & (Q - 1);
    this.availIdx = idx;
    Atomics.store(a, 1, idx);
  }
  #avail16: Uint16Array | null = null;

  /** Set used_event (EVENT_IDX) to `v`. */
  usedEvent(v: number): void {
    this.dv.setUint16(this.#o(this.addr.driver) + usedEventOffset(Q), v & 0xffff, true);
  }

  /** The used elements published since the last call: [id, len] pairs. */
  used(): [number, number][] {
    const out: [number, number][] = [];
    const idx = this.dv.getUint16(this.#o(this.addr.device) + RING.IDX, true);
    while (this.lastUsed !== idx) {
      const o = this.#o(this.addr.device) + usedElem(this.lastUsed & (Q - 1));
      out.push([this.dv.getUint32(o, true), this.dv.getUint32(o + 4, true)]);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  /** Guest bytes at a guest address. */
  bytes(addr: number, len: number): Uint8Array {
    return this.fe.mem.bytes.subarray(addr - GUEST_BASE, addr - GUEST_BASE + len);
  }
}

/** Where queue pair `pair`'s rings and buffers are (pair 0 at {@link LAYOUT}, each next one 512 KiB on). */
function layoutOf(pair: number): typeof LAYOUT {
  const d = pair * 0x80000,
    at = (a: { desc: number; driver: number; device: number }) => ({
      desc: a.desc + d,
      driver: a.driver + d,
      device: a.device + d,
    });
  return { rx: at(LAYOUT.rx), tx: at(LAYOUT.tx), buffers: LAYOUT.buffers + d } as unknown as typeof LAYOUT;
}

/** The driver of one queue pair: an RX and a TX ring with 2 KiB buffers, and a header length (12: VERSION_1). */
export class HostileGuest {
  readonly rx: DriverRing;
  readonly tx: DriverRing;
  readonly #layout: typeof LAYOUT;

  constructor(readonly fe: VhostUserFrontend, readonly hdr = 12, readonly pair = 0) {
    this.#layout = layoutOf(pair);
    this.rx = new DriverRing(fe, this.#layout.rx);
    this.tx = new DriverRing(fe, this.#layout.tx);
  }

  /** The guest address of pair 0's RX (slot < Q) or TX (slot >= Q) buffer `slot`. */
  static buffer(slot: number): number {
    return LAYOUT.buffers + slot * BUF;
  }

  /** This pair's buffer `slot`. */
  buffer(slot: number): number {
    return this.#layout.buffers + slot * BUF;
  }

  /** Start both rings on the backend (after the memory table): vrings 2·pair and 2·pair + 1. */
  start(): void {
    this.fe.startRing(2 * this.pair, Q, this.#layout.rx);
    this.fe.startRing(2 * this.pair + 1, Q, this.#layout.tx);
  }

  /** Post an RX buffer of `len` bytes (device-writable); false when none is free. */
  postRx(len = BUF): boolean {
    const h = this.rx.free.pop();
    if (h === undefined) return false;
    this.rx.desc(h, this.buffer(h), len, DESC_F_WRITE, 0);
    this.rx.publish(h);
    return true;
  }

  /** Send `frame` with a zero header, in one descriptor or split (header apart) in two; false when full. */
  postTx(frame: Uint8Array, split = false): boolean {
    if (this.tx.free.length < 2) return false;
    const h = this.tx.free.pop()!, at = this.buffer(Q + h);
    const b = this.tx.bytes(at, this.hdr + frame.length);
    b.fill(0, 0, this.hdr);
    b.set(frame, this.hdr);
    if (split) {
      const t = this.tx.free.pop()!;
      this.tx.desc(h, at, this.hdr, DESC_F_NEXT, t);
      this.tx.desc(t, at + this.hdr, frame.length, 0, 0);
      this.#chains.set(h, [h, t]);
    } else {
      this.tx.desc(h, at, this.hdr + frame.length, 0, 0);
      this.#chains.set(h, [h]);
    }
    this.tx.publish(h);
    return true;
  }
  readonly #chains = new Map<number, number[]>();

  /** Take back TX descriptors the device used; returns how many chains. */
  reclaimTx(): number {
    const u = this.tx.used();
    for (const [id] of u) {
      const c = this.#chains.get(id);
      if (!c) throw new Error(`the device used TX id ${id}, not in flight`);
      this.#chains.delete(id);
      this.tx.free.push(...c);
    }
    return u.length;
  }

  /** Frames the device wrote into RX buffers (one buffer each, num_buffers 1), buffers given back to the free list. */
  receive(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const [id, len] of this.rx.used()) {
      if (id >= Q) throw new Error(`the device used RX id ${id}`);
      this.rx.free.push(id);
      if (len < this.hdr) throw new Error(`RX used length ${len} without a header`);
      out.push(this.rx.bytes(this.buffer(id) + this.hdr, len - this.hdr).slice());
    }
    return out;
  }
}
