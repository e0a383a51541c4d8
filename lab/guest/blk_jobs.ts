/**
 * The disk benchmark's jobs and its two measurers, shared by the QEMU lab (`bench --blk`: virtio-blk) and the Xen
 * lab (`bench --xen`: blkfront beside the kernel's xen-blkfront): pvdrv's `deno task blk … bench` on a disk it
 * drives, and build/blkload (C: O_DIRECT, one thread per outstanding request) on a kernel block device. Both print
 * IOPS per window; the median is the figure.
 * @module
 */
import { commandJson, task } from "./tasks.ts";

/** One job: access pattern, block size (bytes), queue depth. */
export interface BlkJob {
  mode: "randread" | "randwrite" | "read" | "write";
  bs: number;
  qd: number;
}

/** 4 KiB random reads and writes at depth 1 and 32, 128 KiB sequential reads and writes at depth 8. */
export const BLK_JOBS: BlkJob[] = [
  { mode: "randread", bs: 4096, qd: 1 },
  { mode: "randread", bs: 4096, qd: 32 },
  { mode: "randwrite", bs: 4096, qd: 1 },
  { mode: "randwrite", bs: 4096, qd: 32 },
  { mode: "read", bs: 131072, qd: 8 },
  { mode: "write", bs: 131072, qd: 8 },
];

/** A short name for a job (`randread-4k-qd1`), for report keys. */
export function jobName(j: BlkJob): string {
  return `${j.mode}-${j.bs >> 10}k-qd${j.qd}`;
}

/** What both measurers report of a job. */
export interface BlkResult {
  iops: number;
  windows: number[];
  mbps: number;
  p50us: number;
  p99us: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** build/blkload on kernel block device `dev` (`/dev/…`) for `seconds`, split into `windows`. */
export async function blkloadJob(
  blkload: string,
  dev: string,
  j: BlkJob,
  seconds: number,
  windows: number,
): Promise<BlkResult> {
  const k = await commandJson<{ windows: number[]; p50us: number; p99us: number }>(
    new Deno.Command(blkload, {
      args: [dev, j.mode, `${j.bs}`, `${j.qd}`, `${seconds}`, `${windows}`],
      stdout: "piped",
      stderr: "piped",
    }),
    `blkload ${j.mode} on ${dev}`,
  );
  const iops = median(k.windows);
  return {
    iops,
    windows: k.windows,
    mbps: +((iops * j.bs) / 1e6).toFixed(1),
    p50us: k.p50us,
    p99us: k.p99us,
  };
}

/** pvdrv's `blk <disk> bench` with `irq` (poll, or the disk's interrupt: msix for virtio, evtchn for Xen). */
export async function pvdrvJob(
  disk: string,
  j: BlkJob,
  irq: string,
  seconds: number,
  windows: number,
): Promise<BlkResult> {
  const args = [disk, "bench", "--seconds", `${seconds}`, "--windows", `${windows}`, "--bs", `${j.bs}`];
  args.push("--qd", `${j.qd}`, "--irq", irq, "--json");
  if (j.mode.includes("write")) args.push("--write");
  if (!j.mode.startsWith("rand")) args.push("--seq");
  return await commandJson<BlkResult>(task("cli/blk.ts", args), `pvdrv ${j.mode} on ${disk}`);
}
