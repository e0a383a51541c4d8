/**
 * In-process benchmark cases, shared by `deno bench` (bench/*.bench.ts register them) and the paired runner
 * (bench/paired.ts), which runs each group's cases in turn, round after round, and reports every case as the
 * median of its per-round ratios to the group's C baseline.
 * @module
 */

/** One measured operation: a batch of frames through one implementation. */
export interface BenchCase {
  /** Cases compared with each other share a group. */
  group: string;
  /** What runs. */
  name: string;
  /** The group's baseline (C doing the same work). */
  baseline?: boolean;
  /** One batch; throws when the work came out short. */
  fn: () => void;
}

/** Register `cases` with `deno bench`. */
export function register(cases: BenchCase[]): void {
  for (const c of cases) {
    Deno.bench({ name: c.name, group: c.group, baseline: c.baseline ?? false, fn: c.fn });
  }
}
