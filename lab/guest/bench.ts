/**
 * The in-guest half of `deno task bench --vm`: in one boot, the same NIC (0000:00:06.0, whose host end is
 * build/pvwire) driven first by the guest kernel's virtio_net (AF_PACKET through pvpeer, and pktgen), then in
 * rounds by pvdrv over VFIO and by DPDK's testpmd in turn (pvdrv, testpmd, pvdrv, testpmd, …: the plan's
 * `rounds`), so each of their cells is measured next to the other's; forwarding from 0000:00:06.0 to 0000:00:09.0
 * by pvdrv and by testpmd.
 * TX and forwarding are counted by the host (it brackets each phase by this script's PVDRV-PHASE lines); RX and
 * CPU rows are measured here and printed as PVDRV-RESULT lines. The plan comes as JSON in PVDRV_BENCH_PLAN.
 * @module
 */
import { bindDevice } from "../../system/bind.ts";
import { VfioPciFunction } from "../../ffi/pci.ts";
import { type RingFormat, VirtioNet } from "../../drivers/virtio/net.ts";
import { parseMac } from "../../drivers/net/nic.ts";
import { countFrames, forward, generate } from "../../apps/traffic.ts";
import { LAB } from "../topology.ts";
import { kernelInterface, Peer } from "./kernel_peer.ts";
import { Testpmd } from "./testpmd.ts";
import {
  type BenchDriver,
  type BenchPlan,
  type BenchTest,
  type CpuRow,
  FULL_PLAN,
  LINE,
} from "../bench_plan.ts";

const plan: BenchPlan = JSON.parse(Deno.env.get("PVDRV_BENCH_PLAN") ?? JSON.stringify(FULL_PLAN));
const DPDK = Deno.env.get("PVDRV_DPDK") ?? "";
const HOST = "02:00:00:00:00:fe";
const NIC = LAB.vfioWirePeer;
const log = (s: string) => console.error(`bench: ${s}`);
const say = (s: string) => console.log(s);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));
const phaseMs = () => (plan.warmSec + plan.windows * plan.windowSec) * 1000;
/** The round being measured (the kernel's and pktgen's rows are in round 1). */
let round = 1;

/** Busy (non-idle) CPU seconds of the whole guest, from /proc/stat's first line (USER_HZ = 100). */
function busySeconds(): number {
  const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return (total - f[3] - f[4]) / 100;
}

/** A measured phase: the host brackets it (TX and forwarding are counted there). */
async function phase(
  test: BenchTest,
  driver: BenchDriver,
  size: number,
  batch: number,
  run: () => Promise<unknown>,
) {
  log(`${test} ${driver} ${size} B, batch ${batch}, round ${round}`);
  say(`${LINE.phase} ${test} ${driver} ${size} ${batch} ${round}`);
  try {
    await run();
  } finally {
    say(LINE.phaseEnd);
  }
}

/** The marks (performance.now() ms) of the windows of a phase starting now. */
function marks(): number[] {
  const t0 = performance.now() + plan.warmSec * 1000;
  return Array.from({ length: plan.windows + 1 }, (_, i) => t0 + i * plan.windowSec * 1000);
}

/** Per-window rates (frames/s) from counts sampled at `times` (performance.now() ms). */
function rates(counts: number[], times: number[]): number[] {
  return counts.slice(1).map((c, i) => (c - counts[i]) / ((times[i + 1] - times[i]) / 1000));
}

/** Sample `read` at each window mark of a phase starting now; returns per-window rates (frames/s). */
async function sampleWindows(read: () => number | Promise<number>): Promise<number[]> {
  const times: number[] = [];
  const counts = await sampleAt(marks(), read, () => times.push(performance.now()));
  return rates(counts, times);
}

/** Run `fn` while the host blasts `size`-byte test frames at the NIC at `rate` frames/s. */
async function withBlast<T>(rate: number, size: number, fn: () => Promise<T>): Promise<T> {
  say(`${LINE.blast} ${rate} ${size} ${NIC.mac}`);
  try {
    return await fn();
  } finally {
    say(LINE.blastStop);
  }
}

/** Let the ring drain (and QEMU's socket empty) after a blast, before the next phase. */
const drain = () => sleep(300);

/** An RX row: the host blasts `size`-byte frames at the NIC while `measure` counts them. */
async function rxPhase(driver: BenchDriver, size: number, batch: number, measure: () => Promise<number[]>) {
  await phase("rx", driver, size, batch, async () => {
    const windows = await withBlast(plan.offered, size, measure);
    say(
      `${LINE.result} ${
        JSON.stringify({ test: "rx", driver, size, batch, round, windows, countedBy: driver })
      }`,
    );
  });
  await drain();
}

/** A forwarding row: the host blasts 64-byte frames at 0000:00:06.0 while `run` forwards them to 0000:00:09.0. */
async function fwdPhase(driver: BenchDriver, batch: number, run: () => Promise<unknown>) {
  await phase("fwd", driver, 64, batch, () => withBlast(plan.offered, 64, run));
  await drain();
}

/** A CPU row: the host offers `rate` frames/s; `count` samples the receiver at the two marks. */
async function cpuPhase(
  mode: string,
  rate: number,
  count: (marks: number[], onMark: () => void) => Promise<number[]>,
) {
  log(`cpu ${mode} at ${rate} pps`);
  await withBlast(rate, 64, async () => {
    const t0 = performance.now() + plan.warmSec * 1000;
    const ms = [t0, t0 + plan.cpuSec * 1000];
    const busy: number[] = [], times: number[] = [];
    const counts = await count(ms, () => {
      busy.push(busySeconds());
      times.push(performance.now());
    });
    const row: CpuRow = {
      mode,
      rate,
      received: counts[1] - counts[0],
      seconds: (times[1] - times[0]) / 1000,
      busySeconds: busy[1] - busy[0],
    };
    say(`${LINE.result} ${JSON.stringify({ cpu: row })}`);
  });
  await drain();
}

/** Sample `read` at each of `ms`, calling onMark right after each read. */
async function sampleAt(
  ms: number[],
  read: () => number | Promise<number>,
  onMark: () => void,
): Promise<number[]> {
  const out: number[] = [];
  for (const m of ms) {
    await sleep(m - performance.now());
    out.push(await read());
    onMark();
  }
  return out;
}

// ---- 0. The idle guest's CPU (subtracted from the CPU rows) ----
{
  const b0 = busySeconds(), t0 = performance.now();
  await sleep(plan.cpuSec * 1000);
  const row: CpuRow = {
    mode: "idle",
    rate: 0,
    received: 0,
    seconds: (performance.now() - t0) / 1000,
    busySeconds: busySeconds() - b0,
  };
  say(`${LINE.result} ${JSON.stringify({ cpu: row })}`);
}

// ---- 1. The guest kernel's virtio_net on 0000:00:06.0 ----
const k = await kernelInterface(NIC.pci);
for (const size of plan.sizes) {
  for (const batch of plan.batches) {
    await phase("tx", "kernel", size, batch, async () => {
      const p = new Peer([
        "txrate",
        k.name,
        String(phaseMs() / 1000),
        String(size),
        HOST,
        "0",
        String(batch),
      ]);
      await p.result();
    });
  }
}
for (const size of plan.sizes) {
  for (const batch of plan.batches) {
    try {
      await phase("tx", "pktgen", size, batch, () => pktgen(k.name, size, batch, phaseMs()));
    } catch (e) {
      log(`pktgen unavailable: ${(e as Error).message}`);
    }
  }
}
for (const size of plan.sizes) {
  for (const batch of plan.batches) {
    await rxPhase("kernel", size, batch, async () => {
      const p = new Peer(["rxrate", k.name, String(phaseMs() / 1000 + 1), String(batch)]);
      await p.ready;
      const w = await sampleWindows(() => p.progress);
      await p.result();
      return w;
    });
  }
}
for (const rate of plan.cpuRates) {
  await cpuPhase("kernel", rate, async (ms, onMark) => {
    const p = new Peer(["rxrate", k.name, String(plan.warmSec + plan.cpuSec + 1), "32"]);
    await p.ready;
    const c = await sampleAt(ms, () => p.progress, onMark);
    await p.result();
    return c;
  });
}

// ---- 2. pvdrv over VFIO and DPDK testpmd, in turn, round after round ----
// This guest's own lab NICs: safe to take from the kernel.
bindDevice(NIC.pci, "vfio-pci", { force: true });
bindDevice(LAB.vfioForwardOut.pci, "vfio-pci", { force: true });
if (!DPDK) log("PVDRV_DPDK not set: skipping testpmd");
else Deno.writeTextFileSync("/proc/sys/vm/nr_hugepages", "256");
for (round = 1; round <= plan.rounds; round++) {
  // CPU per packet is measured once, in the first round. pvdrv runs on split rings, then on packed ones
  // (the lab's NICs offer both; testpmd takes packed when offered).
  await pvdrvRound(round === 1, "split");
  if (plan.packed) await pvdrvRound(round === 1, "packed");
  if (DPDK) await testpmdRound(round === 1);
}
say(LINE.done);

/** The kernel's packet generator on `ifname` for `ms`, `batch` frames per burst (skb reuse). */
async function pktgen(ifname: string, size: number, batch: number, ms: number): Promise<void> {
  const w = (f: string, s: string) => Deno.writeTextFileSync(`/proc/net/pktgen/${f}`, s + "\n");
  w("kpktgend_0", "rem_device_all");
  w("kpktgend_0", `add_device ${ifname}`);
  // pkt_size counts the 4-byte FCS.
  for (
    const c of [
      "count 0",
      `pkt_size ${size + 4}`,
      `dst_mac ${HOST}`,
      `burst ${batch}`,
      "delay 0",
      "clone_skb 0",
    ]
  ) {
    w(ifname, c);
  }
  const run = new Deno.Command("sh", { args: ["-c", "echo start > /proc/net/pktgen/pgctrl"] }).spawn();
  await sleep(ms);
  w("pgctrl", "stop");
  await run.status;
}

/**
 * pvdrv's cells of one round (TX, RX, forwarding) on `ring`s, then, in the first, its warm-up before and (split
 * rings) CPU rows after.
 */
async function pvdrvRound(first: boolean, ring: RingFormat): Promise<void> {
  const me: BenchDriver = ring === "packed" ? "pvdrv-packed" : "pvdrv";
  const nic = VirtioNet.openPci(VfioPciFunction.open(NIC.pci), { ownsPci: true, ring });
  const out = VirtioNet.openPci(VfioPciFunction.open(LAB.vfioForwardOut.pci), { ownsPci: true, ring });
  try {
    if (nic.ring !== ring || out.ring !== ring) throw new Error(`the lab NICs did not take ${ring} rings`);
    const dst = parseMac(HOST);
    if (first) {
      // Warm-up, not measured: V8 compiles the hot paths in the first seconds (testpmd comes compiled).
      log("pvdrv warm-up (TX, RX and forwarding paths, not measured)");
      const flood = { count: 2 ** 31 - 1, minSize: 64, maxSize: 64, dst, batch: 32, headerOnly: true };
      await generate(nic, { ...flood, durationMs: plan.warmupSec * 1000 });
      await withBlast(plan.offered, 64, async () => {
        const t = performance.now() + plan.warmupSec * 500;
        await countFrames(nic, { batch: 32, marks: [t] });
        await forward(nic, out, { batch: 32, until: t + plan.warmupSec * 500 });
      });
      await drain();
    }
    for (const size of plan.sizes) {
      for (const batch of plan.batches) {
        await phase("tx", me, size, batch, async () => {
          await generate(nic, {
            count: 2 ** 31 - 1,
            minSize: size,
            maxSize: size,
            dst,
            batch,
            durationMs: phaseMs(),
            headerOnly: true,
          });
        });
      }
    }
    for (const size of plan.sizes) {
      for (const batch of plan.batches) {
        await rxPhase(me, size, batch, async () => {
          const times: number[] = [];
          const counts = await countFrames(nic, {
            batch,
            marks: marks(),
            onMark: () => times.push(performance.now()),
          });
          return rates(counts, times);
        });
      }
    }
    for (const batch of plan.batches) {
      await fwdPhase(
        me,
        batch,
        () => forward(nic, out, { batch, until: performance.now() + phaseMs() }),
      );
    }
    if (first && ring === "split") {
      for (const rate of plan.cpuRates) {
        await cpuPhase(
          "pvdrv-poll",
          rate,
          (ms, onMark) => countFrames(nic, { batch: 32, marks: ms, onMark }),
        );
      }
    }
  } finally {
    await nic.close();
    await out.close();
  }
  if (!first || ring !== "split") return;
  const nic2 = VirtioNet.openPci(VfioPciFunction.open(NIC.pci), { ownsPci: true, irq: "msix" });
  try {
    for (const rate of plan.cpuRates) {
      await cpuPhase(
        "pvdrv-irq",
        rate,
        (ms, onMark) => countFrames(nic2, { batch: 32, marks: ms, onMark, interrupts: true }),
      );
    }
  } finally {
    await nic2.close();
  }
}

/** testpmd's cells of one round (TX and RX on one port, then forwarding on two), and CPU rows in the first. */
async function testpmdRound(first: boolean): Promise<void> {
  let tp = await Testpmd.start(DPDK, [NIC.pci]);
  try {
    await tp.cmd(`set eth-peer 0 ${HOST}`);
    await tp.cmd("set fwd txonly");
    for (const size of plan.sizes) {
      await tp.cmd(`set txpkts ${size}`);
      for (const batch of plan.batches) {
        await tp.cmd(`set burst ${batch}`);
        await phase("tx", "testpmd", size, batch, () => tp.forwarding(() => sleep(phaseMs())));
      }
    }
    await tp.cmd("set fwd rxonly");
    for (const size of plan.sizes) {
      for (const batch of plan.batches) {
        await tp.cmd(`set burst ${batch}`);
        await rxPhase(
          "testpmd",
          size,
          batch,
          () => tp.forwarding(() => sampleWindows(() => tp.rxPackets(0))),
        );
      }
    }
    if (first) {
      await tp.cmd("set burst 32");
      for (const rate of plan.cpuRates) {
        await cpuPhase(
          "testpmd",
          rate,
          (ms, onMark) => tp.forwarding(() => sampleAt(ms, () => tp.rxPackets(0), onMark)),
        );
      }
    }
  } finally {
    await tp.quit();
  }
  tp = await Testpmd.start(DPDK, [NIC.pci, LAB.vfioForwardOut.pci]);
  try {
    await tp.cmd("set fwd io");
    for (const batch of plan.batches) {
      await tp.cmd(`set burst ${batch}`);
      await fwdPhase("testpmd", batch, () => tp.forwarding(() => sleep(phaseMs())));
    }
  } finally {
    await tp.quit();
  }
}
