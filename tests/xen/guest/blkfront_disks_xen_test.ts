// Runs inside the PV domU of the Xen lab (lab/outer/xen.ts, lab/outer/xen_disks.ts): pvdrv's blkfront on the lab's
// other disks, with dom0 answering what only it can see (its helper: xen-blkback's counters, the resize).
//  - xvdc, read-only: the pattern the host wrote reads back; writes are refused (and the host checks afterwards
//    that the file is unchanged);
//  - xvda: each flush pvdrv sends reaches xen-blkback (its f_req counter) and dom0's disk below it;
//  - xvdd, a loop device in dom0: grown while pvdrv is Connected, the new size reaches pvdrv and works.
//  - xvdd again, on two queues (dom0's blkback is told to offer two), and exported over NBD by pvdrv: the kernel
//    makes and mounts ext4 on it.
import assert from "assert";
import { openDisk } from "../../../system/table.ts";
import {
  type BlockBuffer,
  BlockOp,
  BlockRequest,
  BlockStatus,
  Completions,
  type Disk,
} from "../../../drivers/block/disk.ts";
import { fillWrite } from "../../../apps/disk_verify.ts";
import { Blkfront } from "../../../drivers/xen/blkfront.ts";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { Running, task } from "../../../lab/guest/tasks.ts";
import { XEN_RO_SEED, XEN_VBDS } from "../../../lab/topology.ts";

const IN_XEN = Deno.env.get("PVDRV_XEN_GUEST") === "1";
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
let asked = 0;

/** Ask dom0's disk helper `cmd` (lab/outer/xen_disks.ts DISK_HELPER); its answer, without the number. */
async function askDom0(cmd: string): Promise<string> {
  const xs = new XenStore(new XenbusDevice());
  try {
    const n = `${Date.now() % 1e6}-${++asked}`;
    await xs.write("data/pvdrv-disk-ask", `${n} ${cmd}`);
    const a = await xs.waitFor("data/pvdrv-disk-answer", (v) => v?.startsWith(`${n} `) ?? false, 30_000);
    return a!.slice(n.length + 1);
  } finally {
    await xs.close();
  }
}

/** xen-blkback's flush and write counters for `vbd`, and the flushes dom0's disk under it completed. */
async function backendStats(vbd: number): Promise<{ fReq: number; wrReq: number; devFlushes: number }> {
  const a = await askDom0(`stat ${vbd}`), v = a.split(" ").map(Number);
  assert.ok(v.length === 3 && v.every((x) => Number.isInteger(x)), `dom0's counters: '${a}'`);
  return { fReq: v[0], wrReq: v[1], devFlushes: v[2] };
}

/** `n` bytes of write `k`'s pattern at disk offset `off`. */
function pattern(off: number, n: number, k: number): Uint8Array {
  const out = new Uint8Array(n);
  fillWrite(out, off, k);
  return out;
}

Deno.test({
  name: "blkfront on a read-only vbd: reads what the host wrote; writes refused, by the library and the CLI",
  ignore: !IN_XEN,
  async fn() {
    const ro = XEN_VBDS.readOnly;
    const disk = await openDisk(`vbd/${ro.vbd}`);
    try {
      assert.ok(disk instanceof Blkfront);
      assert.equal(disk.info.readOnly, true, "blkback's info says VDISK_READONLY (mode r)");
      assert.equal(disk.info.capacity, ro.mib << 20);
      const got = await disk.read(0, ro.mib << 20);
      assert.deepEqual(got, pattern(0, ro.mib << 20, XEN_RO_SEED), "the host's pattern, end to end");
      await assert.rejects(disk.write(4096, new Uint8Array(4096)), /read-only/);
      await assert.rejects(disk.discard(0, 1 << 20), /read-only/);
    } finally {
      await disk.close();
    }
    const r = await task("cli/blk.ts", [`vbd/${ro.vbd}`, "write", "--offset", "0", "--length", "4096"])
      .output();
    const err = new TextDecoder().decode(r.stderr).trim();
    assert.equal(r.code, 1, err);
    assert.match(err, /^error: .*read-only$/m, err);
    assert.doesNotMatch(err, /^\s+at /m, "one line, no stack trace");
  },
});

Deno.test({
  name: "blkfront's flushes reach xen-blkback (its f_req counter) and dom0's disk below it",
  ignore: !IN_XEN,
  async fn() {
    const pv = XEN_VBDS.pvdrv, at = (pv.mib - 8) << 20;
    const disk = await openDisk(`vbd/${pv.vbd}`);
    try {
      assert.ok(disk instanceof Blkfront);
      assert.ok(disk.backendDisk!.flush, "blkback offers feature-flush-cache");
      const s0 = await backendStats(pv.vbd), f0 = disk.stats()[0].flushes;
      for (let i = 0; i < 3; i++) {
        await disk.write(at + (i << 20), pattern(at + (i << 20), 1 << 20, 7 + i));
        await disk.flush();
      }
      const s1 = await backendStats(pv.vbd), f1 = disk.stats()[0].flushes;
      console.log(
        `  blkback f_req ${s0.fReq} → ${s1.fReq}, dom0 disk flushes ${s0.devFlushes} → ${s1.devFlushes}`,
      );
      assert.equal(f1 - f0, 3, "pvdrv counted its three flushes");
      assert.equal(s1.fReq - s0.fReq, 3, "blkback received exactly three flush requests");
      assert.ok(s1.wrReq - s0.wrReq >= 3, `blkback received the writes (${s0.wrReq} → ${s1.wrReq})`);
      assert.ok(s1.devFlushes > s0.devFlushes, "dom0's disk completed flushes for them");
      for (let i = 0; i < 3; i++) {
        const off = at + (i << 20);
        assert.deepEqual(await disk.read(off, 1 << 20), pattern(off, 1 << 20, 7 + i));
      }
    } finally {
      await disk.close();
    }
  },
});

Deno.test({
  name:
    "blkfront: dom0 grows the disk while Connected; the new capacity reaches pvdrv and its new space works",
  ignore: !IN_XEN,
  async fn() {
    const rs = XEN_VBDS.resize, old = rs.mib << 20, grown = rs.grownMib << 20;
    const disk = await openDisk(`vbd/${rs.vbd}`);
    try {
      assert.ok(disk instanceof Blkfront);
      assert.equal(disk.info.capacity, old);
      const tail = pattern(old - (1 << 20), 1 << 20, 3);
      await disk.write(old - (1 << 20), tail);
      assert.equal(disk.configChanged(), false, "nothing changed yet");
      assert.equal(await askDom0(`grow ${rs.vbd} ${rs.grownMib}`), "ok");
      // blkback looks at the size when its thread wakes for a request: keep one coming until the news arrives.
      let seen = false;
      for (let i = 0; i < 100 && !seen; i++) {
        await disk.read(0, 4096);
        seen = disk.configChanged();
        if (!seen) await sleep(100);
      }
      assert.ok(seen, "blkback announced the new size (sectors, then Connected again)");
      assert.equal(disk.info.capacity, grown);
      assert.equal(disk.resizes, 1);
      const fresh = pattern(grown - (1 << 20), 1 << 20, 4);
      await disk.write(grown - (1 << 20), fresh, { fua: true });
      assert.deepEqual(await disk.read(grown - (1 << 20), 1 << 20), fresh, "the grown space reads back");
      assert.deepEqual(await disk.read(old - (1 << 20), 1 << 20), tail, "the old end is intact");
      await assert.rejects(disk.read(grown, 4096), /beyond|capacity|range/);
    } finally {
      await disk.close();
    }
  },
});

/** One 4 KiB request on queue `q` of `disk` (zero-copy); a read returns what it read. */
async function onQueue(
  disk: Disk,
  q: number,
  op: BlockOp,
  off: number,
  data?: Uint8Array,
): Promise<Uint8Array> {
  const bufs: BlockBuffer[] = [], done = new Completions(1), req = new BlockRequest();
  assert.equal(disk.allocBuffers(bufs, 1, q), 1);
  try {
    bufs[0].length = 4096;
    if (data) bufs[0].data.set(data);
    req.io(op as typeof BlockOp.Read, off, bufs, 1, 7);
    assert.equal(disk.submit([req], 1, q), 1);
    let n = 0;
    for (let i = 0; i < 10_000 && n === 0; i++) if ((n = disk.poll(done, 1, q)) === 0) await sleep(1);
    assert.deepEqual([n, done.tags[0], done.status[0]], [1, 7, BlockStatus.Ok], `queue ${q}`);
    return bufs[0].data.slice(0, 4096);
  } finally {
    disk.release(bufs, 1);
  }
}

Deno.test({
  name: "blkfront on two queues (dom0's blkback offers two): each ring carries its own requests",
  ignore: !IN_XEN,
  async fn() {
    const v = XEN_VBDS.resize.vbd;
    const disk = await openDisk(`vbd/${v}`, { queues: 2 });
    const xs = new XenStore(new XenbusDevice());
    try {
      assert.equal(disk.queues, 2);
      assert.equal(await xs.read(`device/vbd/${v}/multi-queue-num-queues`), "2");
      for (const q of [0, 1]) {
        assert.match(await xs.read(`device/vbd/${v}/queue-${q}/event-channel`), /^\d+$/);
      }
      // Written on one queue, read back on the other, both ways.
      for (const [w, r] of [[0, 1], [1, 0]]) {
        const off = (1 + w) << 20, data = pattern(off, 4096, 20 + w);
        await onQueue(disk, w, BlockOp.Write, off, data);
        assert.deepEqual(await onQueue(disk, r, BlockOp.Read, off), data, `written on ${w}, read on ${r}`);
      }
      const st = disk.stats();
      assert.deepEqual(
        st.map((s) => [s.writes, s.reads]),
        [[1, 1], [1, 1]],
        "one write and one read per ring",
      );
    } finally {
      await xs.close();
      await disk.close();
    }
  },
});

/** Run `cmd` with sh; its stdout, or a failure with its output. */
function sh(cmd: string): string {
  const r = new Deno.Command("sh", { args: ["-c", cmd], stdout: "piped", stderr: "piped" }).outputSync();
  const dec = new TextDecoder(), out = dec.decode(r.stdout);
  if (!r.success) throw new Error(`${cmd}: exit ${r.code}\n${out}${dec.decode(r.stderr)}`);
  return out;
}

Deno.test({
  name: "the kernel's ext4 on pvdrv's NBD export of a vbd: mkfs, files, fsck clean, intact after a restart",
  ignore: !IN_XEN,
  async fn() {
    // The export sleeps on the vbd's event channel: the domU's one vCPU also runs the kernel's NBD client.
    const serve = async () => {
      const s = new Running(
        task("cli/nbd.ts", [
          `vbd/${XEN_VBDS.resize.vbd}`,
          "--attach",
          "/dev/nbd0",
          "--irq",
          "evtchn",
          "--json",
        ]),
      );
      await s.waitFor(/"attached":"\/dev\/nbd0"/, 60_000);
      return s;
    };
    let srv = await serve();
    try {
      sh("mkfs.ext4 -q -F /dev/nbd0 && mkdir -p /tmp/nbd-mnt && mount -t ext4 /dev/nbd0 /tmp/nbd-mnt");
      sh(
        "for i in 1 2 3; do dd if=/dev/urandom of=/tmp/nbd-mnt/f$i bs=64k count=$((i * 8)) 2>/dev/null; done",
      );
      sh("cd /tmp/nbd-mnt && sha256sum f1 f2 f3 > /tmp/nbd-sums");
      sh("umount /tmp/nbd-mnt && e2fsck -fn /dev/nbd0");
    } finally {
      assert.equal(await srv.stop("SIGTERM"), 0, srv.text);
    }
    srv = await serve();
    try {
      sh("mount -t ext4 /dev/nbd0 /tmp/nbd-mnt");
      assert.match(sh("cd /tmp/nbd-mnt && sha256sum -c /tmp/nbd-sums"), /f3: OK/);
      sh("umount /tmp/nbd-mnt");
    } finally {
      assert.equal(await srv.stop("SIGTERM"), 0, srv.text);
    }
    assert.match(srv.text, /"requests":[1-9]\d*/, "the session went through pvdrv");
  },
});
