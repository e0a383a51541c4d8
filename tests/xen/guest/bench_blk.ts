// The Xen lab's disk benchmark, run in the PV domU after the tests (lab/outer/xen.ts): the jobs of `bench --blk`
// on two identical disks that dom0's xen-blkback serves from two virtio disks of dom0's (raw files on the host):
// pvdrv's blkfront on xvda (vbd 51712; polling, then sleeping on its event channel) and the domU kernel's
// xen-blkfront on xvdb (vbd 51728; build/blkload, O_DIRECT). Each job runs pvdrv and the kernel back to back, so
// both see the lab in the same state. Prints "PVDRV-BENCH blk-<driver>-<job> {json}" per row.
// PVDRV_BLK_BENCH_JOBS limits the jobs (the test run takes the first only); PVDRV_BENCH_SECONDS is each run.
import { BLK_JOBS, blkloadJob, jobName, pvdrvJob } from "../../../lab/guest/blk_jobs.ts";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { XEN_VBDS } from "../../../lab/topology.ts";
import { XenbusState } from "../../../drivers/xen/xenbus.ts";

const S = Number(Deno.env.get("PVDRV_BENCH_SECONDS") ?? 4), WINDOWS = 3;
const JOBS = BLK_JOBS.slice(0, Number(Deno.env.get("PVDRV_BLK_BENCH_JOBS") ?? BLK_JOBS.length));
const PV = XEN_VBDS.pvdrv.vbd, KERNEL = XEN_VBDS.kernel.vbd;
const BLKLOAD = "/bin/blkload";
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function sh(cmd: string, args: string[]): Promise<void> {
  const r = await new Deno.Command(cmd, { args, stderr: "inherit" }).output();
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")} failed (exit ${r.code})`);
}

/** Whether the kernel's xen-blkfront is bound to vbd `n`. */
function bound(n: number): boolean {
  try {
    return Deno.readLinkSync(`/sys/bus/xen/devices/vbd-${n}/driver`).endsWith("/vbd");
  } catch {
    return false;
  }
}

/** The kernel block device of vbd `n` once xen-blkfront connected it, or "" after 60 s. */
async function kernelDisk(n: number): Promise<string> {
  for (let i = 0; i < 600; i++) {
    try {
      for (const e of Deno.readDirSync(`/sys/bus/xen/devices/vbd-${n}/block`)) return e.name;
    } catch { /* not yet */ }
    await sleep(100);
  }
  return "";
}

// The kernel's xen-blkfront probes every vbd as it loads, and insmod waits (up to 270 s) for each to connect. A
// vbd pvdrv closed is Closed on both ends, and the kernel's frontend does not move it: pvdrv puts each back to
// Initialising (blkback answers InitWait) first, as the network benchmark does with the vif. The kernel keeps xvdb
// and gives xvda back (unbound, its frontend goes Closed; pvdrv's next open brings the backend back).
const xs = new XenStore(new XenbusDevice());
try {
  for (const v of Object.values(XEN_VBDS)) {
    const front = `device/vbd/${v.vbd}`;
    if (await xs.tryRead(`${front}/state`) === String(XenbusState.Initialising)) continue;
    const backend = await xs.read(`${front}/backend`);
    await xs.write(`${front}/state`, String(XenbusState.Initialising));
    await xs.waitFor(`${backend}/state`, (s) => s === String(XenbusState.InitWait), 30_000);
  }
} finally {
  await xs.close();
}
for (const m of (Deno.env.get("PVDRV_KERNEL_BLKFRONT") ?? "").split(" ").filter(Boolean)) {
  await sh("insmod", [`/lib/modules/${m}.ko`]);
}
const dev = await kernelDisk(KERNEL);
if (!dev) throw new Error(`the kernel's xen-blkfront made no disk for vbd ${KERNEL}`);
if (bound(PV)) Deno.writeTextFileSync("/sys/bus/xen/drivers/vbd/unbind", `vbd-${PV}`);
console.log(`bench: kernel xen-blkfront has vbd ${KERNEL} as /dev/${dev}; pvdrv takes vbd ${PV}`);

for (const j of JOBS) {
  const name = jobName(j);
  for (const irq of ["poll", "evtchn"]) {
    const r = await pvdrvJob(`vbd/${PV}`, j, irq, S, WINDOWS);
    console.log(`PVDRV-BENCH blk-pvdrv-${irq}-${name} ${JSON.stringify({ ...j, ...r })}`);
  }
  const k = await blkloadJob(BLKLOAD, `/dev/${dev}`, j, S, WINDOWS);
  console.log(`PVDRV-BENCH blk-kernel-${name} ${JSON.stringify({ ...j, ...k })}`);
}
