/**
 * The in-guest half of `deno task bench --blk`: the same jobs on two identical virtio-blk disks (64 MiB raw files,
 * two queues) — pvdrv on 0000:00:0b.0 over VFIO (`deno task blk bench`, polling and on MSI-X) and the guest
 * kernel's virtio_blk on 0000:00:0d.0 (build/blkload: O_DIRECT, one thread per outstanding request) — 4 KiB random
 * reads and writes at queue depth 1 and 32, 128 KiB sequential reads and writes at depth 8. One line per driver
 * and job: `PVDRV-BLKBENCH {json}` with IOPS per window (the median is the figure), MB/s, p50 and p99 latency.
 * @module
 */
import { LAB_DISKS } from "../topology.ts";
import { bindDevice } from "../../system/bind.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { commandJson, task } from "./tasks.ts";

const { vfioDisk, kernelDisk } = LAB_DISKS;
const SECONDS = Number(Deno.env.get("PVDRV_BLK_SECONDS") ?? 6), WINDOWS = 3;
/** The jobs: mode, block size, queue depth. */
const JOBS = [
  { mode: "randread", bs: 4096, qd: 1 },
  { mode: "randread", bs: 4096, qd: 32 },
  { mode: "randwrite", bs: 4096, qd: 1 },
  { mode: "randwrite", bs: 4096, qd: 32 },
  { mode: "read", bs: 131072, qd: 8 },
  { mode: "write", bs: 131072, qd: 8 },
];
const BLKLOAD = new URL("../../build/blkload", import.meta.url).pathname;

if (readDevice(vfioDisk.pci).driver !== "vfio-pci") bindDevice(vfioDisk.pci, "vfio-pci");
const kernelDev = readDevice(kernelDisk.pci).blockDevices[0];
if (!kernelDev) throw new Error(`${kernelDisk.pci} has no kernel disk`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

for (const j of JOBS) {
  for (const irq of ["poll", "msix"]) {
    const args = [
      vfioDisk.pci,
      "bench",
      "--seconds",
      `${SECONDS}`,
      "--windows",
      `${WINDOWS}`,
      "--bs",
      `${j.bs}`,
    ];
    args.push("--qd", `${j.qd}`, "--irq", irq, "--json");
    if (j.mode.includes("write")) args.push("--write");
    if (!j.mode.startsWith("rand")) args.push("--seq");
    const r = await commandJson(task("cli/blk.ts", args), `pvdrv ${j.mode}`);
    console.log(`PVDRV-BLKBENCH ${JSON.stringify({ ...j, driver: `pvdrv (${irq})`, ...r })}`);
  }
  const k = await commandJson<{ windows: number[]; p50us: number; p99us: number }>(
    new Deno.Command(BLKLOAD, {
      args: [`/dev/${kernelDev}`, j.mode, `${j.bs}`, `${j.qd}`, `${SECONDS}`, `${WINDOWS}`],
      stdout: "piped",
      stderr: "piped",
    }),
    `blkload ${j.mode}`,
  );
  const iops = median(k.windows);
  console.log(
    `PVDRV-BLKBENCH ${
      JSON.stringify({
        ...j,
        driver: "kernel",
        iops,
        windows: k.windows,
        mbps: +((iops * j.bs) / 1e6).toFixed(1),
        p50us: k.p50us,
        p99us: k.p99us,
      })
    }`,
  );
}
