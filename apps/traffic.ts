/**
 * Traffic loops over any {@link Nic}: a frame generator (count, sizes, rate or flood, batches, optional window
 * flow control) and a verifying receiver (sequence numbers, every byte, duplicates, pcap). Used by the send and
 * recv tasks, the VM tests and the benchmarks. Neither loop allocates per packet.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import type { Nic, PacketBuffer } from "../drivers/net/nic.ts";
import { PacketBatch } from "../drivers/net/packet_batch.ts";
import { checkFrame, FrameCheck, writeFrame, writeHeader } from "./frames.ts";
import type { PcapWriter } from "./pcap.ts";
import { ITEMS_PER_YIELD, Pacer, PollClock, SLEEP_SLICE_MS, tick } from "../hal/event_loop.ts";

/** Lets a sender stay at most `size` frames ahead of what the receiver has confirmed. */
export interface Window {
  /** Frames allowed in flight. */
  size: number;
  /** Frames the receiver has confirmed. */
  acked(): number;
  /** Resolves when `acked()` may have grown. */
  changed(): Promise<void>;
  /** Give up when nothing is acknowledged for this long (ms, default 10 000). */
  stallMs?: number;
}

/** Generator options. */
export interface SendOptions {
  /** Frames to send. */
  count: number;
  /** Smallest frame. */
  minSize: number;
  /** Largest frame (sizes cycle through min..max). */
  maxSize: number;
  /** Destination MAC. */
  dst: Uint8Array;
  /** Frames per batch (one doorbell each). */
  batch?: number;
  /** Frames per second (0: flood). */
  rate?: number;
  /** Flow control. */
  window?: Window;
  /** First sequence number. */
  firstSeq?: number;
  /** Queue pair. */
  queue?: number;
  /** Stop after this long even if `count` is not reached (ms). */
  durationMs?: number;
  /** Called about once a second. */
  onProgress?: (sent: number, seconds: number) => void;
  /**
   * Benchmarks: write only the Ethernet header and the sequence number, leaving the rest of the buffer as it was
   * (the way DPDK's txonly works); frames are not verifiable then.
   */
  headerOnly?: boolean;
  /** Give up when the device completes nothing for this long while the ring is full (ms, default 10 000). */
  stallMs?: number;
}

/** Generator result. */
export interface SendResult {
  /** Frames the device completed. */
  sent: number;
  /** Their bytes. */
  bytes: number;
  /** Seconds from first to last. */
  seconds: number;
  /** Frames per second. */
  pps: number;
}

/** The receiver yields to the event loop once per this many frames handled (of any kind). */
export const YIELD_EVERY = ITEMS_PER_YIELD;
/** Polls of a full TX ring between yields: the device is the bottleneck, and a yield would idle it. */
const STALLED_POLLS_PER_YIELD = 1024;
/** A sender that completes nothing for this long has a stuck device (ms). */
const STALL_LIMIT_MS = 10_000;
/** How often a sender reports progress (ms). */
const PROGRESS_MS = 1000;
/** How long a finished sender waits for the device to complete what it queued (ms). */
const DRAIN_MS = 5000;
/** Frames a receive loop takes per call. */
const RX_BATCH = 64;
/** The size of frame `k` for sizes cycling through min..max (the same rule as the C peer). */
export function frameSize(k: number, min: number, max: number): number {
  return min + ((k * 149) % (max - min + 1));
}

/** Send `count` pvdrv test frames. */
export async function generate(nic: Nic, o: SendOptions): Promise<SendResult> {
  const batch = Math.max(1, Math.min(o.batch ?? 32, 256));
  const q = o.queue ?? 0, first = o.firstSeq ?? 0;
  if (o.minSize < 60 || o.maxSize > nic.maxFrame || o.minSize > o.maxSize) {
    throw new RangeError(`frame sizes must be within 60..${nic.maxFrame}`);
  }
  const bufs: PacketBuffer[] = new Array(batch);
  const completedBefore = nic.stats()[q].txPackets;
  const t0 = performance.now();
  const pacer = new Pacer(STALLED_POLLS_PER_YIELD);
  let sent = 0, bytes = 0, lastReport = t0, stalled = false, stalledSince = 0;
  const clock = new PollClock();
  while (sent < o.count) {
    let room = Math.min(batch, o.count - sent);
    if (o.window) {
      const w = o.window, stall = w.stallMs ?? 10_000;
      let since = performance.now(), last = w.acked();
      while (sent - w.acked() >= w.size) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([w.changed(), new Promise<void>((r) => timer = setTimeout(r, 100))]);
        clearTimeout(timer);
        if (w.acked() !== last) {
          last = w.acked();
          since = performance.now();
        } else if (performance.now() - since > stall) {
          throw new PvdrvError(
            "app",
            `the receiver stopped acknowledging: ${w.acked()} of ${sent} frames confirmed for ${stall} ms`,
          );
        }
      }
      room = Math.min(room, o.window.size - (sent - o.window.acked()));
    }
    if (o.rate) {
      const due = Math.floor(((performance.now() - t0) / 1000) * o.rate) + 1;
      if (sent >= due) {
        // Ahead of schedule: sleep until a batch is due (a paced sender should not spin).
        await new Promise((r) => setTimeout(r, Math.max(1, ((sent + batch - due) / o.rate!) * 1000)));
        continue;
      }
      room = Math.min(room, due - sent);
    }
    const got = nic.allocTx(bufs, room, q);
    if (got === 0) {
      // The ring is full: the device is the bottleneck. Keep polling for completions (like a DPDK sender), letting
      // the event loop run now and then (setImmediate: a timer sleep would be clamped to >= 4 ms and idle the ring).
      // The clock is read only then, not per poll: in the lab VM (TCG) a clock read cost more than the poll, and
      // it was a third of the TX path's time while the sender waited on the device.
      if (pacer.due(0)) {
        const now = performance.now();
        if (!stalled) stalled = true, stalledSince = now;
        else if (now - stalledSince > (o.stallMs ?? STALL_LIMIT_MS)) {
          throw new PvdrvError(
            "app",
            `${nic.name}: the device completed nothing for ${
              (o.stallMs ?? STALL_LIMIT_MS) / 1000
            } s (${sent} frames queued so far)`,
          );
        }
        await tick();
      }
      continue;
    }
    stalled = false;
    for (let i = 0; i < got; i++) {
      const seq = first + sent + i, len = frameSize(seq, o.minSize, o.maxSize);
      if (o.headerOnly) writeHeader(bufs[i].data, len, seq, o.dst, nic.mac);
      else writeFrame(bufs[i].data, len, seq, o.dst, nic.mac);
      bufs[i].length = len;
      bytes += len;
    }
    const n = nic.sendBatch(bufs, got, q);
    if (n < got) {
      for (let i = n; i < got; i++) bytes -= bufs[i].length;
      releaseUnsent(nic, bufs, n, got, q);
    }
    sent += n;
    // The clock by frames, not per batch: performance.now() costs more than a small batch of driver work.
    if (!clock.advance(n)) continue;
    const now = clock.now;
    if (o.durationMs && now - t0 >= o.durationMs) break;
    if (now - lastReport > PROGRESS_MS) {
      lastReport = now;
      o.onProgress?.(sent, (now - t0) / 1000);
      await tick();
    }
  }
  // Wait for the device to complete everything queued (completions counted since the start).
  const deadline = performance.now() + DRAIN_MS;
  while (true) {
    nic.reclaimTx(q);
    if (nic.stats()[q].txPackets - completedBefore >= sent) break;
    if (performance.now() > deadline) {
      throw new PvdrvError(
        "app",
        `the device completed ${nic.stats()[q].txPackets - completedBefore} of ${sent} frames within ${
          DRAIN_MS / 1000
        } s`,
      );
    }
    await tick();
  }
  const seconds = (performance.now() - t0) / 1000;
  return { sent, bytes, seconds, pps: sent / seconds };
}

/** Receiver options. */
export interface RecvOptions {
  /** Stop after this many valid pvdrv frames (0: run until the timeout). */
  count: number;
  /** Stop after this long without traffic (ms). */
  idleTimeoutMs: number;
  /** Expected sequence range is [firstSeq, firstSeq + count) (for duplicate detection). */
  firstSeq?: number;
  /** Queue pair. */
  queue?: number;
  /** Sleep on the interrupt in this thread (`Nic.sleepRx`, in slices) instead of busy-polling. */
  interrupts?: boolean;
  /** Capture every frame. */
  pcap?: PcapWriter;
  /** Called with each frame (after verification) — printing, echoing. */
  onFrame?: (buf: PacketBuffer, check: FrameCheck, seq: number) => void;
  /** Called every `progressEvery` valid frames (window acks). */
  onProgress?: (ok: number) => void;
  /** See onProgress. */
  progressEvery?: number;
  /** Ends the loop early when it returns true. */
  stop?: () => boolean;
}

/** Receiver result. */
export interface RecvResult {
  /** Valid pvdrv frames (each sequence number once). */
  received: number;
  /** pvdrv frames with a wrong byte or length. */
  corrupt: number;
  /** Other traffic. */
  foreign: number;
  /** Sequence numbers seen twice (or outside the range). */
  duplicate: number;
  /** Bytes of valid frames. */
  bytes: number;
  /** Seconds from first to last frame. */
  seconds: number;
  /** Valid frames per second. */
  pps: number;
  /** Interrupts waited for. */
  waits: number;
}

/** Receive and verify pvdrv test frames. */
export async function receive(nic: Nic, o: RecvOptions): Promise<RecvResult> {
  const q = o.queue ?? 0, first = o.firstSeq ?? 0;
  const seen = new Uint8Array(o.count || 1);
  const out: PacketBuffer[] = new Array(RX_BATCH);
  const seqBox = new Uint32Array(1);
  const pacer = new Pacer();
  let ok = 0, corrupt = 0, foreign = 0, dup = 0, bytes = 0, waits = 0;
  let tFirst = 0, tLast = performance.now(), progressed = false;
  const every = o.progressEvery ?? 0;
  while ((o.count === 0 || ok < o.count) && !o.stop?.()) {
    const n = nic.receiveBatch(out, RX_BATCH, q);
    if (n === 0) {
      const idle = performance.now() - tLast;
      if (idle > o.idleTimeoutMs) break;
      if (o.interrupts) {
        // Acknowledgements written by onProgress go out before this thread sleeps (a windowed sender waits on them).
        if (progressed) {
          progressed = false;
          await tick();
          continue;
        }
        // Sleep in poll() on the interrupt in this thread (no thread-pool hop, no promise per wait), one slice at a
        // time; a slice that ends without an interrupt lets the event loop run.
        waits++;
        if (!nic.sleepRx(Math.min(SLEEP_SLICE_MS, Math.max(1, o.idleTimeoutMs - idle)), q)) await tick();
      } else if (pacer.due(0)) await tick();
      continue;
    }
    tLast = performance.now();
    if (!tFirst) tFirst = tLast;
    for (let i = 0; i < n; i++) {
      const b = out[i];
      o.pcap?.write(b.data, b.length);
      const c = checkFrame(b.data, b.length, seqBox);
      const rel = seqBox[0] - first;
      if (c === FrameCheck.Foreign) foreign++;
      else if (c === FrameCheck.Corrupt) corrupt++;
      else if (o.count && (rel < 0 || rel >= o.count || seen[rel])) dup++;
      else {
        if (o.count) seen[rel] = 1;
        ok++;
        bytes += b.length;
        if (every && ok % every === 0) {
          o.onProgress?.(ok);
          progressed = true;
        }
      }
      o.onFrame?.(b, c, seqBox[0]);
    }
    nic.release(out, n, q);
    // Let I/O (progress pipes, signals) run now and then: by frames of any kind, never per batch (Deno clamps
    // chained timers to >= 4 ms, which would cap a stream of other traffic near 16k pps).
    if (pacer.due(n)) await tick();
  }
  const seconds = tFirst ? (tLast - tFirst) / 1000 : 0;
  return {
    received: ok,
    corrupt,
    foreign,
    duplicate: dup,
    bytes,
    seconds,
    pps: seconds ? ok / seconds : 0,
    waits,
  };
}

/** Result of {@link echoExchange}. */
export interface EchoResult {
  /** What was sent. */
  tx: SendResult;
  /** What came back. */
  rx: RecvResult;
}

/**
 * Send `count` frames to a peer that echoes each one back (the lab's host reflector) and verify the echoes,
 * never more than `window` frames ahead of what has come back.
 */
export async function echoExchange(
  nic: Nic,
  o: {
    count: number;
    minSize: number;
    maxSize: number;
    dst: Uint8Array;
    window: number;
    idleTimeoutMs?: number;
  },
): Promise<EchoResult> {
  let echoed = 0;
  let wake: (() => void)[] = [];
  const back = receive(nic, {
    count: o.count,
    idleTimeoutMs: o.idleTimeoutMs ?? 15000,
    progressEvery: 8,
    onProgress: (ok) => {
      echoed = ok;
      const w = wake;
      wake = [];
      for (const f of w) f();
    },
  });
  const tx = await generate(nic, {
    count: o.count,
    minSize: o.minSize,
    maxSize: o.maxSize,
    dst: o.dst,
    window: { size: o.window, acked: () => echoed, changed: () => new Promise<void>((r) => wake.push(r)) },
  });
  return { tx, rx: await back };
}

/** {@link countFrames} options. */
export interface CountOptions {
  /** Frames taken per receive call (1–256). */
  batch: number;
  /** Times (performance.now() ms, ascending) at which the count is sampled; the loop ends after the last. */
  marks: number[];
  /** Called at each mark with the frames counted so far. */
  onMark?: (index: number, count: number) => void;
  /** Queue pair. */
  queue?: number;
  /** Sleep on the interrupt when the ring is empty (the NIC must be open with interrupts). */
  interrupts?: boolean;
  /**
   * Interrupt mode, NAPI-style: after the ring runs dry keep polling this long (µs) before re-arming the interrupt,
   * so a steady stream is taken without a wake-up per frame. 0 (default): adaptive, from the recent gap between
   * frames (poll when frames come closer than a wake-up costs).
   */
  busyPollUs?: number;
}

/** What a wake-up from the interrupt costs, about (µs, native): the poll() syscall and the return to JS. */
const WAKE_US = 10;

/**
 * Count received frames of any kind (not verified: the receive half of a benchmark, like DPDK's rxonly), sampling
 * the count at `marks`. Returns the count at each mark.
 */
export async function countFrames(nic: Nic, o: CountOptions): Promise<number[]> {
  const q = o.queue ?? 0, frames = new PacketBatch(Math.max(1, Math.min(o.batch, 256)));
  const counts: number[] = [];
  const pacer = new Pacer();
  let got = 0, m = 0, lastFrame = performance.now(), gapUs = 1e6, now = lastFrame;
  const clock = new PollClock();
  while (m < o.marks.length) {
    const n = nic.receiveInto(frames, q); // by index: a counter touches no buffer object
    // Interrupt mode times every batch (the gap estimate decides when to sleep); polling reads the clock about
    // every CLOCK_MS (a mark's count is taken then; onMark can read the exact time).
    if (o.interrupts) now = performance.now();
    else if (clock.advance()) now = clock.now;
    if (n > 0) {
      got += n;
      nic.releaseBatch(frames);
      gapUs = 0.75 * gapUs + 0.25 * ((now - lastFrame) * 1000 / n); // moving average of the per-frame gap
      lastFrame = now;
    }
    while (m < o.marks.length && now >= o.marks[m]) {
      counts.push(got);
      o.onMark?.(m, got);
      m++;
    }
    if (n > 0 || !o.interrupts) {
      if (pacer.due(n)) await tick();
      continue;
    }
    const budgetUs = o.busyPollUs || (gapUs < WAKE_US ? 2 * gapUs : 0);
    if ((now - lastFrame) * 1000 < budgetUs) continue;
    if (m >= o.marks.length) break;
    // Sleep in poll() on the interrupt (no thread hop), at most one slice; an idle slice lets the event loop run.
    if (!nic.sleepRx(Math.min(SLEEP_SLICE_MS, Math.max(0, o.marks[m] - now)), q)) await tick();
  }
  return counts;
}

/** {@link forward} options. */
export interface ForwardOptions {
  /** Frames moved per batch (1–256). */
  batch: number;
  /** Stop at this time (performance.now() ms). */
  until: number;
  /** Also stop once this many frames were received. */
  frames?: number;
}

/** What {@link forward} moved. */
export interface ForwardResult {
  /** Frames received on `from` and queued on `to`. */
  forwarded: number;
  /** Frames received but dropped because `to` had no free TX buffer. */
  dropped: number;
}

/**
 * Move every frame received on `from` out of `to`, unchanged (a two-port forwarder, like testpmd's io mode; the
 * bytes are copied because the two NICs' buffers live in different DMA mappings). Allocates nothing per frame.
 */
export async function forward(from: Nic, to: Nic, o: ForwardOptions): Promise<ForwardResult> {
  const batch = Math.max(1, Math.min(o.batch, 256)), limit = o.frames ?? Infinity;
  const rx: PacketBuffer[] = new Array(batch), tx: PacketBuffer[] = new Array(batch);
  const pacer = new Pacer();
  let forwarded = 0, dropped = 0;
  const clock = new PollClock();
  while (forwarded + dropped < limit && (!clock.advance() || clock.now < o.until)) {
    const n = from.receiveBatch(rx, Math.min(batch, limit - forwarded - dropped));
    if (n === 0) {
      if (pacer.due(0)) await tick();
      continue;
    }
    const room = to.allocTx(tx, n);
    for (let i = 0; i < room; i++) copyFrame(rx[i], tx[i]);
    const sent = to.sendBatch(tx, room);
    releaseUnsent(to, tx, sent, room, 0);
    from.release(rx, n);
    forwarded += sent;
    dropped += n - sent;
    if (pacer.due(n)) await tick();
  }
  return { forwarded, dropped };
}

/**
 * Give back the buffers `bufs[sent..n)` a send did not take (the ring was full), moving them to the front of
 * `bufs` first: no slice per short batch, which a sender at full rate meets all the time.
 */
export function releaseUnsent(nic: Nic, bufs: PacketBuffer[], sent: number, n: number, queue = 0): void {
  if (sent >= n) return;
  for (let i = sent; i < n; i++) bufs[i - sent] = bufs[i];
  nic.release(bufs, n - sent, queue);
}

/** Copy `from`'s frame into `to` without allocating (no subarray view per frame). */
function copyFrame(from: PacketBuffer, to: PacketBuffer): void {
  const len = from.length, s = from.data, d = to.data;
  // Past a small frame a memcpy of the whole slot beats a byte loop, and makes no view.
  if (len > 128 && d.length >= s.length) d.set(s);
  else for (let i = 0; i < len; i++) d[i] = s[i];
  to.length = len;
}
