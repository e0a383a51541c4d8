/**
 * What a driver does with a virtqueue, whatever its format: the split ring (virtio 1.2 §2.7, virtqueue.ts) and
 * the packed ring (§2.8, packed_queue.ts) both implement {@link Virtqueue}, and a broken one says why with a
 * {@link VirtqueueError}.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { QueueAddresses } from "./transport.ts";
import type { BufferPool, PoolBuffer } from "../core/buffer_pool.ts";

/** The queue is unusable: the device broke the protocol. */
export class VirtqueueError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("virtqueue", msg);
  }
}

/** One buffer of a chain. */
export interface Segment {
  /** Device address. */
  addr: number;
  /** Length in bytes. */
  len: number;
  /** Device-writable. */
  write: boolean;
}

/**
 * What a driver does with a virtqueue, split (§2.7, `SplitQueue`) or packed (§2.8, `PackedQueue`): the
 * virtio-net driver and its control queue run on either.
 */
export interface Virtqueue {
  /** Queue index on the device. */
  readonly index: number;
  /** Ring entries. */
  readonly size: number;
  /** The ring format. */
  readonly format: "split" | "packed";
  /** Device addresses of the ring's three areas. */
  readonly addresses: QueueAddresses;
  /** Free descriptors. */
  readonly freeCount: number;
  /** Buffers with the device. */
  readonly inFlight: number;
  /** The error that broke the queue, if any. */
  readonly broken: VirtqueueError | null;
  /** Length the device reported for the last entry popped one at a time. */
  lastLen: number;
  /** Break the queue with `msg` and throw. */
  fail(msg: string): never;
  /** Bind descriptor ids to the buffers of `pool` for good (see `SplitQueue.bindPool`). */
  bindPool(pool: BufferPool<PoolBuffer>, len: number, write: boolean): void;
  /** Bound queue: queue buffers `ids[0..n)`, each `lens[k]` bytes (device-readable: TX). */
  postFrames(ids: Uint16Array, lens: Uint32Array, n: number): void;
  /** Bound queue: queue buffers `ids[0..n)` whole. */
  postSlots(ids: Uint16Array, n: number): void;
  /** Bound queue: pop one used buffer (after {@link Virtqueue.pending}); its index. */
  popSlot(): number;
  /** Bound queue: pop up to `max` used buffers into `ids` (and their used lengths into `lens`); how many. */
  popSlots(ids: Uint16Array, max: number, lens?: Uint32Array): number;
  /** Queue a chain; its id, or -1 when full. */
  addChain(segs: Segment[]): number;
  /** Pop a used chain (after {@link Virtqueue.pending}); its id. */
  popUsed(): number;
  /** Throw when broken or when the device ran ahead. */
  verify(): void;
  /** Publish queued buffers and notify when the device wants it; whether it notified. */
  kick(): boolean;
  /** Used entries ready to pop. */
  pending(): number;
  /** Ask for interrupts; true when entries already wait. */
  enableInterrupts(): boolean;
  /** Suppress interrupts. */
  disableInterrupts(): void;
  /** Free the ring memory. */
  free(): void;
}
