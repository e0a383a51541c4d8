/**
 * virtio-blk against QEMU's real device: VFIO (modern, MSI-X, two queues) and UIO (transitional, INTx), each
 * verified byte by byte and again after reopening; a verify killed with SIGKILL mid-write, then a clean one;
 * bind refusing a disk the guest uses as swap; QEMU's block_resize noticed through the configuration interrupt.
 * The outer side checks the VFIO disk's backing file afterwards (blk-expect.json), without pvdrv.
 */
import assert from "assert";
import { LAB_DISKS } from "../../../lab/topology.ts";
import { probe } from "../../../system/probe.ts";
import { bindDevice } from "../../../system/bind.ts";
import { Running, task, taskJson } from "../../../lab/guest/tasks.ts";
import { ensureBound, guestTest, OUT, qmpRequest } from "./env.ts";
import { openDisk } from "../../../system/table.ts";
import { VirtioBlk } from "../../../drivers/virtio/blk.ts";

const { vfioDisk, uioDisk, kernelDisk } = LAB_DISKS;

guestTest("blk: probe lists the lab's disks; bind refuses a disk used as swap, --force or not", async () => {
  const by = Object.fromEntries(probe().map((e) => [e.address, e]));
  assert.equal(by[vfioDisk.pci]?.kind, "virtio-block (modern)");
  assert.equal(by[uioDisk.pci]?.kind, "virtio-block (transitional)");
  assert.equal(by[kernelDisk.pci]?.supported, true);
  const dev = by[kernelDisk.pci].disks[0];
  assert.ok(dev, "the guest kernel's virtio_blk made a disk");
  const sh = (cmd: string) => new Deno.Command("sh", { args: ["-c", cmd] }).outputSync();
  assert.ok(sh(`mkswap /dev/${dev} && swapon /dev/${dev}`).success, "swap on the kernel's disk");
  try {
    for (const force of [false, true]) {
      assert.throws(
        () => bindDevice(kernelDisk.pci, "vfio-pci", { force }),
        new RegExp(`${dev} is used as swap`),
      );
    }
    assert.match(probe().find((e) => e.address === kernelDisk.pci)!.active, /used as swap: never bound/);
  } finally {
    await new Deno.Command("swapoff", { args: [`/dev/${dev}`] }).output();
  }
});

guestTest(
  "blk: VFIO + MSI-X, two queues: info, then 16 MiB verified, and again after reopening",
  async () => {
    ensureBound(vfioDisk.pci, "vfio-pci");
    const info = await taskJson("cli/blk.ts", [vfioDisk.pci, "info", "--json"]);
    assert.equal(info.capacity, vfioDisk.mib << 20);
    assert.equal(info.serial, vfioDisk.serial);
    assert.equal(info.writeCache, true);
    const r = await taskJson("cli/blk.ts", [
      vfioDisk.pci,
      "verify",
      "--mib",
      "16",
      "--seed",
      "11",
      "--reopen",
      "--irq",
      "msix",
      "--queues",
      "2",
      "--json",
    ]);
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.reopened, true);
    Deno.writeTextFileSync(
      `${OUT}/blk-expect.json`,
      JSON.stringify({ file: vfioDisk.file, mib: 16, seed: 11, block: info.logicalBlockSize }),
    );
  },
);

guestTest("blk: UIO + INTx on the transitional disk: 8 MiB verified, and again after reopening", async () => {
  ensureBound(uioDisk.pci, "uio_pci_generic");
  const r = await taskJson("cli/blk.ts", [
    uioDisk.pci,
    "verify",
    "--mib",
    "8",
    "--seed",
    "12",
    "--reopen",
    "--irq",
    "intx",
    "--json",
  ]);
  assert.equal(r.ok, true, JSON.stringify(r));
});

guestTest(
  "blk: a verify killed with SIGKILL mid-write; the next open resets the disk and verifies clean",
  async () => {
    ensureBound(uioDisk.pci, "uio_pci_generic");
    const victim = new Running(task("cli/blk.ts", [uioDisk.pci, "verify", "--mib", "60", "--seed", "13"]));
    await new Promise((r) => setTimeout(r, 1500));
    victim.child.kill("SIGKILL");
    const st = await victim.child.status;
    assert.equal(st.signal, "SIGKILL", "killed while still writing");
    const r = await taskJson("cli/blk.ts", [uioDisk.pci, "verify", "--mib", "4", "--seed", "14", "--json"]);
    assert.equal(r.ok, true, JSON.stringify(r));
  },
);

guestTest(
  "blk: QEMU's block_resize reaches pvdrv as a config change (MSI-X config vector); the new space works",
  async () => {
    ensureBound(vfioDisk.pci, "vfio-pci");
    const disk = await openDisk(vfioDisk.pci, { irq: "msix" });
    try {
      assert.ok(disk instanceof VirtioBlk);
      assert.equal(disk.info.capacity, vfioDisk.mib << 20);
      assert.equal(disk.configChanged(), false, "nothing changed yet");
      const grown = (vfioDisk.mib + 32) << 20;
      await qmpRequest("block_resize", { device: "vfioDisk", size: grown });
      let seen = false;
      for (let i = 0; i < 100 && !seen; i++) {
        seen = disk.configChanged();
        if (!seen) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(seen, "the configuration interrupt arrived");
      assert.equal(disk.info.capacity, grown);
      const at = grown - (1 << 20), data = new Uint8Array(1 << 20).map((_, i) => (i * 7) & 0xff);
      await disk.write(at, data, { fua: true });
      assert.deepEqual(await disk.read(at, data.length), data, "the grown space reads back");
    } finally {
      await disk.close();
    }
  },
);
