/**
 * The VM benchmark's arithmetic, shared by the outer side (which reads pvwire's counters) and the guest (which
 * reports its own): counter samples, per-window rates and their median, min and max.
 * @module
 */

/** One counter sample from pvwire. */
export interface WireSample {
  /** Host monotonic seconds (pvwire's clock). */
  t: number;
  /** Frames counted from 0000:00:06.0. */
  sink1: number;
  /** Frames counted from 0000:00:09.0. */
  sink2: number;
  /** Frames the blaster has sent. */
  blasted: number;
}

/** Median, min and max of some windows' rates. */
export interface RateSummary {
  /** Median rate (frames/s). */
  median: number;
  /** Slowest window. */
  min: number;
  /** Fastest window. */
  max: number;
  /** Every window's rate, in order. */
  windows: number[];
}

/** Summarize per-window rates. */
export function summarize(windows: number[]): RateSummary {
  if (!windows.length) return { median: 0, min: 0, max: 0, windows };
  const s = [...windows].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { median, min: s[0], max: s.at(-1)!, windows };
}

/**
 * Rates of `count` over `n` equal windows of [from, to] (seconds), each from the samples nearest its edges;
 * windows without samples on both sides are left out.
 */
export function windowRates(
  samples: WireSample[],
  count: (s: WireSample) => number,
  from: number,
  to: number,
  n: number,
): number[] {
  const at = (t: number): WireSample | undefined => {
    let best: WireSample | undefined, bestD = Infinity;
    for (const s of samples) {
      const d = Math.abs(s.t - t);
      if (d < bestD) [best, bestD] = [s, d];
    }
    return bestD <= 0.05 ? best : undefined;
  };
  const out: number[] = [];
  const w = (to - from) / n;
  for (let i = 0; i < n; i++) {
    const a = at(from + i * w), b = at(from + (i + 1) * w);
    if (a && b && b.t > a.t) out.push((count(b) - count(a)) / (b.t - a.t));
  }
  return out;
}
