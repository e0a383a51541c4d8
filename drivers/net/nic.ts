/**
 * The NIC interface every pvdrv network driver implements (virtio-net, Xen netfront), its counters, the frame-size
 * rule, and MAC helpers. Drivers build on the queue core (core.ts); buffers come from packet pools
 * (packet_pool.ts), live in device-reachable memory and are reused: the hot path allocates nothing.
 * @module
 */
export { PacketBuffer, PacketPool } from "./packet_pool.ts";
import type { PacketBuffer } from "./packet_pool.ts";
import type { PacketBatch } from "./packet_batch.ts";

export type { IrqMode } from "../core/device.ts";

/** Shortest frame a NIC sends or delivers: an Ethernet header. */
export const MIN_FRAME = 14;
/** What a frame adds to the MTU: the Ethernet header and one 802.1Q tag. */
export const FRAME_OVERHEAD = 18;

/** The frame-size rule of every pvdrv NIC: the largest frame for `mtu` is mtu + 18, capped by one buffer. */
export function maxFrameFor(mtu: number, bufferLimit = Infinity): number {
  return Math.min(mtu + FRAME_OVERHEAD, bufferLimit);
}

/** Receive flag: the device validated the checksum (virtio VIRTIO_NET_HDR_F_DATA_VALID, netif data_validated). */
export const RX_CSUM_VALID = 2;
/** Receive flag: checksum not computed, partial checksum present (VIRTIO_NET_HDR_F_NEEDS_CSUM, netif csum_blank). */
export const RX_CSUM_PARTIAL = 1;

/** Counters of one queue. */
export interface QueueStats {
  /** Frames received. */
  rxPackets: number;
  /** Bytes received (frames only, no headers). */
  rxBytes: number;
  /** Frames dropped on receive (malformed, oversize). */
  rxDropped: number;
  /** Receive buffers those dropped frames used (a frame may span several). */
  rxDroppedBuffers: number;
  /** Frames sent (completed by the device). */
  txPackets: number;
  /** Bytes sent. */
  txBytes: number;
  /** Frames the device reported as failed. */
  txErrors: number;
  /** Doorbells rung (after suppression). */
  notifications: number;
  /** Interrupts waited for. */
  interrupts: number;
}

/** A fresh zeroed {@link QueueStats}. */
export function emptyStats(): QueueStats {
  return {
    rxPackets: 0,
    rxBytes: 0,
    rxDropped: 0,
    rxDroppedBuffers: 0,
    txPackets: 0,
    txBytes: 0,
    txErrors: 0,
    notifications: 0,
    interrupts: 0,
  };
}

/**
 * The NIC's counters, every queue summed, after reclaiming what the device completed (TX completions are counted
 * when reclaimed, which the hot path does lazily).
 */
export function settledStats(nic: Nic): QueueStats {
  for (let q = 0; q < nic.queues; q++) nic.reclaimTx(q);
  return totalStats(nic.stats());
}

/** Sum per-queue stats. */
export function totalStats(qs: QueueStats[]): QueueStats {
  const t = emptyStats();
  for (const q of qs) for (const k of Object.keys(t) as (keyof QueueStats)[]) t[k] += q[k];
  return t;
}

/** Format a MAC address. */
export function macToString(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":");
}

/** Parse "aa:bb:cc:dd:ee:ff". */
export function parseMac(s: string): Uint8Array {
  const m = s.trim().toLowerCase().match(/^([0-9a-f]{2})(?::([0-9a-f]{2})){5}$/);
  if (!m) throw new RangeError(`'${s}' is not a MAC address (expected like 52:54:00:12:34:56)`);
  return new Uint8Array(s.trim().split(":").map((h) => parseInt(h, 16)));
}

/** A network interface driven from userspace. */
export interface Nic {
  /** Human name (driver and address). */
  readonly name: string;
  /** The MAC address. */
  readonly mac: Uint8Array;
  /** Largest payload (without the Ethernet header). */
  readonly mtu: number;
  /** Number of queue pairs in use. */
  readonly queues: number;
  /** Largest frame (with Ethernet header) a buffer holds. */
  readonly maxFrame: number;
  /**
   * True when the device completes checksums on send: a frame whose `csumStart`/`csumOffset` are set goes out with
   * the ones' complement sum from csumStart to its end stored at csumStart + csumOffset (the field holding the
   * pseudo-header sum beforehand). virtio-net: VIRTIO_NET_F_CSUM negotiated (virtio 1.2 §5.1.6.2); netfront:
   * NETTXF_csum_blank, which every netback accepts (netif.h).
   */
  readonly txChecksum: boolean;
  /** Link state as the device reports it (true when it cannot tell). */
  linkUp(): boolean;
  /** Take up to `n` empty TX buffers into `out` (reclaiming completed ones first); returns how many. */
  allocTx(out: PacketBuffer[], n: number, queue?: number): number;
  /** Queue `n` filled buffers (their `length` set) for sending; returns how many were taken (rest stay yours). */
  sendBatch(pkts: PacketBuffer[], n: number, queue?: number): number;
  /** Move up to `max` received frames into `out`; give them back with {@link release}. */
  receiveBatch(out: PacketBuffer[], max: number, queue?: number): number;
  /** Return received (or unsent TX) buffers to the driver. */
  release(pkts: PacketBuffer[], n: number, queue?: number): void;
  /**
   * Receive up to `batch.capacity` frames into `batch` by buffer index, touching no buffer object (the fastest
   * receive); the batch must be empty. Give them back with {@link releaseBatch}.
   */
  receiveInto(batch: PacketBatch, queue?: number): number;
  /** Give every frame of `batch` back to the driver; the batch is empty after. */
  releaseBatch(batch: PacketBatch): void;
  /**
   * Take up to `n` empty TX buffers into `batch` by index (lengths 0): write frame k at
   * `batch.bytes[batch.offset(k)..]`, set `batch.lengths[k]`, then {@link sendFrom}. The batch must be empty.
   */
  allocInto(batch: PacketBatch, n: number, queue?: number): number;
  /**
   * Send the frames of `batch` (no checksum offload); returns how many went. Those not taken move to the front
   * and stay the application's ({@link releaseBatch} gives them back unsent).
   */
  sendFrom(batch: PacketBatch): number;
  /** Resolve when frames may be waiting on `queue` (interrupt mode; resolves at once when some are). */
  waitRx(queue?: number): Promise<void>;
  /**
   * Block this thread, event loop included, until frames may be waiting on `queue` or `timeoutMs` passes
   * (interrupt mode). True when woken by the interrupt or frames are already there. The cheapest sleep for a
   * dedicated receive loop (one poll() syscall, no thread hop); yield to the event loop yourself between sleeps.
   * With `alsoFd` the sleep also ends when that file descriptor becomes readable (a TAP bridge's other side).
   */
  sleepRx(timeoutMs: number, queue?: number, alsoFd?: number): boolean;
  /** Reclaim completed TX buffers now; returns how many. */
  reclaimTx(queue?: number): number;
  /** Per-queue counters. */
  stats(): QueueStats[];
  /** Throws the error that broke a queue or the device, if any. */
  checkHealth(): void;
  /** Stop the device and release everything, owned resources included (idempotent). */
  close(): Promise<void>;
}
