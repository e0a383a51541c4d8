/**
 * `deno task bench`: pvdrv's speed, always as a ratio against a peer measured in the same run.
 *  1. In-process (bench/, `deno bench`): the driver's TX and RX paths (virtqueue + NIC core) against the device
 *     model doing only ring work, beside a plain typed-array copy loop of the same frames as the baseline.
 *  2. In the VM lab, one boot, one NIC: pvdrv over VFIO vs DPDK's testpmd vs the guest kernel's virtio_net
 *     (AF_PACKET, pktgen): TX, RX and forwarding at 64 and 1514 bytes and batches 1–256, counted by a C tool on the
 *     host, medians of several windows; guest CPU per packet at fixed offered rates (lab/outer/vm_bench.ts).
 *  3. The network host (`--net`): the same NIC under the guest kernel's virtio_net, then under pvdrv, against the
 *     kernel's stack in a namespace: ping RTT p50/p99, UDP echo rate, HTTP requests/s through the TAP bridge.
 *  4. Disks (`--blk`): pvdrv's virtio-blk (polling and MSI-X) beside the guest kernel's virtio_blk on an identical
 *     disk, 4 KiB random and 128 KiB sequential reads and writes: IOPS, MB/s, p50/p99 latency (lab/guest/bench_blk.ts).
 *  5. In the nested Xen lab, one domU, one vif: the domU kernel's xen-netfront vs pvdrv's netfront, TX and RX pps
 *     with 60-byte frames against dom0's xen-netback; and two identical vbds from dom0's xen-blkback: the kernel's
 *     xen-blkfront vs pvdrv's blkfront, the disk jobs of 4 (the lab's tests run first).
 * @module
 */
import { LabError } from "../lab/outer/qemu.ts";
import { runVmBench } from "../lab/outer/vm_bench.ts";
import { FULL_PLAN, QUICK_PLAN } from "../lab/bench_plan.ts";
import { markdownTables, svgPlot } from "../lab/outer/bench_report.ts";
import { runXenLab, XEN_BENCH_SECONDS, xenBenchStep, xenBenchSummary } from "../lab/outer/xen.ts";
import { intArg, parse, runMain, UsageError } from "./lib/common.ts";
import { runInGuest } from "../lab/outer/qemu.ts";
import { buildBlkload } from "../lab/outer/build_c.ts";
import { BLK_JOBS } from "../lab/guest/blk_jobs.ts";
import { runVhostBench, vhostTable } from "../lab/outer/vhost_bench.ts";

const USAGE =
  `usage: deno task bench [--in-process | --vm | --net | --mq | --blk | --vhost | --xen] [--quick] [--json FILE.json]
                         [--seconds N] [--rounds N] [--dom0-preempt]
  --in-process   only the in-process driver cost
  --vm           only the VM lab: pvdrv vs DPDK testpmd (in turn, 3 paired rounds) vs the guest kernel on one
                 NIC, one boot (≈ 12 min)
  --net          only the network host: ping RTT, UDP echo and HTTP requests/s, pvdrv vs the kernel's driver on
                 one NIC, one boot (≈ 3 min)
  --mq           only multi-queue scaling: pvdrv with 1, 2 and 4 queue pairs on a multi-queue TAP NIC whose host
                 side lives in a namespace made for the run, one boot (≈ 1 min)
  --blk          only disks: pvdrv's virtio-blk (polling, MSI-X) vs the guest kernel's virtio_blk on an identical
                 disk, 4 KiB random and 128 KiB sequential reads and writes, one boot (≈ 5 min)
  --vhost        only the host half: the guest kernel's virtio_net served by pvdrv's vhost-user backend, by DPDK's
                 vhost PMD (testpmd) and by QEMU's dgram backend in turn, one boot (≈ 4 min)
  --xen          only the Xen lab comparison with the domU kernel's xen-netfront and xen-blkfront (boots the whole
                 lab, ≈ 8 min)
  --quick        VM lab: one frame size and batch, short windows (checks the machinery, ≈ 2 min)
  --json FILE    VM lab: write the results to FILE.json and a plot to FILE.svg (--net, --mq, --in-process:
                 FILE.json only)
  --seconds N    length of each Xen step and each --vhost cell (default 4)
  --rounds N     paired rounds of --vm (pvdrv and testpmd in turn) and --xen (pvdrv's netfront and the kernel's
                 in turn); ratios are the median of the rounds' ratios (default 3; --quick 2)
  --dom0-preempt --xen: keep dom0's wake-up preemption while it floods the RX steps (the lab's way before the
                 flood ran without it: netback then takes dom0's one vCPU from the sender every frame or two),
                 to compare the two`;

/**
 * The in-process benchmarks: bench/*.bench.ts in a child `deno bench` (a baseline per group), then the same cases
 * in paired rounds (bench/paired.ts: each case's ratio to C as the median of the rounds' ratios, with the spread).
 */
async function inProcess(json?: string): Promise<void> {
  const root = new URL("../", import.meta.url).pathname;
  const st = await new Deno.Command(Deno.execPath(), { args: ["bench", "--allow-all", "bench/"], cwd: root })
    .spawn().status;
  if (!st.success) throw new Error(`deno bench failed (exit ${st.code})`);
  console.log("");
  const args = ["run", "--allow-all", "bench/paired.ts", ...(json ? ["--json", json] : [])];
  const paired = await new Deno.Command(Deno.execPath(), { args, cwd: root }).spawn().status;
  if (!paired.success) throw new Error(`bench/paired.ts failed (exit ${paired.code})`);
}

await runMain(USAGE, async () => {
  const { values } = parse(Deno.args, {
    "in-process": { type: "boolean" },
    vm: { type: "boolean" },
    xen: { type: "boolean" },
    net: { type: "boolean" },
    mq: { type: "boolean" },
    blk: { type: "boolean" },
    vhost: { type: "boolean" },
    quick: { type: "boolean" },
    json: { type: "string" },
    seconds: { type: "string" },
    rounds: { type: "string" },
    "dom0-preempt": { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, false);
  if (values.help) return void console.log(USAGE);
  if (
    [values["in-process"], values.vm, values.xen, values.net, values.mq, values.blk, values.vhost]
      .filter(Boolean).length > 1
  ) {
    throw new UsageError(
      "--in-process, --vm, --net, --mq, --blk, --vhost and --xen each select one part: give at most one",
    );
  }
  if (values.json !== undefined && !values.json.endsWith(".json")) {
    throw new UsageError(
      `--json wants a file name ending in .json (the plot goes beside it as .svg), not '${values.json}'`,
    );
  }
  if (values["dom0-preempt"] && !values.xen) throw new UsageError("--dom0-preempt goes with --xen");
  const seconds = intArg("seconds", values.seconds, XEN_BENCH_SECONDS, 2, 600);
  const rounds = intArg("rounds", values.rounds, 3, 1, 20);
  if (values.xen) return await xenBench(seconds, rounds, values["dom0-preempt"] ?? false);
  if (values.net) return await netBench(values.json);
  if (values.mq) return await mqBench(values.json);
  if (values.blk) return await blkBench(values.json);
  if (values.vhost) return await vhostBench(seconds, values.json);
  if (!values.vm) {
    console.log(
      "== in-process (bench/: the driver against the device model, beside a copy-loop baseline) ==",
    );
    await inProcess(values["in-process"] ? values.json : undefined);
  }
  if (values["in-process"]) return 0;
  const plan = { ...(values.quick ? QUICK_PLAN : FULL_PLAN) };
  if (values.rounds !== undefined) plan.rounds = rounds;
  console.log(
    `\n== VM lab, one boot, NIC 0000:00:06.0: pvdrv (VFIO) vs DPDK testpmd vs the guest kernel; ` +
      `${plan.rounds} rounds of pvdrv and testpmd in turn, ${plan.windows} windows of ${plan.windowSec} s per ` +
      `cell and round ==`,
  );
  const res = await runVmBench(plan);
  console.log("\n" + markdownTables(res));
  if (values.json) {
    Deno.writeTextFileSync(values.json, JSON.stringify(res, null, 1) + "\n");
    const svg = values.json.replace(/\.json$/, ".svg");
    Deno.writeTextFileSync(svg, svgPlot(res));
    console.log(`wrote ${values.json} and ${svg}`);
  }
  if (!values.vm) {
    await netBench(undefined);
    await vhostBench(seconds, undefined);
    return await xenBench(seconds, rounds, false);
  }
});

/** `--vhost`: one boot, three backends in turn on the guest kernel's virtio_net. */
async function vhostBench(seconds: number, json: string | undefined): Promise<number> {
  console.log(
    `\n== host half, one boot: the guest kernel's virtio_net served by pvdrv's vhost-user backend, DPDK's vhost ` +
      `PMD and QEMU's dgram backend in turn; ${seconds} s per cell ==`,
  );
  const r = await runVhostBench(seconds, (l) => {
    if (!l.startsWith("VHOST_CONFIG")) console.log(`  ${l}`);
  });
  console.log("\n" + vhostTable(r.rows));
  if (json) {
    Deno.writeTextFileSync(json, JSON.stringify({ date: new Date().toISOString(), ...r }, null, 1) + "\n");
    console.log(`wrote ${json}`);
  }
  return 0;
}

/** Row values of the network benchmark, from the guest's PVDRV-NETBENCH lines. */
function netTable(rows: Record<string, Record<string, number> | string>[]): string {
  const by = (d: string) =>
    rows.find((r) => r.driver === d) as Record<string, Record<string, number>> | undefined;
  const k = by("kernel"), p = by("pvdrv");
  if (!k || !p) return "(incomplete: no result for one driver)";
  const f = (x: number, d = 3) => x.toFixed(d);
  const line = (name: string, kv: number, pv: number, pp: number | null, lowerBetter: boolean, d = 3) =>
    `| ${name} | ${f(kv, d)} | ${f(pv, d)} | ${pp === null ? "–" : f(pp, d)} | ` +
    `${f(lowerBetter ? kv / pv : pv / kv, 2)}x |`;
  return [
    "| | kernel virtio_net | pvdrv (interrupts) | pvdrv (polling) | pvdrv vs kernel (higher is better) |",
    "|---|---|---|---|---|",
    line("ping RTT p50 (ms)", k.ping.p50, p.ping.p50, p.pingPoll.p50, true),
    line("ping RTT p99 (ms)", k.ping.p99, p.ping.p99, p.pingPoll.p99, true),
    ...(k.pingOneCpu && p.pingOneCpu
      ? [
        line("ping RTT p50, one vCPU (ms)", k.pingOneCpu.p50, p.pingOneCpu.p50, null, true),
        line("ping RTT p99, one vCPU (ms)", k.pingOneCpu.p99, p.pingOneCpu.p99, null, true),
      ]
      : []),
    line("ping loss (%)", k.ping.lossPercent, p.ping.lossPercent, p.pingPoll.lossPercent, true, 1).replace(
      /\| [^|]*x \|$/,
      "| |",
    ),
    line("UDP echo, 64 B, 16 in flight (datagrams/s)", k.udp.pps, p.udp.pps, null, false, 0),
    line("HTTP GET 1000 B, 4 connections (requests/s)", k.http.rps, p.http.rps, null, false, 0),
  ].join("\n");
}

/**
 * Run a benchmark script in one lab boot and collect its `MARKER {json}` lines; print `table(rows)` and, with
 * `json`, write the rows there. Other guest lines are echoed when `echo` is set.
 */
async function guestBench<T>(
  script: string,
  marker: string,
  table: (rows: T[]) => string,
  json: string | undefined,
  opts: { timeoutSec: number; multiQueueTap?: boolean; echo?: boolean },
): Promise<number> {
  const rows: T[] = [];
  const line = new RegExp(`${marker} (\\{.*\\})`);
  const r = await runInGuest(`deno run -A --no-check ${script}`, {
    timeoutSec: opts.timeoutSec,
    multiQueueTap: opts.multiQueueTap,
    onLine: (l) => {
      const m = l.match(line);
      if (m) rows.push(JSON.parse(m[1]));
      else if (opts.echo) console.log(l);
    },
  });
  if (r.code !== 0) {
    throw new Error(`${script} failed in the guest (exit ${r.code}):\n${r.output.slice(-3000)}`);
  }
  console.log(table(rows));
  if (json) {
    Deno.writeTextFileSync(json, JSON.stringify(rows, null, 1) + "\n");
    console.log(`wrote ${json}`);
  }
  return 0;
}

/** One driver's result for one job, from lab/guest/bench_blk.ts. */
interface BlkRow {
  /** "device" (a driver on a disk) or "export" (a kernel NBD device served by pvdrv or nbdkit). */
  path?: string;
  /** The row its job and path compare with (the kernel's virtio_blk; nbdkit). */
  baseline?: boolean;
  mode: string;
  bs: number;
  qd: number;
  driver: string;
  iops: number;
  windows: number[];
  mbps: number;
  p50us: number;
  p99us: number;
}

function blkTable(rows: BlkRow[]): string {
  const out = [
    "| job | driver | IOPS (median, min–max) | MB/s | p50 µs | p99 µs | IOPS vs baseline | p50 vs baseline |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    const path = r.path ?? "device";
    const k = rows.find((x) =>
      (x.baseline ?? x.driver === "kernel") && (x.path ?? "device") === path && x.mode === r.mode &&
      x.bs === r.bs && x.qd === r.qd
    );
    const base = r === k;
    const job = `${r.mode} ${r.bs >= 1024 ? `${r.bs / 1024} KiB` : `${r.bs} B`} QD${r.qd}`;
    const vs = (a: number, b: number | undefined) => (b ? `${(a / b).toFixed(2)}x` : "-");
    out.push(
      `| ${job} | ${r.driver} | ${r.iops} (${Math.min(...r.windows)}–${
        Math.max(...r.windows)
      }) | ${r.mbps} | ` +
        `${r.p50us} | ${r.p99us} | ${base ? "(baseline)" : vs(r.iops, k?.iops)} | ` +
        `${base ? "" : vs(r.p50us, k?.p50us)} |`,
    );
  }
  return out.join("\n");
}

function blkBench(json: string | undefined): Promise<number> {
  buildBlkload();
  console.log(
    "\n== disks, one boot: pvdrv's virtio-blk on 0000:00:0b.0 (VFIO; polling, then MSI-X) and the guest kernel's " +
      "virtio_blk on 0000:00:0d.0 (O_DIRECT, one thread per request in flight); identical 64 MiB raw files; then " +
      "the same load on /dev/nbd0 (pvdrv's NBD export of 0b.0) and /dev/nbd1 (nbdkit over the kernel's disk) ==",
  );
  return guestBench("lab/guest/bench_blk.ts", "PVDRV-BLKBENCH", blkTable, json, { timeoutSec: 1200 });
}

function netBench(json: string | undefined): Promise<number> {
  console.log(
    "\n== network host, one boot, NIC 0000:00:04.0: the guest kernel's virtio_net, then pvdrv (VFIO); the peer is " +
      "the kernel's stack on 0000:00:05.0 in a namespace ==",
  );
  return guestBench("lab/guest/bench_net.ts", "PVDRV-NETBENCH", netTable, json, { timeoutSec: 900 });
}

/** One queue count's result from lab/guest/bench_mq.ts. */
interface MqRow {
  driver: "pvdrv" | "kernel";
  queues: number;
  tx: { median: number; min: number; max: number };
  rx: { median: number; min: number; max: number };
  rxPerQueue?: number[];
}

/** The scaling table: frames/s per queue count, and the gain over one queue pair. */
function mqTable(rows: MqRow[]): string {
  const one = rows.find((r) => r.driver === "pvdrv" && r.queues === 1);
  const kernel = rows.find((r) => r.driver === "kernel");
  const k = (x: number) => `${(x / 1000).toFixed(1)}k`;
  const cell = (c: MqRow["tx"]) => c.min === c.max ? k(c.median) : `${k(c.median)} (${k(c.min)}–${k(c.max)})`;
  const ratio = (x: number, base?: number) => (base ? `${(x / base).toFixed(2)}×` : "–");
  return [
    "| driver | queue pairs | TX 64 B, counted by the host's TAP | vs 1 pair | vs kernel | RX 64 B, 64 flows | vs 1 pair | vs kernel | RX frames per queue |",
    "|---|---:|---|---:|---:|---|---:|---:|---|",
    ...rows.map((r) =>
      `| ${r.driver} | ${r.queues} | ${cell(r.tx)} | ${ratio(r.tx.median, one?.tx.median)} | ` +
      `${ratio(r.tx.median, kernel?.tx.median)} | ${cell(r.rx)} | ${ratio(r.rx.median, one?.rx.median)} | ` +
      `${ratio(r.rx.median, kernel?.rx.median)} | ${r.rxPerQueue?.map(k).join(" / ") ?? "–"} |`
    ),
  ].join("\n");
}

function mqBench(json: string | undefined): Promise<number> {
  console.log(
    "\n== multi-queue, one boot, NIC 0000:00:0a.0 (4 queue pairs on a multi-queue TAP in a namespace made for the " +
      "run): pvdrv with 1, 2 and 4 pairs, one thread; medians of 3 one-second windows (min–max) ==",
  );
  return guestBench("lab/guest/bench_mq.ts", "PVDRV-MQBENCH", mqTable, json, {
    timeoutSec: 600,
    multiQueueTap: true,
    echo: true,
  });
}

async function xenBench(seconds: number, rounds: number, dom0Preempt: boolean): Promise<number> {
  console.log(
    `\n== Xen lab: one vif, the domU kernel's xen-netfront vs pvdrv's netfront; two identical vbds, the kernel's ` +
      `xen-blkfront (O_DIRECT) vs pvdrv's blkfront; ${seconds} s each; the network in ${rounds} paired rounds` +
      `${dom0Preempt ? ", dom0 flooding with wake-up preemption" : ""} ==`,
  );
  try {
    const r = await runXenLab({
      bench: { seconds, diskJobs: BLK_JOBS.length, rounds, dom0Preempt },
      timeoutSec: 1200,
      onLine: (l) => {
        // The rows, the domU benchmark's own progress and errors, and its exit status.
        if (/^(PVDRV-BENCH|DOM0-BENCH|bench: |error|PVDRV-DOMU-(BLK)?BENCH-EXIT)/.test(l)) {
          console.log(`  ${l}`);
        }
      },
    });
    const rows = xenBenchSummary(r);
    for (const l of rows) console.log(`  ${l}`);
    // Every row there: the network's last step and each disk job's (kernel and both pvdrv modes).
    const disks = BLK_JOBS.length * 3, got = Object.keys(r.bench).filter((k) => k.startsWith("blk-")).length;
    if (got < disks) console.log(`  the disk benchmark gave ${got} of ${disks} rows`);
    const last = xenBenchStep("rx-kernel", rounds);
    if (!r.bench[last]) console.log(`  the network benchmark did not finish its ${rounds} rounds`);
    return r.bench[last] && got === disks ? 0 : 1;
  } catch (e) {
    if (e instanceof LabError) throw new Error(e.message);
    throw e;
  }
}
