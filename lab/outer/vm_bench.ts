/**
 * The host half of `deno task bench --vm`: boots the lab once with build/pvwire on the host ends of 0000:00:06.0
 * and 0000:00:09.0, runs lab/guest/bench.ts there, follows its PVDRV-PHASE lines on the host's clock, and turns the
 * host's counters (TX, forwarding, offered rates) and the guest's own rows (RX, CPU) into one result.
 * @module
 */
import { LabError, runInGuest } from "./qemu.ts";
import { summarize, windowRates, WireTraffic } from "./wire_traffic.ts";
import { type BenchPlan, type BenchRow, type CpuRow, LINE } from "../bench_plan.ts";
import { type DpdkBuild, ensureDpdk, guestPath } from "./dpdk.ts";

/** Everything one `bench --vm` run measured. */
export interface VmBenchResult {
  /** The plan it ran. */
  plan: BenchPlan;
  /** When (ISO time). */
  date: string;
  /** DPDK version used (empty when it could not be prepared). */
  dpdk: string;
  /** One row per (test, driver, size, batch, round). */
  rows: BenchRow[];
  /** CPU per packet rows. */
  cpu: CpuRow[];
}

interface OpenPhase {
  key: string[];
  start: number;
}

/** Run the VM benchmark; `onLine` sees the guest's progress lines. */
export async function runVmBench(
  plan: BenchPlan,
  onLine: (line: string) => void = (l) => console.log(`  ${l}`),
): Promise<VmBenchResult> {
  let dpdk: DpdkBuild | undefined;
  try {
    dpdk = await ensureDpdk();
  } catch (e) {
    onLine(`DPDK unavailable, testpmd rows will be missing: ${(e as Error).message}`);
  }
  const host = new WireTraffic();
  const rows: BenchRow[] = [], cpu: CpuRow[] = [];
  const phases: { key: string[]; start: number; end: number }[] = [];
  const guestRx = new Map<string, number[]>();
  let open: OpenPhase | null = null, done = false;
  const handle = (line: string) => {
    if (line.startsWith(LINE.phaseEnd)) {
      if (open) phases.push({ ...open, end: host.now() });
      open = null;
    } else if (line.startsWith(LINE.phase + " ")) {
      open = { key: line.split(" ").slice(1), start: host.now() };
    } else if (line.startsWith(LINE.blastStop)) {
      host.stopBlast();
    } else if (line.startsWith(LINE.blast + " ")) {
      const [rate, size, mac] = line.split(" ").slice(1);
      host.blast(Number(rate), Number(size), mac);
    } else if (line.startsWith(LINE.result + " ")) {
      const r = JSON.parse(line.slice(LINE.result.length + 1));
      if (r.cpu) cpu.push(r.cpu);
      else guestRx.set([r.test, r.driver, r.size, r.batch, r.round].join(" "), r.windows);
    } else if (line === LINE.done) {
      done = true;
    } else {
      onLine(line);
    }
  };
  try {
    const env = [
      `PVDRV_BENCH_PLAN='${JSON.stringify(plan)}'`,
      dpdk ? `PVDRV_DPDK=${guestPath(dpdk.dir)}` : "",
    ].join(" ");
    const run = await runInGuest(`${env} deno run -A --no-check lab/guest/bench.ts`, {
      wirePeerPort: host.sink1Port,
      forwardSinkPort: host.sink2Port,
      guestPortForWire: host.guestPort,
      memoryMb: 2048,
      timeoutSec: 1800,
      onLine: handle,
    });
    if (run.code !== 0 || !done) throw new Error(`the guest half of the benchmark failed (exit ${run.code})`);
  } catch (e) {
    if (e instanceof LabError) throw new Error(e.message);
    throw e;
  } finally {
    await host.close();
  }
  for (const p of phases) {
    const [test, driver, size, batch, round] = p.key;
    const from = p.start + plan.warmSec, to = p.end;
    const row = { test, driver, size: Number(size), batch: Number(batch), round: Number(round) } as BenchRow;
    if (test === "rx" || test === "fwd") {
      row.offered = summarize(windowRates(host.samples, (s) => s.blasted, from, to, plan.windows)).median;
    }
    if (test === "rx") {
      row.windows = guestRx.get(p.key.join(" ")) ?? [];
      row.countedBy = `the receiver (${driver === "kernel" ? "AF_PACKET recvmmsg" : driver})`;
    } else {
      const sink = test === "tx" ? (s: { sink1: number }) => s.sink1 : (s: { sink2: number }) => s.sink2;
      row.windows = windowRates(host.samples, sink, from, to, plan.windows);
      row.countedBy = "host sink";
    }
    rows.push(row);
  }
  return { plan, date: new Date().toISOString(), dpdk: dpdk?.version ?? "", rows, cpu };
}
