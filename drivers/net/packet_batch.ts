/**
 * Frames as buffer indices in typed arrays: the receive and send paths that touch no per-buffer object. A NIC's
 * `receiveInto` fills a batch with the indices, lengths and flags of up to `capacity` frames, all from one
 * receive pool, and `releaseBatch` hands them all back (a ring that supports it takes them straight back, as
 * `release` does with buffer objects); `allocInto` takes empty TX buffers into a batch and `sendFrom` sends them.
 * The ownership rules are the buffer objects': every index coming back is checked against the pool's owner
 * record, and a batch held across a close or reconnect goes back to its retired pool.
 * @module
 */
import type { PacketBuffer, PacketPool } from "./packet_pool.ts";

/** Frames of one pool, by buffer index: made once, filled and emptied per call. */
export class PacketBatch {
  /** Buffer indices into {@link PacketBatch.pool}'s buffers, frames `[0, count)`. */
  readonly ids: Uint16Array;
  /** Frame lengths in bytes (without any device header); on send, set by the application. */
  readonly lengths: Uint32Array;
  /** Receive flags (RX_CSUM_*), as {@link PacketBuffer.flags}; 0 on send. */
  readonly flags: Uint8Array;
  /** Frames the batch holds (`ids[0..count)`): the application's until released or sent. */
  count = 0;
  #pool: PacketPool | null = null;
  #queue = 0;

  /** A batch of up to `capacity` frames (1..65536). */
  constructor(readonly capacity: number = 256) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 65536) {
      throw new RangeError(`batch capacity ${capacity} outside 1..65536`);
    }
    this.ids = new Uint16Array(capacity);
    this.lengths = new Uint32Array(capacity);
    this.flags = new Uint8Array(capacity);
  }

  /** The pool the ids index (set by the NIC that filled the batch; null before). */
  get pool(): PacketPool | null {
    return this.#pool;
  }

  /** The queue the frames were received on or are to be sent on. */
  get queue(): number {
    return this.#queue;
  }

  /** The NIC records which pool and queue the frames it put in `ids[0..count)` come from. */
  bind(pool: PacketPool, queue: number): void {
    this.#pool = pool;
    this.#queue = queue;
  }

  /** The pool's memory: frame `k` is `bytes[offset(k), offset(k) + lengths[k])`. */
  get bytes(): Uint8Array<ArrayBuffer> {
    if (!this.#pool) throw new RangeError("the batch has not received frames yet");
    return this.#pool.bytes;
  }

  /** Where frame `k` starts in {@link PacketBatch.bytes}. */
  offset(k: number): number {
    const p = this.#held(k);
    return this.ids[k] * p.slotSize + p.headroom;
  }

  /**
   * Frame `k` as its buffer object, `length` and `flags` set (to hand one frame to code that takes buffers).
   * It is still the batch's: {@link PacketBatch.count} frames go back together.
   */
  buffer(k: number): PacketBuffer {
    const b = this.#held(k).buffers[this.ids[k]];
    b.length = this.lengths[k];
    b.flags = this.flags[k];
    return b;
  }

  #held(k: number): PacketPool {
    if (!(k >= 0 && k < this.count) || !this.#pool) {
      throw new RangeError(`frame ${k} is not in the batch (it holds ${this.count})`);
    }
    return this.#pool!;
  }
}
