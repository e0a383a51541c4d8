/**
 * Where ping's tail comes from inside the lab VM: `deno task vm -- deno run -A lab/guest/ping_tail.ts [--count N]
 * [--interval MS] [--irq msix|poll]`. The same NIC and peer as `bench --net`'s ping (0000:00:04.0 against the guest
 * kernel's stack on 0000:00:05.0 in a namespace): the guest kernel's ping first, then `deno task ping` through
 * pvdrv (VFIO) with V8's default young generation, as `bench --net` runs it (the tasks' 16 MiB,
 * `DRIVER_V8_FLAGS`), and with one suspect removed at a time: the garbage collector (a young generation too large
 * to fill in the run, so no scavenge happens) and the JIT's warm-up (a long warm-up left out of the figures), then
 * both; twice in turn. Each run counts the collections V8 reported (`--trace-gc`).
 * Whichever change brings the p99 down to the kernel's names the cause. Both drivers also run on one vCPU: the
 * pinging task and every interrupt of both NICs there (`taskset` for the kernel's ping, `--cpu` for pvdrv's), so
 * no round trip waits for the other vCPU to wake. Last, the ping path's allocation sites.
 * @module
 */
import { parseArgs } from "node:util";
import { LAB } from "../topology.ts";
import { NetNs } from "../netns.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { kernelAddress, kernelPing, steerInterrupts } from "./kernel_peer.ts";
import { onlineCpus } from "../../ffi/cpu.ts";
import { bindDevice } from "../../system/bind.ts";
import { pingRun, type PingSummary, SLOWEST_KEPT, summarizePings } from "../../apps/ping.ts";
import { openNic } from "../../system/table.ts";
import { NetHost } from "../../net/host.ts";
import { parseIp } from "../../net/ipv4.ts";
import { allocationProfiled, allocationSites } from "../profile.ts";
import { DRIVER_V8_FLAGS } from "../../hal/event_loop.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { count: { type: "string" }, irq: { type: "string" }, interval: { type: "string" } },
});
const COUNT = Number(values.count ?? 500),
  IRQ = values.irq ?? "msix",
  INTERVAL = Number(values.interval ?? 10);
const PCI = LAB.vfioKernelPeer.pci, PEER = LAB.kernelPeer.pci;
const PV = "10.0.0.2", K = "10.0.0.1";
const ROOT = new URL("../../", import.meta.url).pathname;
const ONE = onlineCpus().at(-1)!; // "one vCPU": the pinging task and every interrupt of both NICs

type Numbers = Record<string, number>;

/** Where a run's slowest replies fell: "#seq ms" each (early ones are the JIT's warm-up). */
const slowText = (slow: { seq: number; rtt: number }[] | undefined): string =>
  (slow ?? []).map((x) => `#${x.seq} ${x.rtt.toFixed(1)}`).join(", ");

// A young generation (MB per semi-space) the run cannot fill: no scavenge happens.
const NO_SCAVENGE = ["--min-semi-space-size=128", "--max-semi-space-size=128"];

/** One run of a table: its name, its figures, and where its slowest replies fell. */
type Run = [name: string, figures: Numbers, slowest: string];

/** One pvdrv run (`name`): its ping summary and the collections V8 reported in it. */
async function pvdrvPing(name: string, v8: string[], warmup: number, extra: string[] = []): Promise<Run> {
  const args = [
    "run",
    "-A",
    "--no-check",
    `--v8-flags=${["--trace-gc", ...v8].join(",")}`,
    `${ROOT}cli/ping.ts`,
  ];
  args.push(PCI, K, "--ip", `${PV}/24`, "--count", String(COUNT), "--interval", String(INTERVAL), "--json");
  args.push("--warmup", String(warmup), "--irq", IRQ, ...extra);
  const r = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" }).output();
  const out = new TextDecoder().decode(r.stdout);
  if (r.code !== 0) {
    throw new Error(`deno task ping exited ${r.code}\n${out}\n${new TextDecoder().decode(r.stderr)}`);
  }
  // V8 writes its trace through C's buffered stdout: the lines are all there, but not in order with the summary.
  const gcs = [
    ...out.matchAll(
      /ms: (Scavenge|Minor Mark-Sweep|Mark-Compact|Mark-sweep)[^,]*,(?: pooled: [\d.]+ MB,)? ([\d.]+) \//g,
    ),
  ];
  // A block of the trace can end mid-line, so the summary may follow part of a trace line: find where it starts.
  const line = out.split("\n").find((l) => l.includes('{"dst":'));
  if (!line) throw new Error(`deno task ping printed no summary\n${out.slice(-2000)}`);
  const summary = JSON.parse(line.slice(line.indexOf('{"dst":'))) as PingSummary;
  const scavenges = gcs.filter((m) => /Scavenge|Minor/.test(m[1])).length;
  return [name, {
    p50: summary.p50,
    p99: summary.p99,
    max: summary.max,
    received: summary.received,
    scavenges,
    fullGcs: gcs.length - scavenges,
    gcPauseMs: gcs.reduce((s, m) => s + Number(m[2]), 0),
  }, slowText(summary.slowest)];
}

const ns = await NetNs.create();
try {
  await ns.adopt(readDevice(PEER).netInterfaces[0], `${K}/24`);
  const k = await kernelAddress(PCI, `${PV}/24`);
  const krtt = await kernelPing(K, COUNT, INTERVAL);
  const putBack = steerInterrupts([PCI, PEER], ONE);
  const k1 = await kernelPing(K, COUNT, INTERVAL, ONE).finally(putBack);
  await k.release();
  const ks = summarizePings(COUNT, krtt, krtt.map((_, i) => i)),
    ks1 = summarizePings(COUNT, k1, k1.map((_, i) => i));
  const rows: Run[] = [
    ["kernel", { p50: ks.p50, p99: ks.p99, max: ks.max }, slowText(ks.slowest)],
    [`kernel, one vCPU (${ONE})`, { p50: ks1.p50, p99: ks1.p99, max: ks1.max }, slowText(ks1.slowest)],
  ];

  bindDevice(PCI, "vfio-pci");
  // In turn, twice, so a slow moment of the machine shows as disagreement between the two rounds.
  for (let round = 1; round <= 2; round++) {
    rows.push(await pvdrvPing(`pvdrv, V8's default young generation (round ${round})`, [], 3));
    rows.push(await pvdrvPing(`pvdrv, as bench --net: 16 MiB (round ${round})`, [...DRIVER_V8_FLAGS], 3));
    // The task and both NICs' interrupts on one vCPU (--cpu steers pvdrv's own): the round trip on one vCPU.
    const back = steerInterrupts([PEER], ONE);
    rows.push(
      await pvdrvPing(`pvdrv, 16 MiB, one vCPU (round ${round})`, [...DRIVER_V8_FLAGS], 3, [
        "--cpu",
        String(ONE),
      ])
        .finally(back),
    );
    rows.push(await pvdrvPing(`pvdrv, no scavenge (round ${round})`, NO_SCAVENGE, 3));
    rows.push(await pvdrvPing(`pvdrv, warm-up 300 (round ${round})`, [], 300));
    rows.push(await pvdrvPing(`pvdrv, both (round ${round})`, NO_SCAVENGE, 300));
  }
  console.log(`ping ${COUNT} x ${INTERVAL} ms, pvdrv --irq ${IRQ}:`);
  console.log("| run | p50 ms | p99 ms | max ms | scavenges | full GCs | GC pauses ms |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const [name, x] of rows) {
    const f = (v: number | undefined, d = 3) => v === undefined ? "–" : v.toFixed(d);
    console.log(
      `| ${name} | ${f(x.p50)} | ${f(x.p99)} | ${f(x.max)} | ${f(x.scavenges, 0)} | ${f(x.fullGcs, 0)} | ${
        f(x.gcPauseMs, 1)
      } |`,
    );
  }
  console.log(`\nthe ${SLOWEST_KEPT} slowest replies of each run (#sequence number, ms):`);
  for (const [name, , text] of rows) console.log(`  ${name}: ${text}`);
  console.log(`PVDRV-PINGTAIL ${JSON.stringify(Object.fromEntries(rows.map(([name, x]) => [name, x])))}`);

  // Where the ping path allocates: the same ping in this process, warmed up, under the sampling heap profiler.
  const nic = await openNic(PCI, { irq: IRQ === "poll" ? "poll" : "msix" });
  const host = NetHost.start(nic, { ip: `${PV}/24`, interrupts: IRQ !== "poll" });
  try {
    const o = { count: 100, intervalMs: 10, size: 56, timeoutMs: 1000 };
    await pingRun(host, parseIp(K), { ...o, count: 300 });
    const profile = await allocationProfiled(() => pingRun(host, parseIp(K), o));
    const sites = allocationSites(profile);
    const total = sites.reduce((s, x) => s + x.bytes, 0);
    console.log(
      `\nallocated per ping (${o.count} pings, sampled; top sites, ${
        (total / o.count).toFixed(0)
      } B in all):`,
    );
    for (const x of sites) console.log(`  ${(x.bytes / o.count).toFixed(0).padStart(6)} B  ${x.where}`);
  } finally {
    await host.close();
    await nic.close();
  }
} finally {
  await ns.close();
  bindDevice(PCI, "kernel");
}
