/**
 * `deno run -A bench/paired.ts [--rounds N] [--json FILE]` (also the second half of `deno task bench
 * --in-process`): the in-process cases (bench/*_cases.ts) in paired rounds. Each round times every case of a group
 * in turn for about 40 ms; each case's figure is the median of its per-round ratios to the group's C baseline,
 * with the lowest and highest round. Neighbours in time share the machine's state, so drift and noisy neighbours
 * cancel out of the ratio where they would move `deno bench`'s means.
 * @module
 */
import { parseArgs } from "parse-args";
import { summarize } from "../lab/bench_stats.ts";
import type { BenchCase } from "./cases.ts";

/** One case's result. */
export interface PairedResult {
  /** The case's group. */
  group: string;
  /** The case. */
  name: string;
  /** Whether it is the group's baseline. */
  baseline: boolean;
  /** Median time per call over the rounds (ns). */
  ns: number;
  /** Per round: its time over the baseline's in the same round. */
  ratios: number[];
}

/** Calls per round that take about `ms` (at least 100). */
function calibrate(fn: () => void, ms: number): number {
  let n = 100;
  for (;;) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    const took = performance.now() - t0;
    if (took >= ms / 4) return Math.max(100, Math.round((n * ms) / took));
    n *= 4;
  }
}

/**
 * Run `cases` for `rounds` paired rounds (every case once per round, a group's cases back to back) of about `ms`
 * each, after warming each case up (the JIT's tiers). `clock` is injectable for tests.
 */
export function pairedRun(
  cases: BenchCase[],
  rounds: number,
  ms = 40,
  clock: () => number = () => performance.now(),
): PairedResult[] {
  const iters = cases.map((c) => {
    for (let i = 0; i < 2000; i++) c.fn(); // warm-up
    return calibrate(c.fn, ms);
  });
  const times = cases.map(() => [] as number[]);
  for (let r = 0; r < rounds; r++) {
    cases.forEach((c, k) => {
      const n = iters[k], t0 = clock();
      for (let i = 0; i < n; i++) c.fn();
      times[k].push(((clock() - t0) * 1e6) / n);
    });
  }
  return cases.map((c, k) => {
    const base = cases.findIndex((b) => b.group === c.group && b.baseline);
    return {
      group: c.group,
      name: c.name,
      baseline: c.baseline ?? false,
      ns: summarize(times[k]).median,
      ratios: base < 0 ? [] : times[k].map((t, r) => t / times[base][r]),
    };
  });
}

/** The results as a Markdown table: ns per call, then × the baseline as median (lowest–highest round). */
export function pairedTable(res: PairedResult[]): string {
  const rows = res.map((r) => {
    const s = summarize(r.ratios);
    const x = r.baseline
      ? "1 (baseline)"
      : `${s.median.toFixed(2)}× (${s.min.toFixed(2)}–${s.max.toFixed(2)})`;
    return `| ${r.group} | ${r.name} | ${r.ns.toFixed(0)} | ${x} |`;
  });
  return ["| group | case | ns per call | × C, paired rounds |", "| --- | --- | ---: | ---: |", ...rows].join(
    "\n",
  );
}

/** The case sets, each measured in a process of its own (a driver's code is not made polymorphic by another's). */
const SETS: Record<string, () => Promise<{ cases: BenchCase[]; close(): void }>> = {
  "virtio-net": async () => (await import("./virtio_net_cases.ts")).virtioNetCases("split"),
  "virtio-net-packed": async () => (await import("./virtio_net_cases.ts")).virtioNetCases("packed"),
  "vhost-device": async () => (await import("./vhost_device_cases.ts")).vhostDeviceCases(),
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { rounds: { type: "string" }, json: { type: "string" }, set: { type: "string" } },
  });
  const rounds = Number(values.rounds ?? 15);
  if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 1000)) {
    console.error("bench/paired.ts: --rounds takes a whole number in 1..1000");
    Deno.exit(2);
  }
  if (values.set) {
    const make = SETS[values.set];
    if (!make) {
      console.error(`bench/paired.ts: --set is one of ${Object.keys(SETS).join(", ")}`);
      Deno.exit(2);
    }
    const s = await make();
    const res = pairedRun(s.cases, rounds);
    s.close();
    console.log(JSON.stringify(res));
    return;
  }
  const res: PairedResult[] = [];
  for (const set of Object.keys(SETS)) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", import.meta.filename!, "--set", set, "--rounds", String(rounds)],
      stderr: "inherit",
    }).output();
    if (!out.success) throw new Error(`bench/paired.ts --set ${set} failed (exit ${out.code})`);
    res.push(
      ...JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!) as PairedResult[],
    );
  }
  console.log(`in-process, ${rounds} paired rounds (each case: median of its per-round ratios to C):\n`);
  console.log(pairedTable(res));
  if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify(res, null, 2) + "\n");
}

if (import.meta.main) await main();
