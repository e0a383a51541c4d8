/**
 * Host CPU time of a process's threads, from /proc: what each of QEMU's vCPU threads got of the host while a
 * benchmark step ran (under TCG, a guest vCPU is one host thread, and this machine has two cores for them all).
 * @module
 */

/** One thread's name and CPU time (utime + stime, clock ticks). */
export interface ThreadTicks {
  name: string;
  ticks: number;
}

/**
 * A process's or thread's name and CPU time from its /proc `stat` line. The name is in parentheses and may hold
 * spaces: the fields after the last ")" start at field 3 (state); utime and stime are fields 14 and 15 (proc(5)).
 */
export function statTicks(stat: string): ThreadTicks {
  const close = stat.lastIndexOf(")"), name = stat.slice(stat.indexOf("(") + 1, close);
  const f = stat.slice(close + 2).split(" ");
  return { name, ticks: Number(f[11]) + Number(f[12]) };
}

/** CPU time of each thread of process `pid`, by thread id (empty when the process is gone). */
export function threadTicks(pid: number, proc = "/proc"): Map<number, ThreadTicks> {
  const out = new Map<number, ThreadTicks>();
  let tids: string[];
  try {
    tids = [...Deno.readDirSync(`${proc}/${pid}/task`)].map((e) => e.name);
  } catch {
    return out; // the process is gone
  }
  for (const tid of tids) {
    try {
      const t = statTicks(Deno.readTextFileSync(`${proc}/${pid}/task/${tid}/stat`));
      if (Number.isFinite(t.ticks)) out.set(Number(tid), t);
    } catch { /* the thread ended */ }
  }
  return out;
}

/** The pid of a running process whose command line holds every one of `parts`, or null. */
export function findProcess(parts: string[], proc = "/proc"): number | null {
  for (const e of Deno.readDirSync(proc)) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = Deno.readTextFileSync(`${proc}/${e.name}/cmdline`).split("\0").join(" ");
      if (parts.every((p) => cmd.includes(p))) return Number(e.name);
    } catch { /* gone */ }
  }
  return null;
}

/**
 * Per thread name, the share of one host core (0–100 and up) the threads of that name got between two
 * {@link threadTicks} samples `seconds` apart, each thread counted from its own first sample (a thread that ended
 * in between is left out, one that started counts whole); names not kept by `keep` are summed as "other".
 * `hz` is the kernel's clock tick rate.
 */
export function cpuShares(
  before: Map<number, ThreadTicks>,
  after: Map<number, ThreadTicks>,
  seconds: number,
  keep: (name: string) => boolean,
  hz = 100,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [tid, t] of after) {
    const key = keep(t.name) ? t.name : "other", d = t.ticks - (before.get(tid)?.ticks ?? 0);
    out[key] = (out[key] ?? 0) + Math.max(0, d);
  }
  for (const k of Object.keys(out)) out[k] = Math.round((100 * out[k]) / hz / seconds);
  return out;
}
