/**
 * Packet buffers: the NIC class's buffers, on the class-agnostic buffer pool (drivers/core/buffer_pool.ts), with
 * a frame length and the checksum fields a NIC reads and writes.
 * @module
 */
import { BufferPool, PoolBuffer, type PoolMemory } from "../core/buffer_pool.ts";

export type { PoolMemory } from "../core/buffer_pool.ts";

/** One reusable frame buffer. */
export class PacketBuffer extends PoolBuffer {
  /** The pool the buffer belongs to. */
  declare readonly pool: PacketPool;
  /** Frame length in bytes. */
  length = 0;
  /** Receive flags (RX_CSUM_*), or on send: 0. */
  flags = 0;
  /** On send with checksum offload: where checksumming starts (0: no offload). */
  csumStart = 0;
  /** On send with checksum offload: where the checksum goes, relative to csumStart. */
  csumOffset = 0;

  /** A taken buffer starts empty, with no offload. */
  override reset(): void {
    this.length = 0;
    this.flags = 0;
    this.csumStart = 0;
    this.csumOffset = 0;
  }
}

/** A pool of {@link PacketBuffer}s (misuse is a "nic" error). */
export class PacketPool extends BufferPool<PacketBuffer> {
  /** `count` slots of `slotSize` bytes with `headroom` bytes before each frame, in `region`. */
  constructor(name: string, region: PoolMemory, count: number, slotSize: number, headroom: number) {
    super(
      name,
      region,
      count,
      slotSize,
      headroom,
      (pool, i, off, addr, data) => new PacketBuffer(pool, i, off, addr, data),
      "nic",
    );
  }
}
