// The Xen lab's benchmark, run in the PV domU after the tests (lab/outer/xen.ts): TX and RX packets per second of
// pvdrv's netfront, then of the kernel's own xen-netfront on the same vif, with dom0's pvpeer as the peer, in
// PVDRV_BENCH_ROUNDS paired rounds (pvdrv, kernel, pvdrv, kernel, …; the kernel's driver is unbound from the
// vif between them). Steps of round r > 1 are named "<step>-r<r>". Each
// step is announced in xenstore (data/pvdrv-bench) and starts once dom0 acknowledges it (data/pvdrv-bench-ack);
// dom0 says when it has ended one (data/pvdrv-bench-done).
// Prints "PVDRV-BENCH <step> {json}" for what the domU measures; dom0 prints what it counts.
// pvdrv is driven like pvpeer drives the kernel: TX resends frames written once (txrate), RX only counts (rxrate);
// every byte is verified by the lab's tests, not here.
import { Netfront } from "../../../drivers/xen/netfront.ts";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { Evtchn, Gntalloc } from "../../../ffi/xen.ts";
import { type Nic, type PacketBuffer, parseMac } from "../../../drivers/net/nic.ts";
import { writeFrame } from "../../../apps/frames.ts";
import { PollClock, tick } from "../../../hal/event_loop.ts";
import { XenbusState } from "../../../drivers/xen/xenbus.ts";

const S = Number(Deno.env.get("PVDRV_BENCH_SECONDS") ?? 4);
/** Seconds of unmeasured TX before each TX step (both drivers). */
const WARM_S = 2;
const ROUNDS = Number(Deno.env.get("PVDRV_BENCH_ROUNDS") ?? 1);
const NETFRONT = (Deno.env.get("PVDRV_KERNEL_NETFRONT") ?? "").split(" ").filter(Boolean);
/** The kernel's xen-netfront driver on the xen bus ("vif"), for unbinding and binding vif-0 between rounds. */
const VIF_DRIVER = "/sys/bus/xen/drivers/vif";
const DST = "fe:ff:ff:ff:ff:ff";
const xs = new XenStore(new XenbusDevice());

async function step(name: string): Promise<void> {
  await xs.write("data/pvdrv-bench", name);
  await xs.waitFor("data/pvdrv-bench-ack", (v) => v === name, 60_000);
}

/**
 * Wait until dom0 has ended step `name` (data/pvdrv-bench-done): an RX step's window ends before dom0's flood
 * does, and the next step, or a driver's teardown between rounds, should not meet the rest of it.
 */
async function stepDone(name: string): Promise<void> {
  await xs.waitFor("data/pvdrv-bench-done", (v) => v === name, 60_000);
}

function report(name: string, v: Record<string, number>): void {
  console.log(`PVDRV-BENCH ${name} ${JSON.stringify(v)}`);
}

async function sh(cmd: string, args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args }).output();
  if (!r.success) {
    const err = new TextDecoder().decode(r.stderr).trim();
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${r.code})${err ? `: ${err}` : ""}`);
  }
  return new TextDecoder().decode(r.stdout);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Flood `seconds` of 60-byte frames, each TX buffer written once first (as pvpeer txrate does). */
async function floodTx(
  nic: Nic,
  seconds: number,
): Promise<{ sent: number; pps: number; batches: number; fullPolls: number }> {
  const bufs: PacketBuffer[] = new Array(32), all: PacketBuffer[] = [];
  for (let n; (n = nic.allocTx(bufs, 32)) > 0;) {
    for (let i = 0; i < n; i++) {
      writeFrame(bufs[i].data, 60, all.length, parseMac(DST), nic.mac), all.push(bufs[i]);
    }
  }
  nic.release(all, all.length);
  const clock = new PollClock(), t0 = clock.now, end = t0 + seconds * 1000;
  // Batches sent and polls that found the ring full: which side set the rate (mostly full: the backend).
  let sent = 0, spins = 0, batches = 0;
  // The clock by count (PollClock, ≈ every 4 ms): here a read costs more than a batch (see clockCost).
  while (!clock.advance() || clock.now < end) {
    const n = nic.allocTx(bufs, 32);
    if (n === 0) {
      // Ring full: let the event loop run now and then (setImmediate; a timer sleep is clamped to >= 4 ms and
      // would idle the ring). The backend gets the CPU when the hypervisor schedules it, not by our sleeping.
      if (++spins % 1024 === 0) await tick();
      continue;
    }
    for (let i = 0; i < n; i++) bufs[i].length = 60;
    const k = nic.sendBatch(bufs, n);
    if (k < n) nic.release(bufs.slice(k, n), n - k);
    sent += k;
    batches++;
  }
  const secs = (performance.now() - t0) / 1000;
  for (let i = 0; i < 100 && nic.stats()[0].txPackets < sent; i++) nic.reclaimTx(), await sleep(10);
  return { sent, pps: Math.round(sent / secs), batches, fullPolls: spins };
}

/**
 * Count frames for `seconds` from the first one, or until 0.5 s without any (as pvpeer rxrate does). Polling reads
 * the clock by count (PollClock, as the `recv` task's loop does): in this PV domU a clock read costs ≈ 85 µs
 * (clockCost says so each run: no vDSO clock here), far more than a poll.
 */
async function countRx(nic: Nic, seconds: number, interrupts: boolean, ready: Promise<void>) {
  const out: PacketBuffer[] = new Array(64);
  // Polls that found the ring empty (the backend is the slower side) and full batches (frames waited for us).
  let got = 0, t0 = 0, t1 = 0, timed = 0, empty = 0, waits = 0, polls = 0, emptyPolls = 0, fullBatches = 0;
  await ready;
  const clock = new PollClock(), start = clock.now;
  for (;;) {
    const n = nic.receiveBatch(out, 64);
    if (n > 0) got += n, nic.release(out, n);
    if (t0) {
      polls++;
      if (n === 0) emptyPolls++;
      else if (n === 64) fullBatches++;
    }
    // The first frame and an interrupt-mode poll that found nothing (it may sleep next) read the clock; any other
    // poll only when its count is due.
    if ((interrupts && n === 0) || (!t0 && n > 0) ? (clock.read(), true) : clock.advance()) {
      const now = clock.now;
      if (!t0 && n > 0) t0 = t1 = now, timed = got;
      else if (got > timed) {
        t1 = now, timed = got; // the rate counts the frames seen by the last read that found new ones
        if (t1 - t0 >= seconds * 1000) break;
      } else if (t0 ? now - t1 > 500 : now - start > 10_000) break;
    }
    if (n > 0) continue;
    if (interrupts) {
      // Sleep on the event channel in this thread (one poll(), no thread-pool hop), as `countFrames` does.
      nic.sleepRx(100);
      if (++waits % 64 === 0) await tick();
    } else if (++empty % 4096 === 0) await tick(); // polling: yield rarely
  }
  const pps = t1 > t0 ? Math.round(timed / ((t1 - t0) / 1000)) : 0;
  return { received: got, pps, waits, polls, emptyPolls, fullBatches };
}

/** What one clock read costs in this domU, and the kernel's clocksource (a polling loop reads the clock by count). */
function clockCost(): { clocksource: string; nsPerRead: number } {
  const src = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
  let clocksource = "?";
  try {
    clocksource = Deno.readTextFileSync(src).trim();
  } catch { /* not mounted: reported as "?" */ }
  const reads = 2000, t0 = performance.now();
  let last = t0;
  for (let i = 0; i < reads; i++) last = performance.now();
  return { clocksource, nsPerRead: Math.round(((last - t0) * 1e6) / reads) };
}

try {
  const c = clockCost();
  console.log(`PVDRV-BENCH clock ${JSON.stringify(c)}`);
  for (let round = 1; round <= ROUNDS; round++) {
    // The rule of lab/outer/xen.ts xenBenchStep (not imported: the domU loads as little as it can).
    const name = (step: string) => round === 1 ? step : `${step}-r${round}`;
    await pvdrvRound(name, round);
    await kernelRound(name, round === 1, round === ROUNDS);
  }
} finally {
  // dom0 waits for this step to shut the domain down: it comes on failure too, after the error.
  await xs.write("data/pvdrv-bench", "done");
  await xs.close();
}

// 1. pvdrv's netfront: TX, then RX busy-polling and RX waiting on the event channel.
async function pvdrvRound(name: (step: string) => string, round: number): Promise<void> {
  const grants = new Gntalloc();
  const nf = await Netfront.open(xs, grants, new Evtchn(), { timeoutMs: 60_000 });
  console.log(`bench: pvdrv's netfront connected (round ${round})`);
  try {
    // Events sent to the backend during a step, beside the rates.
    const events = (f: () => Promise<Record<string, number>>) => async () => {
      const before = nf.stats()[0].notifications;
      return { ...(await f()), events: nf.stats()[0].notifications - before };
    };
    // Warmed up first, unmeasured, as the VM bench warms pvdrv up: round 1's flood, on code still being compiled
    // (under TCG, every page of fresh code is translated again), polled up to 12x slower than later rounds.
    await floodTx(nf, WARM_S);
    await step(name("tx-pvdrv"));
    report(name("tx-pvdrv"), await events(() => floodTx(nf, S))());
    for (const [step_, interrupts] of [["rx-pvdrv", false], ["rx-pvdrv-irq", true]] as const) {
      report(name(step_), await events(() => countRx(nf, S, interrupts, step(name(step_))))());
      await stepDone(name(step_));
    }
  } finally {
    await nf.close();
    grants.close();
  }
}

// 2. The kernel's xen-netfront on the same vif: the frontend goes back to Initialising (netback answers InitWait),
// then the driver binds vif-0 and connects it; it is unbound again after the round when another follows.
async function kernelRound(name: (step: string) => string, first: boolean, last: boolean): Promise<void> {
  await xs.write("device/vif/0/state", String(XenbusState.Initialising));
  const backend = await xs.read("device/vif/0/backend");
  await xs.waitFor(`${backend}/state`, (v) => v === String(XenbusState.InitWait), 60_000);
  // The module is loaded once; later rounds bind the driver to vif-0 again.
  if (first) { for (const m of NETFRONT) await sh("insmod", [`/lib/modules/${m}.ko`]); }
  else await sh("sh", ["-c", `echo vif-0 > ${VIF_DRIVER}/bind`]);
  let ifname = "";
  for (let i = 0; i < 600 && !ifname; i++) {
    ifname = [...Deno.readDirSync("/sys/class/net")].map((e) => e.name).find((n) => n !== "lo") ?? "";
    if (!ifname) await new Promise((r) => setTimeout(r, 100));
  }
  if (!ifname) throw new Error("the kernel's xen-netfront made no interface");
  await sh("ip", ["link", "set", ifname, "up"]);
  await xs.waitFor("device/vif/0/state", (v) => v === String(XenbusState.Connected), 60_000);
  console.log(`bench: kernel xen-netfront connected as ${ifname}`);

  await sh("pvpeer", ["txrate", ifname, String(WARM_S), "60", DST]); // the same warm-up, for symmetry
  await step(name("tx-kernel"));
  const ktx = JSON.parse(
    (await sh("pvpeer", ["txrate", ifname, String(S), "60", DST])).trim().split("\n").pop()!,
  );
  report(name("tx-kernel"), { sent: ktx.sent, pps: ktx.pps });

  const peer = new Deno.Command("pvpeer", { args: ["rxrate", ifname, String(S)], stdout: "piped" }).spawn();
  const lines = peer.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("ready")) {
    const { value, done } = await lines.read();
    if (done) break;
    out += value;
  }
  await step(name("rx-kernel"));
  for (;;) {
    const { value, done } = await lines.read();
    if (done) break;
    out += value;
  }
  await peer.status;
  const krx = JSON.parse(out.trim().split("\n").pop()!);
  report(name("rx-kernel"), { received: krx.received, pps: krx.pps });
  await stepDone(name("rx-kernel"));
  if (!last) {
    // Unbinding closes the kernel's frontend (Closed); pvdrv's next open starts again from there.
    console.log("bench: unbinding the kernel's xen-netfront from vif-0 for the next round");
    await sh("sh", ["-c", `echo vif-0 > ${VIF_DRIVER}/unbind`]);
    await xs.waitFor("device/vif/0/state", (v) => v === String(XenbusState.Closed), 60_000);
    console.log(`bench: frontend Closed, backend ${await xs.read(`${backend}/state`)}`);
  }
}
