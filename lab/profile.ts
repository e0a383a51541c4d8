/**
 * Where a run's time goes, from a V8 CPU profile (node:inspector's `Profiler.stop` result): self time per
 * function, largest first, with each one's share. Used by lab/guest/profile_tx.ts (pvdrv's TX path inside the
 * lab VM) and by anyone profiling a hot path in-process.
 * @module
 */
import { Session } from "node:inspector";

/** The parts of a V8 CPU profile read here. */
export interface CpuProfile {
  /** Call-tree nodes. */
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    children?: number[];
  }[];
  /** The node sampled at each tick. */
  samples: number[];
}

/** One function's self time. */
export interface ProfileRow {
  /**
   * "name file:line" ("(anonymous)" for unnamed functions; V8's own entries as it names them, with their caller:
   * "op_now ← generate traffic.ts:92").
   */
  where: string;
  /** Samples in it. */
  samples: number;
  /** Share of all samples (0..1). */
  share: number;
}

/** Self time per function of `p`, largest first, the first `top`. */
export function selfTime(p: CpuProfile, top = 20): ProfileRow[] {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (id: number): string => {
    const f = byId.get(id)!.callFrame;
    return `${f.functionName || "(anonymous)"}${
      f.url ? ` ${f.url.split("/").pop()}:${f.lineNumber + 1}` : ""
    }`;
  };
  const count = new Map<string, number>();
  for (const id of p.samples) {
    const n = byId.get(id);
    if (!n) continue;
    // Native code (builtins, FFI, ops) has no script: its caller says what it is for.
    const up = parent.get(id);
    const key = n.callFrame.url || up === undefined ? name(id) : `${name(id)} ← ${name(up)}`;
    count.set(key, (count.get(key) ?? 0) + 1);
  }
  const total = p.samples.length || 1;
  return [...count].sort((a, b) => b[1] - a[1]).slice(0, top).map(([where, samples]) => ({
    where,
    samples,
    share: samples / total,
  }));
}

/** The rows as a Markdown table. */
export function profileTable(rows: ProfileRow[]): string {
  return [
    "| self time | function |",
    "| ---: | --- |",
    ...rows.map((r) => `| ${(100 * r.share).toFixed(1)}% | ${r.where} |`),
  ]
    .join("\n");
}

/** Run `fn` with `start` called before and `stop` after, on one inspector session; what `stop` returned. */
async function inspected<R>(
  start: (post: Post) => Promise<void>,
  fn: () => Promise<unknown>,
  stop: (post: Post) => Promise<R>,
): Promise<R> {
  const s = new Session();
  s.connect();
  const post: Post = <T>(method: string, params?: object) =>
    new Promise<T>((resolve, reject) =>
      s.post(method, params ?? {}, (e: Error | null, r?: unknown) => (e ? reject(e) : resolve(r as T)))
    );
  try {
    await start(post);
    let failed: { e: unknown } | null = null;
    try {
      await fn();
    } catch (e) {
      failed = { e };
    }
    const r = await stop(post);
    if (failed) throw failed.e;
    return r;
  } finally {
    s.disconnect();
  }
}

type Post = <T>(method: string, params?: object) => Promise<T>;

/** Run `fn` under V8's sampling profiler (every `intervalUs` µs); its CPU profile. */
export function profiled(fn: () => Promise<unknown>, intervalUs = 100): Promise<CpuProfile> {
  return inspected(
    async (post) => {
      await post("Profiler.enable");
      await post("Profiler.setSamplingInterval", { interval: intervalUs });
      await post("Profiler.start");
    },
    fn,
    async (post) => (await post<{ profile: CpuProfile }>("Profiler.stop")).profile,
  );
}

/** The parts of a V8 sampling heap profile read here (`HeapProfiler.stopSampling`). */
export interface HeapProfile {
  /** The allocation tree's root. */
  head: HeapNode;
}

/** One node of a sampling heap profile: a call site and the bytes allocated there. */
export interface HeapNode {
  /** Where. */
  callFrame: { functionName: string; url: string; lineNumber: number };
  /** Bytes sampled as allocated by this frame itself. */
  selfSize: number;
  /** Callees. */
  children: HeapNode[];
}

/**
 * Run `fn` under V8's sampling heap profiler (a sample every `intervalBytes` allocated on average), counting
 * objects the collector has since freed too: where `fn` allocates, not what it keeps.
 */
export function allocationProfiled(fn: () => Promise<unknown>, intervalBytes = 256): Promise<HeapProfile> {
  return inspected(
    async (post) => {
      await post("HeapProfiler.enable");
      await post("HeapProfiler.startSampling", {
        samplingInterval: intervalBytes,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
    },
    fn,
    async (post) => (await post<{ profile: HeapProfile }>("HeapProfiler.stopSampling")).profile,
  );
}

/** Bytes allocated per call site of `p` ("name file:line"), largest first, the first `top`. */
export function allocationSites(p: HeapProfile, top = 15): { where: string; bytes: number }[] {
  const bytes = new Map<string, number>();
  const walk = (n: HeapNode) => {
    if (n.selfSize > 0) {
      const f = n.callFrame;
      const where = `${f.functionName || "(anonymous)"}${
        f.url ? ` ${f.url.split("/").pop()}:${f.lineNumber + 1}` : ""
      }`;
      bytes.set(where, (bytes.get(where) ?? 0) + n.selfSize);
    }
    for (const c of n.children) walk(c);
  };
  walk(p.head);
  return [...bytes].sort((a, b) => b[1] - a[1]).slice(0, top).map(([where, b]) => ({ where, bytes: b }));
}
