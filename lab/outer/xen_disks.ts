/**
 * The Xen lab's disks, served to the domU by dom0's xen-blkback: three virtio-blk disks the outer QEMU gives dom0
 * on raw files — xvda (pvdrv's blkfront), xvdb (the kernel's xen-blkfront, for comparison) and xvdc (read-only, a
 * pattern the host wrote) — and xvdd, a loop device over a file in dom0 that dom0 grows when the domU asks; dom0's
 * helper that answers the domU (blkback's counters, the resize); and the host's checks of the files afterwards,
 * outside the whole nested stack.
 * @module
 */
import { fillWrite, firstMismatch, verifyPlan } from "../../apps/disk_verify.ts";
import { BLK_JOBS, jobName } from "../guest/blk_jobs.ts";
import { XEN_RO_SEED, XEN_VBDS, type XenVbd } from "../topology.ts";

/** A disk of the domU's: its vbd, what backs it in dom0 (and on the host), and its access mode. */
export interface XenDisk extends XenVbd {
  /** The raw file on the host behind dom0's virtio disk, or null for dom0's loop device. */
  file: string | null;
  /** The block device in dom0 that xen-blkback serves. */
  dom0: string;
  access: "rw" | "ro";
}

/** The domU's disks, in the order the outer QEMU adds dom0's virtio disks (vda, vdb, vdc). */
export const XEN_DISKS: readonly XenDisk[] = [
  { ...XEN_VBDS.pvdrv, file: "xen-disk-pvdrv.img", dom0: "/dev/vda", access: "rw" },
  { ...XEN_VBDS.kernel, file: "xen-disk-kernel.img", dom0: "/dev/vdb", access: "rw" },
  { ...XEN_VBDS.readOnly, file: "xen-disk-ro.img", dom0: "/dev/vdc", access: "ro" },
  { ...XEN_VBDS.resize, file: null, dom0: "/dev/loop0", access: "rw" },
];

/** dom0's hotplug script for the disks (the disk spec's `script=`). */
export const BLOCK_SCRIPT = "/etc/xen/scripts/pvdrv-block";
/**
 * What Xen's own `block` script does for a block device, and only that (under TCG the stock script, with its
 * locking and sharing checks, outlasts libxl's hotplug timeout): tell xen-blkback the device's major:minor in hex,
 * then report the device connected.
 */
export const BLOCK_HOTPLUG = `#!/bin/sh
[ "$1" = add ] || exit 0
dev=$(xenstore-read "$XENBUS_PATH/params")
xenstore-write "$XENBUS_PATH/physical-device" "$(stat -L -c %t:%T "$dev")" \\
  "$XENBUS_PATH/physical-device-path" "$dev"
xenstore-write "$XENBUS_PATH/hotplug-status" connected
`;

/** The domU config's `disk = [ … ]` line: each disk through {@link BLOCK_SCRIPT}. */
export function domUDiskConfig(): string {
  const spec = (d: XenDisk) =>
    `'format=raw, vdev=${d.vdev}, access=${d.access}, script=${BLOCK_SCRIPT}, target=${d.dom0}'`;
  return `disk = [ ${XEN_DISKS.map(spec).join(", ")} ]`;
}

/**
 * dom0's commands before `xl create`: the resize disk's loop device; blkback told to offer two queues per disk
 * (its default is dom0's CPU count, one here), for the multi-queue test.
 */
export const DOM0_DISK_SETUP = `truncate -s ${XEN_VBDS.resize.mib}M /tmp/resize.img && losetup ${
  XEN_DISKS[3].dom0
} /tmp/resize.img || echo "PVDRV-XL-FAIL losetup"
echo 2 > /sys/module/xen_blkback/parameters/max_queues || echo "PVDRV-XL-FAIL blkback max_queues"`;

/** Where dom0 keeps {@link DISK_HELPER}. */
export const DISK_HELPER_PATH = "/usr/local/bin/pvdrv-disk-helper";
/**
 * dom0's side of the domU's disk requests (run with the domU's id while it lives): the domU writes
 * `data/pvdrv-disk-ask` = "N CMD VBD [MIB]", dom0 answers `data/pvdrv-disk-answer` = "N RESULT".
 *  - `stat VBD`: xen-blkback's own counters for the vbd (statistics/f_req: flushes and barriers; wr_req) and the
 *    flushes dom0's disk under it completed (/sys/block/X/stat, field 16): "F_REQ WR_REQ DEV_FLUSHES".
 *  - `grow VBD MIB`: the loop file grown and the loop device told (`losetup -c`); blkback sees the new size at
 *    its next request and announces it (sectors, then Connected written again).
 */
export const DISK_HELPER = `#!/bin/sh
D=$1 B=/local/domain/$1/data last=""
while xl list pvdrv-domU >/dev/null 2>&1; do
  a=$(xenstore-read $B/pvdrv-disk-ask 2>/dev/null)
  if [ -n "$a" ] && [ "$a" != "$last" ]; then
    last=$a; set -- $a
    S=/sys/bus/xen-backend/devices/vbd-$D-$3/statistics
    case $2 in
      stat) dev=$(xenstore-read /local/domain/0/backend/vbd/$D/$3/physical-device-path)
            r="$(cat $S/f_req) $(cat $S/wr_req) $(awk '{print $16}' /sys/block/\${dev##*/}/stat)";;
      grow) truncate -s "$4M" /tmp/resize.img && losetup -c ${XEN_DISKS[3].dom0} && r=ok || r=failed;;
      *) r=unknown;;
    esac
    xenstore-write $B/pvdrv-disk-answer "$1 $r"
  fi
  sleep 0.2
done
`;

/** The host's pattern on the read-only disk (`mib` MiB of it). */
function readOnlyPattern(mib: number): Uint8Array {
  const out = new Uint8Array(mib << 20);
  fillWrite(out, 0, XEN_RO_SEED);
  return out;
}

/** Make fresh sparse disk files in `dir` (the read-only one filled); returns the QEMU arguments for dom0. */
export function freshDisks(dir: string): string[] {
  Deno.mkdirSync(dir, { recursive: true });
  const args: string[] = [];
  for (const [k, d] of XEN_DISKS.entries()) {
    if (!d.file) continue;
    const f = `${dir}/${d.file}`;
    if (d.access === "ro") {
      Deno.writeFileSync(f, readOnlyPattern(d.mib));
    } else {
      Deno.writeFileSync(f, new Uint8Array(0));
      Deno.truncateSync(f, d.mib << 20);
    }
    args.push("-drive", `file=${f},format=raw,if=none,id=xd${k}`, "-device", `virtio-blk-pci,drive=xd${k}`);
  }
  return args;
}

/** The read-only disk's file still holds exactly the host's pattern (nothing wrote it). */
export function readOnlyFileCheck(dir: string): DiskCheck {
  const d = XEN_DISKS[2], got = Deno.readFileSync(`${dir}/${d.file}`);
  const want = readOnlyPattern(d.mib);
  const at = firstMismatch(got, want);
  return {
    name: "the read-only disk's backing file is unchanged (checked on the host)",
    ok: at < 0,
    detail: at < 0 ? `${d.file}: ${d.mib} MiB as the host wrote them` : `${d.file} differs at byte ${at}`,
  };
}

/** One verdict (the shape of the lab's checks). */
export interface DiskCheck {
  name: string;
  ok: boolean;
  detail: string;
}

/**
 * What pvdrv's blkfront wrote on xvda (`expect`, as the domU reported it), checked in the raw file behind dom0's
 * virtio disk without pvdrv: the domU's blkfront → dom0's xen-blkback → dom0's virtio_blk → this file.
 */
export function backingFileCheck(
  dir: string,
  expect: { mib: number; block: number; seed: number } | null,
): DiskCheck {
  const name = "the disk's backing file holds what blkfront wrote (checked on the host)";
  if (!expect) {
    return { name, ok: false, detail: "the domU never reported what it wrote (PVDRV-XEN-BLK-EXPECT)" };
  }
  const want = verifyPlan(expect.mib << 20, expect.block, expect.seed).expected;
  const file = XEN_DISKS[0].file!, f = Deno.openSync(`${dir}/${file}`);
  const got = new Uint8Array(want.length);
  try {
    for (let n = 0; n < got.length;) {
      const k = f.readSync(got.subarray(n));
      if (!k) break;
      n += k;
    }
  } finally {
    f.close();
  }
  const at = firstMismatch(got, want);
  return {
    name,
    ok: at < 0,
    detail: at < 0 ? `${file}: ${expect.mib} MiB as written` : `${file} differs at byte ${at}`,
  };
}

/**
 * The disk benchmark's rows from a Xen lab run (`bench`: the domU's PVDRV-BENCH reports by step): per job, pvdrv's
 * blkfront (polling and on its event channel) beside the kernel's xen-blkfront, as IOPS and their ratio.
 */
export function xenDiskBenchSummary(bench: Record<string, { iops?: number; p50us?: number }>): string[] {
  const out: string[] = [];
  for (const j of BLK_JOBS) {
    const name = jobName(j), k = bench[`blk-kernel-${name}`]?.iops;
    if (!k) continue;
    const cell = (irq: string) => {
      const p = bench[`blk-pvdrv-${irq}-${name}`]?.iops ?? 0;
      return `pvdrv ${irq} ${p} (${(p / k).toFixed(2)}x)`;
    };
    out.push(`disk ${name}: kernel xen-blkfront ${k} IOPS, ${cell("poll")}, ${cell("evtchn")}`);
  }
  return out;
}
