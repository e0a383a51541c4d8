/**
 * `deno task bench`: pvdrv's speed, always as a ratio against a peer measured in the same run.
 *  1. In-process (bench/, `deno bench`): the driver's TX and RX paths (virtqueue + NIC core) against the device
 *     model doing only ring work, beside a plain typed-array copy loop of the same frames as the baseline.
 *  2. In the VM lab, one boot, one NIC: pvdrv over VFIO vs DPDK's testpmd vs the guest kernel's virtio_net
 *     (AF_PACKET, pktgen): TX, RX and forwarding at 64 and 1514 bytes and batches 1–256, counted by a C tool on the
 *     host, medians of several windows; guest CPU per packet at fixed offered rates (lab/vm_bench.ts).
 *  3. In the nested Xen lab, one domU, one vif: the domU kernel's xen-netfront vs pvdrv's netfront, TX and RX pps
 *     with 60-byte frames against dom0's xen-netback (the lab's tests run first).
 * @module
 */
import { LabError } from "../lab/qemu.ts";
import { runVmBench } from "../lab/vm_bench.ts";
import { FULL_PLAN, QUICK_PLAN } from "../lab/bench_plan.ts";
import { markdownTables, svgPlot } from "../lab/bench_report.ts";
import { runXenLab, XEN_BENCH_SECONDS, xenBenchSummary } from "../lab/xen.ts";
import { intArg, parse, runMain, UsageError } from "./common.ts";

const USAGE = `usage: deno task bench [--in-process | --vm | --xen] [--quick] [--json FILE.json] [--seconds N]
  --in-process   only the in-process driver cost
  --vm           only the VM lab: pvdrv vs DPDK testpmd vs the guest kernel on one NIC, one boot (≈ 8 min)
  --xen          only the Xen lab comparison with the domU kernel's xen-netfront (boots the whole lab, ≈ 2 min)
  --quick        VM lab: one frame size and batch, short windows (checks the machinery, ≈ 2 min)
  --json FILE    VM lab: write the results to FILE.json and a plot to FILE.svg
  --seconds N    length of each Xen step (default 4)`;

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
    quick: { type: "boolean" },
    json: { type: "string" },
    seconds: { type: "string" },
    help: { type: "boolean", short: "h" },
  }, false);
  if (values.help) return void console.log(USAGE);
  if ([values["in-process"], values.vm, values.xen].filter(Boolean).length > 1) {
    throw new UsageError("--in-process, --vm and --xen each select one part: give at most one");
  }
  if (values.json !== undefined && !values.json.endsWith(".json")) {
    throw new UsageError(
      `--json wants a file name ending in .json (the plot goes beside it as .svg), not '${values.json}'`,
    );
  }
  const seconds = intArg("seconds", values.seconds, XEN_BENCH_SECONDS, 2, 600);
  if (values.xen) return await xenBench(seconds);
  if (!values.vm) {
    console.log(
      "== in-process (bench/: the driver against the device model, beside a copy-loop baseline) ==",
    );
    await inProcess();
  }
  if (values["in-process"]) return 0;
  const plan = values.quick ? QUICK_PLAN : FULL_PLAN;
  console.log(
    `\n== VM lab, one boot, NIC 0000:00:06.0: pvdrv (VFIO) vs DPDK testpmd vs the guest kernel; ` +
      `${plan.windows} windows of ${plan.windowSec} s per cell ==`,
  );
  const res = await runVmBench(plan);
  console.log("\n" + markdownTables(res));
  if (values.json) {
    Deno.writeTextFileSync(values.json, JSON.stringify(res, null, 1) + "\n");
    const svg = values.json.replace(/\.json$/, ".svg");
    Deno.writeTextFileSync(svg, svgPlot(res));
    console.log(`wrote ${values.json} and ${svg}`);
  }
  if (!values.vm) return await xenBench(seconds);
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
