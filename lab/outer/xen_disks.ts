/**
 * The Xen lab's disks: two virtio-blk disks the outer QEMU gives dom0 on raw files, which dom0's xen-blkback
 * serves to the domU as xvda (pvdrv's blkfront) and xvdb (the kernel's xen-blkfront, for comparison); and the
 * host's check of what blkfront wrote, read from the file outside the whole nested stack.
 * @module
 */
import { firstMismatch, verifyPlan } from "../../apps/disk_verify.ts";

/** The domU's disks: dom0's virtio disks, as xvda (pvdrv's, vbd 51712) and xvdb (the kernel's, vbd 51728). */
export const XEN_DISKS = [
  { file: "xen-disk-pvdrv.img", dom0: "/dev/vda", vdev: "xvda", vbd: 51712 },
  { file: "xen-disk-kernel.img", dom0: "/dev/vdb", vdev: "xvdb", vbd: 51728 },
] as const;
/** Size of each disk. */
export const XEN_DISK_MIB = 64;

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

/** Make fresh sparse disk files in `dir`; returns the QEMU arguments that give them to dom0. */
export function freshDisks(dir: string): string[] {
  Deno.mkdirSync(dir, { recursive: true });
  const args: string[] = [];
  for (const [k, d] of XEN_DISKS.entries()) {
    const f = `${dir}/${d.file}`;
    Deno.writeFileSync(f, new Uint8Array(0));
    Deno.truncateSync(f, XEN_DISK_MIB << 20);
    args.push("-drive", `file=${f},format=raw,if=none,id=xd${k}`, "-device", `virtio-blk-pci,drive=xd${k}`);
  }
  return args;
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
  const file = XEN_DISKS[0].file, f = Deno.openSync(`${dir}/${file}`);
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
