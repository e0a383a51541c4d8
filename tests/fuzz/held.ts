/** The fuzzed application's side, shared by the driver targets: test frames and the buffers it holds. */
import { MIN_TEST_FRAME, writeFrame } from "../../apps/frames.ts";
import type { Nic, PacketBuffer } from "../../drivers/net/nic.ts";
import type { PacketBatch } from "../../drivers/net/packet_batch.ts";
import { type Rng, Silent } from "./oracle.ts";

/** Destination MAC of the fuzzer's test frames. */
export const DST = new Uint8Array([0x52, 0x54, 0, 0, 0, 2]);
/** Source MAC of the fuzzer's test frames. */
export const SRC = new Uint8Array([0x52, 0x54, 0, 0, 0, 3]);

/** A test frame of `len` bytes numbered `seq`. */
export function frameBytes(len: number, seq: number): Uint8Array {
  const f = new Uint8Array(len);
  writeFrame(f, len, seq, DST, SRC);
  return f;
}

/** Whether `a` and `b` agree on their first `len` bytes. */
export function same(a: Uint8Array, b: Uint8Array, len: number): boolean {
  if (a.length < len || b.length < len) return false;
  for (let i = 0; i < len; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Buffers the fuzzed application holds, in order; received ones are checked as they are handed out. */
export class Held {
  /** Every held buffer (received and allocated for TX). */
  readonly list: PacketBuffer[] = [];
  readonly #received = new Set<PacketBuffer>();
  /** A frame `receiveBatch` handed out: never one already held, never a length outside 14..maxFrame. */
  accept(b: PacketBuffer, maxFrame: number): void {
    if (this.#received.has(b)) throw new Silent(`buffer ${b.pool.name}/${b.index} handed out twice`);
    if (b.length < 14 || b.length > maxFrame) throw new Silent(`frame length ${b.length} handed out`);
    this.#received.add(b);
    this.list.push(b);
  }
  /** Give the first `k` held buffers back to `nic`. */
  release(nic: Nic, k: number): void {
    const give = this.list.splice(0, k);
    for (const b of give) this.#received.delete(b);
    nic.release(give, give.length);
  }
  /** Give back the frames of `batch` (accepted as its objects) with releaseBatch. */
  releaseBatch(nic: Nic, batch: PacketBatch): void {
    const ids = new Set<number>();
    for (let k = 0; k < batch.count; k++) ids.add(batch.ids[k]);
    const pool = batch.pool;
    for (let i = this.list.length - 1; i >= 0; i--) {
      const b = this.list[i];
      if (b.pool === pool && ids.has(b.index)) {
        this.list.splice(i, 1);
        this.#received.delete(b);
      }
    }
    nic.releaseBatch(batch);
  }
  /** Allocate up to `max` TX buffers from `nic` and fill them with frames numbered from `seq`; returns how many. */
  fillTx(nic: Nic, bufs: PacketBuffer[], max: number, rng: Rng, seq: number): number {
    const n = nic.allocTx(bufs, max);
    for (let i = 0; i < n; i++) {
      const len = rng.int(MIN_TEST_FRAME, nic.maxFrame);
      writeFrame(bufs[i].data, len, seq + i, DST, nic.mac);
      bufs[i].length = len;
      this.list.push(bufs[i]); // the application's until the driver takes it
    }
    return n;
  }
  /**
   * Send the last `n` held buffers: those the driver took leave the list. A send that throws (a queue that broke
   * under it) may have taken some: the pool says which are still the application's.
   */
  send(n: number, send: () => number): number {
    const batch = this.list.splice(this.list.length - n, n);
    try {
      const sent = send();
      for (let i = sent; i < n; i++) this.list.push(batch[i]);
      return sent;
    } catch (e) {
      for (const b of batch) if (b.pool.owner(b) === "app") this.list.push(b);
      throw e;
    }
  }
}
