/**
 * In-process benchmark cases, shared by `deno bench` (bench/*.bench.ts register them) and the paired runner
 * (bench/paired.ts), which runs each group's cases in turn, round after round, and reports every case as the
 * median of its per-round ratios to the group's C baseline.
 * @module
 */

import { compileC } from "../lab/outer/build_c.ts";

/** bench/ring_loop.c as a shared library (rebuilt when the source is newer), with the `symbols` a bench needs. */
export function ringLoopLibrary<S extends Deno.ForeignLibraryInterface>(symbols: S): Deno.DynamicLibrary<S> {
  const root = new URL("../", import.meta.url).pathname;
  const so = compileC(`${root}bench/ring_loop.c`, `${root}build/ring_loop.so`, ["-shared", "-fPIC"]);
  return Deno.dlopen(so, symbols);
}

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
