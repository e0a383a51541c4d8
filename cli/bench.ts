/**
 * `deno task bench`: pvdrv's speed, always as a ratio against a peer measured in the same run.
 *  1. In-process (bench/, `deno bench`): the driver's TX and RX paths (virtqueue + NIC core) against the device
 *     model doing only ring work, beside a plain typed-array copy loop of the same frames as the baseline.
 *  2. In the VM lab, one boot, one NIC: the guest kernel's virtio_net (AF_PACKET, pktgen) vs pvdrv over VFIO —
 *     TX and RX pps with 64-byte frames, and guest CPU time per packet at a fixed offered rate.
 *  3. In the nested Xen lab, one domU, one vif: the domU kernel's xen-netfront vs pvdrv's netfront, TX and RX pps
 *     with 60-byte frames against dom0's xen-netback (the lab's tests run first).
 * @module
 */
import { HostPeer, LabError, runInGuest } from "../lab/qemu.ts";
import { runXenLab, XEN_BENCH_SECONDS, xenBenchSummary } from "../lab/xen.ts";
import { intArg, parse, runMain, UsageError } from "./common.ts";

const USAGE = `usage: deno task bench [--in-process | --vm | --xen] [--seconds N]
  --in-process   only the in-process driver cost
  --vm           only the VM comparison with the guest kernel's virtio_net
  --xen          only the Xen lab comparison with the domU kernel's xen-netfront (boots the whole lab, ≈ 2 min)
  --seconds N    length of each VM measurement (default 10; Xen steps: 4)`;

/** The in-process benchmarks (bench/*.bench.ts, Deno.bench with a baseline per group), in a child `deno bench`. */
async function inProcess(): Promise<void> {
  const root = new URL("../", import.meta.url).pathname;
  const st = await new Deno.Command(Deno.execPath(), { args: ["bench", "--allow-all", "bench/"], cwd: root })
    .spawn().status;
  if (!st.success) throw new Error(`deno bench failed (exit ${st.code})`);
}

await runMain(USAGE, async () => {
  const { values } = parse(Deno.args, {
    "in-process": { type: "boolean" },
    vm: { type: "boolean" },
    xen: { type: "boolean" },
    seconds: { type: "string" },
    help: { type: "boolean", short: "h" },
  }, false);
  if (values.help) return void console.log(USAGE);
  const seconds = intArg("seconds", values.seconds, 10, 2, 600);
  if ([values["in-process"], values.vm, values.xen].filter(Boolean).length > 1) {
    throw new UsageError("--in-process, --vm and --xen each select one part: give at most one");
  }
  if (values.xen) return await xenBench(values.seconds ? seconds : XEN_BENCH_SECONDS);
  if (!values.vm) {
    console.log(
      "== in-process (bench/: the driver against the device model, beside a copy-loop baseline) ==",
    );
    await inProcess();
  }
  if (values["in-process"]) return 0;
  console.log(`\n== VM lab: the same NIC, guest kernel vs pvdrv, 64-byte frames, ${seconds} s each ==`);
  let out = "";
  // The host sink counts what actually left QEMU, per phase (the guest names the phase in /out/bench-phase).
  const sink = new HostPeer();
  const counts: Record<string, number> = {};
  let outDir = "";
  let phase = "idle";
  const watch = setInterval(() => {
    try {
      if (outDir) phase = Deno.readTextFileSync(`${outDir}/bench-phase`);
    } catch { /* not yet */ }
  }, 50);
  const draining = sink.receive(() => counts[phase] = (counts[phase] ?? 0) + 1);
  try {
    const run = await runInGuest(`PVDRV_BENCH_SECONDS=${seconds} deno run -A --no-check cli/bench_guest.ts`, {
      hostPeerPort: sink.port,
      guestPortForHost: sink.guestPort,
      onLine: (l) => {
        if (l.startsWith("PVDRV-BENCH ")) out = l.slice(12);
        else console.log(`  ${l}`);
      },
      onOutDir: (d) => outDir = d,
    });
    if (run.code !== 0 || !out) throw new Error(`guest bench failed (exit ${run.code})`);
  } catch (e) {
    if (e instanceof LabError) throw new Error(e.message);
    throw e;
  } finally {
    clearInterval(watch);
    sink.close();
    await draining;
  }
  const r = JSON.parse(out);
  const k = (x: number) => `${(x / 1000).toFixed(1)}k`;
  const row = (name: string, pps: number, base: number) =>
    console.log(`  ${name.padEnd(34)} ${k(pps).padStart(8)} pps   ${(pps / base).toFixed(2)}x`);
  console.log("  TX into a UDP sink on the host (ratio to kernel AF_PACKET sendmmsg x32):");
  row("kernel AF_PACKET", r.kernelTx.pps, r.kernelTx.pps);
  if (r.pktgenTx) row("kernel pktgen (burst 32)", r.pktgenTx.pps, r.kernelTx.pps);
  row("pvdrv (VFIO, batch 32)", r.pvdrvTx32.pps, r.kernelTx.pps);
  row("pvdrv (VFIO, batch 256)", r.pvdrvTx256.pps, r.kernelTx.pps);
  console.log(
    `  frames the host sink counted per phase (a ${seconds} s window each; the sink may lag at high rates):`,
  );
  console.log(`    ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(", ")}`);
  console.log("  RX (ratio to kernel AF_PACKET recvmmsg x32; offered by the kernel peer NIC):");
  row(`kernel AF_PACKET (offered ${k(r.kernelRxOffered.pps)})`, r.kernelRx.pps, r.kernelRx.pps);
  row(`pvdrv (offered ${k(r.pvdrvRxOffered.pps)})`, r.pvdrvRx.pps, r.kernelRx.pps);
  const us = (x: { cpuSeconds: number; sent: number }) => (x.cpuSeconds * 1e6) / x.sent;
  console.log(
    `  CPU per packet at a fixed offered rate (${k(r.kernelTxFixed.sent / r.kernelTxFixed.seconds)} pps TX):`,
  );
  console.log(
    `    kernel AF_PACKET ${us(r.kernelTxFixed).toFixed(1)} µs   pvdrv ${
      us(r.pvdrvTxFixed).toFixed(1)
    } µs   ratio ${(us(r.pvdrvTxFixed) / us(r.kernelTxFixed)).toFixed(2)}x`,
  );
  console.log(`\nraw: ${out}`);
  if (!values.vm) return await xenBench(values.seconds ? seconds : XEN_BENCH_SECONDS);
});

async function xenBench(seconds: number): Promise<number> {
  console.log(
    `\n== Xen lab: one vif, the domU kernel's xen-netfront vs pvdrv's netfront, ${seconds} s each ==`,
  );
  try {
    const r = await runXenLab({
      benchSeconds: seconds,
      onLine: (l) => {
        if (/^(PVDRV-BENCH|DOM0-BENCH)/.test(l)) console.log(`  ${l}`);
      },
    });
    const rows = xenBenchSummary(r);
    for (const l of rows) console.log(`  ${l}`);
    return r.bench["rx-kernel"] ? 0 : 1;
  } catch (e) {
    if (e instanceof LabError) throw new Error(e.message);
    throw e;
  }
}
