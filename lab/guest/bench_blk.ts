/**
 * The in-guest half of `deno task bench --blk`: the same jobs on two identical virtio-blk disks (64 MiB raw files,
 * two queues) — pvdrv on 0000:00:0b.0 over VFIO (`deno task blk bench`, polling and on MSI-X) and the guest
 * kernel's virtio_blk on 0000:00:0d.0 (build/blkload: O_DIRECT, one thread per outstanding request) — 4 KiB random
 * reads and writes at queue depth 1 and 32, 128 KiB sequential reads and writes at depth 8. Then the export path:
 * the same jobs by build/blkload on /dev/nbd0, served by pvdrv's NBD export of 0000:00:0b.0 (polling, then on
 * MSI-X), beside /dev/nbd1, served by nbdkit's file plugin (Debian) over the kernel's disk; both attached by
 * Debian's nbd-client over Unix sockets, one connection each. One line per driver and job: `PVDRV-BLKBENCH {json}`
 * with IOPS per window (the median is the figure), MB/s, p50 and p99 latency; `path` says device or export,
 * `baseline` marks the row the others of its job and path are compared with.
 * @module
 */
import { LAB_DISKS, NBDKIT_FILE_PLUGIN } from "../topology.ts";
import { bindDevice } from "../../system/bind.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { Running, task } from "./tasks.ts";
import { BLK_JOBS, type BlkJob, blkloadJob, pvdrvJob } from "./blk_jobs.ts";

const { vfioDisk, kernelDisk } = LAB_DISKS;
const SECONDS = Number(Deno.env.get("PVDRV_BLK_SECONDS") ?? 6), WINDOWS = 3;
const BLKLOAD = new URL("../../build/blkload", import.meta.url).pathname;

if (readDevice(vfioDisk.pci).driver !== "vfio-pci") bindDevice(vfioDisk.pci, "vfio-pci");
const kernelDev = readDevice(kernelDisk.pci).blockDevices[0];
if (!kernelDev) throw new Error(`${kernelDisk.pci} has no kernel disk`);

/** One blkload run of job `j` on block device `dev`: the result line for `driver`. */
async function blkload(
  dev: string,
  j: BlkJob,
  driver: string,
  path: string,
  baseline: boolean,
): Promise<string> {
  const r = await blkloadJob(BLKLOAD, dev, j, SECONDS, WINDOWS);
  return `PVDRV-BLKBENCH ${JSON.stringify({ ...j, driver, path, baseline, ...r })}`;
}

/** Run `cmd args`, failing with its output. */
function sh(cmd: string, args: string[]): void {
  const r = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  const dec = new TextDecoder();
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")}: ${dec.decode(r.stdout)}${dec.decode(r.stderr)}`);
}

/** Wait until `path` exists (a server's socket). */
async function socketUp(path: string, what: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      if (Deno.statSync(path).isSocket) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not open ${path} within 30 s`);
}

for (const j of BLK_JOBS) {
  for (const irq of ["poll", "msix"]) {
    const r = await pvdrvJob(vfioDisk.pci, j, irq, SECONDS, WINDOWS);
    const row = { ...j, driver: `pvdrv (${irq})`, path: "device", baseline: false, ...r };
    console.log(`PVDRV-BLKBENCH ${JSON.stringify(row)}`);
  }
  console.log(await blkload(`/dev/${kernelDev}`, j, "kernel", "device", true));
}

// The export path: pvdrv's NBD export (polling, then sleeping on MSI-X) and nbdkit, each behind a kernel NBD
// device attached by nbd-client; the rows are printed per job at the end.
const PV_SOCK = "/tmp/bench-pvdrv-nbd.sock", KIT_SOCK = "/tmp/bench-nbdkit.sock";
const rows: string[][] = BLK_JOBS.map(() => []);
const collect = async (dev: string, driver: string, baseline: boolean) => {
  for (const [k, j] of BLK_JOBS.entries()) rows[k].push(await blkload(dev, j, driver, "export", baseline));
};

/** Attach `dev` to the server on `sock`, run every job on it, detach. */
async function exportJobs(sock: string, dev: string, driver: string, baseline: boolean): Promise<void> {
  sh("nbd-client", ["-unix", sock, dev, "-b", "4096"]);
  try {
    await collect(dev, driver, baseline);
  } finally {
    sh("nbd-client", ["-d", dev]);
  }
}

for (const irq of ["poll", "msix"]) {
  const pv = new Running(task("cli/nbd.ts", [vfioDisk.pci, "--socket", PV_SOCK, "--irq", irq, "--json"]));
  try {
    await pv.waitFor(/"serving"/, 60_000);
    await exportJobs(PV_SOCK, "/dev/nbd0", `pvdrv NBD export (${irq})`, false);
  } finally {
    await pv.stop();
  }
}
// cache=none: nbdkit drops what it read or wrote from the page cache, as pvdrv has none.
const kit = new Running(
  new Deno.Command("nbdkit", {
    args: ["-f", "-U", KIT_SOCK, NBDKIT_FILE_PLUGIN, `file=/dev/${kernelDev}`, "cache=none"],
    stdout: "piped",
    stderr: "piped",
  }),
);
try {
  await socketUp(KIT_SOCK, "nbdkit");
  await exportJobs(KIT_SOCK, "/dev/nbd1", "nbdkit", true);
} finally {
  await kit.stop();
}
for (const r of rows) for (const line of r) console.log(line);
