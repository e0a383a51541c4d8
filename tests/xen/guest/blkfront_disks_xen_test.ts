// Runs inside the PV domU of the Xen lab (lab/outer/xen.ts, lab/outer/xen_disks.ts): pvdrv's blkfront on the lab's
// other disks, with dom0 answering what only it can see (its helper: xen-blkback's counters, the resize).
//  - xvdc, read-only: the pattern the host wrote reads back; writes are refused (and the host checks afterwards
//    that the file is unchanged);
//  - xvda: each flush pvdrv sends reaches xen-blkback (its f_req counter) and dom0's disk below it;
//  - xvdd, a loop device in dom0: grown while pvdrv is Connected, the new size reaches pvdrv and works.
import assert from "assert";
import { openDisk } from "../../../system/table.ts";
import { fillWrite } from "../../../apps/disk_verify.ts";
import { Blkfront } from "../../../drivers/xen/blkfront.ts";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { task } from "../../../lab/guest/tasks.ts";
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
