/**
 * Ping over a {@link NetHost}: echo requests at an interval (or back to back), and the summary ping(8) prints, with
 * percentiles.
 * @module
 */
import type { NetHost, PingReply } from "../net/host.ts";

/** What a ping run is asked. */
export interface PingOptions {
  /** Requests to send. */
  count: number;
  /** Milliseconds between requests; 0 sends each as soon as the previous one is answered (or timed out). */
  intervalMs: number;
  /** Payload bytes. */
  size: number;
  /** How long to wait for each reply (ms). */
  timeoutMs: number;
  /** Called with each reply (null: timed out). */
  onReply?: (seq: number, r: PingReply | null) => void;
  /** Stop early when this returns true. */
  stop?: () => boolean;
  /**
   * Requests sent first and left out of the summary and of `onReply` (default 0): the first replies of a fresh
   * process include compiling the reply path (24–166 ms each under the lab's TCG), which a long-running host pays
   * once.
   */
  warmup?: number;
}

/** ping(8)'s summary, plus percentiles. */
export interface PingSummary {
  /** Requests sent. */
  transmitted: number;
  /** Replies received. */
  received: number;
  /** Percent lost. */
  lossPercent: number;
  /** RTT minimum (ms). */
  min: number;
  /** RTT mean (ms). */
  avg: number;
  /** RTT maximum (ms). */
  max: number;
  /** RTT median (ms). */
  p50: number;
  /** RTT 99th percentile (ms). */
  p99: number;
  /** Mean absolute deviation (ms), as ping's mdev. */
  mdev: number;
  /**
   * The slowest replies, slowest first, with their sequence numbers (counted from the first request after any
   * warm-up), when they were known: slow replies early in a run are the JIT's warm-up, scattered ones are not.
   */
  slowest?: { seq: number; rtt: number }[];
}

/** Replies {@link PingSummary.slowest} lists. */
export const SLOWEST_KEPT = 5;

/** The p-th percentile (0..100) of sorted `v` (nearest rank). */
export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Summarize RTTs (ms) of `transmitted` requests; with `seqs` (each reply's sequence number), the slowest too. */
export function summarizePings(transmitted: number, rtts: number[], seqs?: number[]): PingSummary {
  const s = [...rtts].sort((a, b) => a - b), n = s.length;
  const avg = n ? s.reduce((a, b) => a + b, 0) / n : 0;
  const slowest = seqs
    ? rtts.map((rtt, i) => ({ seq: seqs[i], rtt })).sort((a, b) => b.rtt - a.rtt).slice(0, SLOWEST_KEPT)
    : undefined;
  const summary: PingSummary = {
    transmitted,
    received: n,
    lossPercent: transmitted ? ((transmitted - n) / transmitted) * 100 : 0,
    min: n ? s[0] : 0,
    avg,
    max: n ? s[n - 1] : 0,
    p50: percentile(s, 50),
    p99: percentile(s, 99),
    mdev: n ? Math.sqrt(s.reduce((a, b) => a + (b - avg) ** 2, 0) / n) : 0,
  };
  if (slowest) summary.slowest = slowest;
  return summary;
}

/** Ping `dst` from `host`. */
export async function pingRun(host: NetHost, dst: number, o: PingOptions): Promise<PingSummary> {
  const rtts: number[] = [], seqs: number[] = [];
  const pending: Promise<void>[] = [];
  const warm = o.warmup ?? 0, total = warm + o.count;
  let sent = 0;
  for (let seq = 0; seq < total && !o.stop?.(); seq++) {
    const t0 = performance.now(), counted = seq >= warm;
    const p = host.ping(dst, { seq, size: o.size, timeoutMs: o.timeoutMs }).then((r) => {
      if (!counted) return;
      if (r) rtts.push(r.rtt), seqs.push(seq - warm);
      o.onReply?.(seq - warm, r);
    });
    if (counted) sent++;
    if (o.intervalMs === 0) await p;
    else {
      pending.push(p);
      const wait = t0 + o.intervalMs - performance.now();
      if (seq + 1 < total && wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }
  await Promise.all(pending);
  return summarizePings(sent, rtts, seqs);
}
