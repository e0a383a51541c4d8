/**
 * `deno task fuzz [--target virtio|virtio-config|virtio-race|netfront|xenbus|xenstore|net|blk|blk-config|nbd|blkfront|vhost|all] [--seconds N] [--seed S]
 * [--iteration I] [--json FILE]`: the real driver code against the in-process models made hostile.
 *
 * Each iteration builds a fresh model and driver from a seeded PRNG, then interleaves valid traffic with hostile
 * events (forged used/response entries, index jumps both ways, random ring bytes, bogus num_buffers, lengths,
 * offsets and statuses, endless more_data chains, config-space and capability mutations, queue counts and sizes,
 * malformed or silent xenstore replies, wrong req_id, unknown watch tokens, backend state flapping). An oracle
 * knows what was valid, so every outcome is classified:
 *
 * - ok / clean-break: no error, or the driver refused with one of its own error classes and a message;
 * - other-exception: anything else thrown (a TypeError, a model fault from a bad address the driver gave);
 * - hang: an operation that did not finish within its bound;
 * - silent: the driver accepted what it should not (a frame that differs from what a well-behaved device sent,
 *   a buffer handed out twice, a valid frame dropped uncounted, a length outside the negotiated bounds);
 * - leak: after close (and the application's release of every buffer), DMA regions, grants or ports remain;
 * - memory: the heap grew by more than 25% between the first and last tenth of the run (after GC).
 *
 * Anything but ok and clean-break prints the target, seed and iteration (and the event index) that reproduce it,
 * and the task exits 1.
 * @module
 */
import { parseArgs } from "parse-args";
import { netIteration } from "./net_target.ts";
import { blkIteration } from "./blk_target.ts";
import { nbdIteration } from "./nbd_target.ts";
import { raceIteration, virtioIteration } from "./virtio_target.ts";
import { netfrontIteration } from "./netfront_target.ts";
import { blkfrontIteration } from "./blkfront_target.ts";
import { xenstoreIteration } from "./xenstore_target.ts";
import { vhostIteration } from "./vhost_target.ts";
import { BAD, type Outcome, type Result, Rng, type TargetReport } from "./oracle.ts";

export { type Outcome, Rng, type TargetReport } from "./oracle.ts";

// ---------------------------------------------------------------- driver

const TARGETS: Record<string, { steps: number; run: (rng: Rng, steps: number) => Result | Promise<Result> }> =
  {
    virtio: { steps: 3000, run: (r, s) => virtioIteration(r, s, false) },
    "virtio-config": { steps: 40, run: (r, s) => virtioIteration(r, s, true) },
    "virtio-race": { steps: 20000, run: (r, s) => raceIteration(r, s) },
    netfront: { steps: 2000, run: (r, s) => netfrontIteration(r, s, false) },
    xenbus: { steps: 60, run: (r, s) => netfrontIteration(r, s, true) },
    xenstore: { steps: 60, run: (r, s) => xenstoreIteration(r, s) },
    net: { steps: 300, run: netIteration },
    blk: { steps: 2000, run: (r, s) => blkIteration(r, s, false) },
    "blk-config": { steps: 40, run: (r, s) => blkIteration(r, s, true) },
    nbd: { steps: 300, run: nbdIteration },
    blkfront: { steps: 1000, run: blkfrontIteration },
    vhost: { steps: 2000, run: vhostIteration },
  };

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** Run `target` for `seconds` (or the one `iteration`) from `seed`. */
export async function fuzzTarget(
  target: string,
  seconds: number,
  seed: number,
  iteration?: number,
): Promise<TargetReport> {
  const t = TARGETS[target];
  const counts: Record<Outcome, number> = {
    ok: 0,
    "clean-break": 0,
    "other-exception": 0,
    hang: 0,
    silent: 0,
    leak: 0,
    memory: 0,
  };
  const failures: TargetReport["failures"] = [];
  const t0 = performance.now(), end = t0 + seconds * 1000;
  let it = iteration ?? 0, events = 0, heapEarly = 0, heapLate = 0;
  while (iteration !== undefined ? it === iteration : performance.now() < end) {
    const r = await t.run(new Rng((seed * 0x9e3779b1 + it) >>> 0), t.steps);
    counts[r.outcome]++;
    events += r.events;
    if (BAD.includes(r.outcome) && failures.length < 5) {
      failures.push({ outcome: r.outcome, seed, iteration: it, event: r.event, detail: r.detail });
    }
    it++;
    const frac = (performance.now() - t0) / (seconds * 1000);
    if (iteration === undefined && it % 50 === 0) {
      if (!heapEarly && frac > 0.1) {
        gc();
        heapEarly = Deno.memoryUsage().heapUsed;
      } else if (frac > 0.9 && !heapLate) {
        gc();
        heapLate = Deno.memoryUsage().heapUsed;
      }
    }
  }
  const growth = heapEarly && heapLate ? heapLate / heapEarly - 1 : 0;
  if (growth > 0.25) {
    counts.memory++;
    failures.push({
      outcome: "memory",
      seed,
      iteration: it,
      event: 0,
      detail: `heap grew ${(growth * 100).toFixed(0)}%`,
    });
  }
  return {
    target,
    iterations: iteration !== undefined ? 1 : it,
    events,
    counts,
    failures,
    heapGrowth: growth,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Every target name. */
export const FUZZ_TARGETS: string[] = Object.keys(TARGETS);

const USAGE =
  `usage: deno task fuzz [--target virtio|virtio-config|virtio-race|netfront|xenbus|xenstore|net|blk|blk-config|nbd|blkfront|vhost|all] [--seconds N]
                       [--seed S] [--iteration I] [--json FILE]
  --seconds N    per target (default 10)
  --seed S       PRNG seed (default 1); with --iteration I, replay that one iteration`;

if (import.meta.main) {
  let values;
  try {
    values = parseArgs({
      args: Deno.args,
      options: {
        target: { type: "string" },
        seconds: { type: "string" },
        seed: { type: "string" },
        iteration: { type: "string" },
        json: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }).values;
  } catch (e) {
    console.error(`error: ${(e as Error).message.split(". ")[0]}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const num = (name: string, v: string | undefined, def: number) => {
    if (v === undefined) return def;
    if (!/^\d+$/.test(v)) {
      console.error(`error: --${name} must be a whole number, got '${v}'\n\n${USAGE}`);
      Deno.exit(2);
    }
    return Number(v);
  };
  const target = values.target ?? "all";
  if (target !== "all" && !TARGETS[target]) {
    console.error(`error: unknown target '${target}' (${FUZZ_TARGETS.join(", ")} or all)\n\n${USAGE}`);
    Deno.exit(2);
  }
  const seconds = num("seconds", values.seconds, 10), seed = num("seed", values.seed, 1);
  const iteration = values.iteration === undefined ? undefined : num("iteration", values.iteration, 0);
  const reports: TargetReport[] = [];
  for (const t of target === "all" ? FUZZ_TARGETS : [target]) {
    const r = await fuzzTarget(t, seconds, seed, iteration);
    reports.push(r);
    const c = r.counts;
    console.log(
      `${t.padEnd(14)} ${String(r.iterations).padStart(6)} iterations ${
        String(r.events).padStart(10)
      } events  ` +
        `ok ${c.ok}  clean-break ${c["clean-break"]}  other-exception ${
          c["other-exception"]
        }  hang ${c.hang}  ` +
        `silent ${c.silent}  leak ${c.leak}  memory ${c.memory}  heap ${(r.heapGrowth * 100).toFixed(1)}%`,
    );
    const bad = BAD.reduce((k, o) => k + c[o], 0);
    console.log(`fuzz ${t} (${r.events} events, seed ${seed}) ... ${bad ? "FAILED" : "ok"}`);
    for (const f of r.failures) {
      console.log(
        `  ${f.outcome}: reproduce with --target ${t} --seed ${f.seed} --iteration ${f.iteration} (event ${f.event})\n` +
          `    ${f.detail.split("\n").slice(0, 6).join("\n    ")}`,
      );
    }
  }
  const total = reports.reduce((s, r) => s + r.events, 0);
  const bad = reports.reduce((s, r) => s + BAD.reduce((k, o) => k + r.counts[o], 0), 0);
  console.log(`fuzz: ${total} hostile-run events, ${bad} bad outcomes`);
  if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify({ seed, reports }, null, 2));
  Deno.exit(bad ? 1 : 0);
}
