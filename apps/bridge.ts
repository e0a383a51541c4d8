/**
 * The TAP bridge: frames move both ways between a pvdrv NIC and a kernel TAP interface, so the kernel's whole
 * stack (TCP, any server) runs over pvdrv's driver. One queue pair; the TAP side is any {@link FramePort}.
 * @module
 */
import type { Nic, PacketBuffer } from "../drivers/net/nic.ts";
import { MIN_FRAME, RX_CSUM_PARTIAL } from "../drivers/net/nic.ts";
import { completeChecksum } from "../net/offload.ts";
import { Pacer, tick } from "../hal/event_loop.ts";
import { releaseUnsent } from "./traffic.ts";

/** The other side of the bridge: a file descriptor carrying whole Ethernet frames (a TAP device). */
export interface FramePort {
  /** Readable when a frame waits. */
  readonly fd: number;
  /** Read one frame into `buf` (≤ max bytes); its length, or -1 when none waits. */
  read(buf: Uint8Array, max: number): number;
  /** Write one frame; false when it was dropped. */
  write(buf: Uint8Array, len: number): boolean;
}

/** The bridge's counters (a plain object: a worker can copy them out). */
export interface BridgeStats {
  /** Frames from the NIC written to the TAP. */
  toTap: number;
  /** Bytes of those. */
  toTapBytes: number;
  /** Frames from the TAP sent on the NIC. */
  toNic: number;
  /** Bytes of those. */
  toNicBytes: number;
  /** Frames from the NIC the TAP refused (interface down, queue full). */
  tapDropped: number;
  /**
   * Frames from the TAP the NIC could not carry (shorter than an Ethernet header, longer than its largest frame),
   * or held for a full ring when the bridge stopped. A full ring alone drops nothing: the frame waits.
   */
  nicDropped: number;
  /** Frames handed to {@link BridgeOptions.intercept} and taken by it. */
  intercepted: number;
  /** Sleeps on the NIC interrupt and the TAP. */
  sleeps: number;
}

/** A zeroed {@link BridgeStats}. */
export function emptyBridgeStats(): BridgeStats {
  return {
    toTap: 0,
    toTapBytes: 0,
    toNic: 0,
    toNicBytes: 0,
    tapDropped: 0,
    nicDropped: 0,
    intercepted: 0,
    sleeps: 0,
  };
}

/** How the bridge runs. */
export interface BridgeOptions {
  /** Stop when this returns true (checked every round). */
  stop: () => boolean;
  /** The NIC was opened with interrupts: sleep on them and the TAP together when idle (else busy-poll). */
  interrupts: boolean;
  /** Counters to update (default: a fresh object, returned). */
  stats?: BridgeStats;
  /** Called about every `reportMs` (default 1000) with the counters. */
  onReport?: (s: BridgeStats) => void;
  /** Milliseconds between reports. */
  reportMs?: number;
  /** Sees each frame from the NIC first; true when it took the frame (it does not go to the TAP). */
  intercept?: (b: PacketBuffer) => boolean;
  /** Called once per round (timers of whatever intercepts). */
  onRound?: (now: number) => void;
  /** Queue pair (default 0). */
  queue?: number;
}

const BATCH = 32;

/**
 * Run the bridge until `o.stop()`. Frames whose checksum the device left partial are completed before the TAP
 * gets them; frames from the TAP are sent as they are (the kernel completed their checksums: no vnet header).
 */
export async function bridge(nic: Nic, port: FramePort, o: BridgeOptions): Promise<BridgeStats> {
  const s = o.stats ?? emptyBridgeStats(), q = o.queue ?? 0, reportMs = o.reportMs ?? 1000;
  const rx: PacketBuffer[] = new Array(BATCH), tx: PacketBuffer[] = new Array(BATCH);
  const fresh: PacketBuffer[] = new Array(BATCH);
  // tx[0..held): frames read from the TAP that the NIC has not taken yet (its ring was full). They are held, in
  // order, for the next round, and the TAP is not read past them: a frame read is never dropped for a full ring.
  let held = 0;
  let nextReport = performance.now() + reportMs;
  const pacer = new Pacer();
  try {
    while (!o.stop()) {
      // NIC → TAP.
      const n = nic.receiveBatch(rx, BATCH, q);
      for (let i = 0; i < n; i++) {
        const b = rx[i];
        if (o.intercept && o.intercept(b)) {
          s.intercepted++;
          continue;
        }
        if (b.flags & RX_CSUM_PARTIAL) completeChecksum(b.data, b.length);
        if (port.write(b.data, b.length)) s.toTap++, s.toTapBytes += b.length;
        else s.tapDropped++;
      }
      if (n) nic.release(rx, n, q);
      // TAP → NIC: read straight into TX buffers, behind what is held.
      let read = 0;
      if (held < BATCH) {
        const k = nic.allocTx(fresh, BATCH - held, q);
        while (read < k) {
          const b = fresh[read], len = port.read(b.data, nic.maxFrame);
          if (len < 0) break;
          if (len < MIN_FRAME || len > nic.maxFrame) {
            s.nicDropped++; // no frame a NIC can carry: the buffer takes the next one
            continue;
          }
          b.length = len; // offload fields are clear in a buffer fresh from allocTx
          tx[held++] = b;
          read++;
        }
        releaseUnsent(nic, fresh, read, k, q); // buffers the TAP had no frame for
      }
      const sent = held ? nic.sendBatch(tx, held, q) : 0;
      for (let i = 0; i < sent; i++) s.toNic++, s.toNicBytes += tx[i].length;
      if (sent) {
        for (let i = sent; i < held; i++) tx[i - sent] = tx[i];
        held -= sent;
      }
      const now = performance.now();
      o.onRound?.(now);
      if (now >= nextReport) {
        nextReport = now + reportMs;
        o.onReport?.(s);
      }
      if (n || read || held) {
        if (pacer.due(n + read)) await tick(); // busy: let the event loop in by count
        continue;
      }
      if (o.interrupts) {
        // Idle: one poll() over the NIC's interrupt and the TAP, then let the event loop run (signals, reports).
        nic.sleepRx(Math.max(0, Math.min(100, nextReport - now)), q, port.fd);
        s.sleeps++;
        await tick();
      } else if (pacer.due(0)) await tick();
    }
  } finally {
    // Stopping (or failing) with frames held: they are the bridge's to give back, and counted.
    if (held) {
      s.nicDropped += held;
      try {
        nic.release(tx, held, q);
      } catch { /* a NIC that failed has taken its buffers back already */ }
    }
  }
  return s;
}
