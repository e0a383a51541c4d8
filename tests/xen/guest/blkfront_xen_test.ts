// Runs inside the PV domU of the Xen lab (lab/outer/xen.ts), against dom0's real xen-blkback serving a virtio
// disk the outer QEMU gives dom0 on a raw file. First a verify killed mid-write and a clean one after it; last,
// pvdrv's blkfront writes the pattern the outer host reads from that file afterwards, outside the whole nested
// stack (PVDRV-XEN-BLK-EXPECT): nothing may write the disk after it.
import assert from "assert";
import { openDisk } from "../../../system/table.ts";
import { probeXen } from "../../../system/xen_probe.ts";
import { checkDisk, verifyDisk, verifyPlan } from "../../../apps/disk_verify.ts";
import { Blkfront } from "../../../drivers/xen/blkfront.ts";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { Running, task, taskJson } from "../../../lab/guest/tasks.ts";
import { XEN_VBDS } from "../../../lab/topology.ts";

const IN_XEN = Deno.env.get("PVDRV_XEN_GUEST") === "1";
/** The vbd pvdrv drives (xvda); xvdb is the kernel's, for the benchmark. */
const VBD = XEN_VBDS.pvdrv.vbd;
/** The whole disk, at random offsets and sizes, then read back here and, after the run, on the host. */
const MIB = XEN_VBDS.pvdrv.mib, SEED = 2024;

Deno.test({
  name:
    "blkfront: a verify killed with SIGKILL mid-write; the next open closes the stale backend and verifies",
  ignore: !IN_XEN,
  async fn() {
    const victim = new Running(task("cli/blk.ts", [`vbd/${VBD}`, "verify", "--mib", "48", "--seed", "7"]));
    // Kill it once it is connected and writing: our state Connected, then a moment of writes.
    const xs = new XenStore(new XenbusDevice());
    try {
      const state = () => xs.tryRead(`device/vbd/${VBD}/state`);
      for (let i = 0; i < 600 && await state() !== "4"; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(await state(), "4", `the victim connected:\n${victim.text}`);
      await new Promise((r) => setTimeout(r, 2000));
      victim.child.kill("SIGKILL");
      const st = await victim.child.status;
      assert.equal(st.signal, "SIGKILL", "killed while still writing");
      // The dead frontend left its state Connected; the backend learnt of the death by gntalloc's unmap notify.
      console.log(
        `  after the kill: frontend ${await state()}, backend ${await xs.tryRead(
          `/local/domain/0/backend/vbd/1/${VBD}/state`,
        )}`,
      );
    } finally {
      await xs.close();
    }
    const r = await taskJson("cli/blk.ts", [`vbd/${VBD}`, "verify", "--mib", "4", "--seed", "8", "--json"]);
    assert.equal(r.ok, true, JSON.stringify(r));
  },
});

Deno.test({
  name:
    `blkfront ⇄ dom0's xen-blkback: Connected with the features negotiated, ${MIB} MiB verified, reopened`,
  ignore: !IN_XEN,
  async fn() {
    const x = probeXen();
    const vbd = x.devices.find((d) => d.nodename === `device/vbd/${VBD}`);
    assert.ok(vbd, `vbd ${VBD} on the xen bus`);
    assert.equal(vbd.driver, null, "no kernel driver holds it");
    const t0 = performance.now();
    let disk = await openDisk(`vbd/${VBD}`);
    const plan = verifyPlan(MIB << 20, 512, SEED);
    try {
      assert.ok(disk instanceof Blkfront);
      const i = disk.info, b = disk.backendDisk!;
      console.log(
        `  connected to ${disk.backend} in ${((performance.now() - t0) / 1000).toFixed(2)} s: ` +
          `${i.capacity} bytes, sector ${i.logicalBlockSize}, ${i.maxSegments} segments/request, ` +
          `depth ${i.queueDepth}, flush ${b.flush}, barrier ${b.barrier}, discard ${b.discard}, ` +
          `persistent ${b.persistent}`,
      );
      assert.equal(i.capacity, MIB << 20, `the ${MIB} MiB disk dom0 was given`);
      assert.equal(i.readOnly, false);
      assert.ok(i.maxSegments > 11, "blkback offers indirect segments");
      const r = await verifyDisk(disk, plan);
      assert.equal(r.mismatchAt, -1, "every byte read back");
      console.log(`  verified: ${r.writes} writes, ${r.bytes >> 20} MiB in ${r.seconds.toFixed(1)} s`);
      await disk.flush();
    } finally {
      await disk.close();
    }
    // Reopen: a new handshake with the same backend, and the data is still there.
    disk = await openDisk(`vbd/${VBD}`);
    try {
      assert.equal(await checkDisk(disk, plan.expected), -1, "the pattern survived close and reopen");
    } finally {
      await disk.close();
    }
    console.log(`PVDRV-XEN-BLK-EXPECT ${JSON.stringify({ mib: MIB, block: 512, seed: SEED })}`);
  },
});
