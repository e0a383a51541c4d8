/** virtio-blk (drivers/virtio/blk.ts) on the disk class core, against the virtio-blk device model. */
import assert from "assert";
import { VirtioBlk } from "../../drivers/virtio/blk.ts";
import { BLK_F } from "../../drivers/virtio/features.ts";
import { BLK_T } from "../../drivers/virtio/blk_wire.ts";
import {
  type BlockBuffer,
  BlockOp,
  BlockRequest,
  BlockStatus,
  Completions,
} from "../../drivers/block/disk.ts";
import { isPvdrvError } from "../../hal/errors.ts";
import { type BlkModelOptions, VirtioBlkModel } from "../models/virtio_blk_device.ts";

function open(opts: BlkModelOptions = {}, blk: Parameters<typeof VirtioBlk.openPci>[1] = {}) {
  const model = new VirtioBlkModel(opts);
  const disk = VirtioBlk.openPci(model.pci(), blk);
  return { model, disk };
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

Deno.test("virtio-blk: the config becomes DiskInfo; features named as block bits", async () => {
  const { disk } = open({ sectors: 20480, blkSize: 4096, physExp: 0, segMax: 4, queues: 2 }, { queues: 4 });
  const i = disk.info;
  assert.equal(i.capacity, 20480 * 512);
  assert.equal(i.logicalBlockSize, 4096);
  assert.equal(i.physicalBlockSize, 4096);
  assert.equal(i.maxSegments, 4);
  assert.equal(i.maxTransferBytes, 4 * 65536);
  assert.equal(i.writeCache, true);
  assert.equal(i.discard, true);
  assert.equal(i.discardAlignment, 4096);
  assert.equal(disk.queues, 2, "capped by num_queues");
  assert.ok(disk.featureNames().includes("FLUSH") && disk.featureNames().includes("DISCARD"));
  assert.equal(await disk.serial(), "pvdrv-model-disk");
  await disk.close();
});

Deno.test("virtio-blk: writes and reads of any size land byte-exact on the model's disk, several in flight", async () => {
  const { model, disk } = open({ sectors: 16384 }, { maxSegments: 4 });
  for (
    const [off, len, seed] of [[0, 512, 1], [4096, 65536, 2], [1 << 20, 700 * 1024, 3], [512 * 7, 512 * 3, 4]]
  ) {
    const data = pattern(len, seed);
    await disk.write(off, data);
    assert.deepEqual(model.disk.subarray(off, off + len), data, `write of ${len} at ${off}`);
    assert.deepEqual(await disk.read(off, len), data, `read of ${len} at ${off}`);
  }
  // 700 KiB is more than one request (4 x 64 KiB): it went out as several, each within the limits.
  assert.ok(model.served.filter((r) => r.type === BLK_T.OUT).length >= 5);
  assert.ok(model.served.every((r) => r.descriptors <= 4 + 2));
  await disk.close();
});

Deno.test("virtio-blk: zero-copy batches: one doorbell, tags back, buffers the caller's again", async () => {
  const { model, disk } = open();
  const bufs: BlockBuffer[] = [];
  assert.equal(disk.allocBuffers(bufs, 8), 8);
  const reqs = bufs.map((b, k) => {
    b.length = 4096;
    b.data.fill(k + 1, 0, 4096);
    return new BlockRequest().io(BlockOp.Write, k * 4096, [b], 1, 100 + k);
  });
  const before = model.notifies[0];
  assert.equal(disk.submit(reqs, 8), 8);
  assert.equal(model.notifies[0] - before, 1, "one doorbell for the batch");
  assert.equal(disk.inFlight(), 8, "in flight until polled");
  const done = new Completions(16);
  assert.equal(disk.poll(done, 16), 8);
  assert.deepEqual([...done.tags.subarray(0, 8)].sort(), [100, 101, 102, 103, 104, 105, 106, 107]);
  assert.ok([...done.status.subarray(0, 8)].every((s) => s === BlockStatus.Ok));
  assert.equal(disk.inFlight(), 0);
  for (const b of bufs) assert.equal(b.pool.owner(b), "app");
  for (let k = 0; k < 8; k++) assert.equal(model.disk[k * 4096 + 10], k + 1);
  disk.release(bufs, 8);
  assert.equal(disk.stats()[0].writes, 8);
  assert.equal(disk.stats()[0].bytesWritten, 8 * 4096);
  await disk.close();
});

Deno.test("virtio-blk: every request is checked before anything is posted", async () => {
  const { model, disk } = open({ sectors: 64 }, { maxSegments: 2 });
  const bufs: BlockBuffer[] = [];
  disk.allocBuffers(bufs, 4);
  for (const b of bufs) b.length = 512;
  const good = new BlockRequest().io(BlockOp.Write, 0, bufs, 1);
  const cases: [string, BlockRequest, RegExp][] = [
    ["unaligned offset", new BlockRequest().io(BlockOp.Read, 100, bufs, 1), /multiples of 512/],
    ["past the end", new BlockRequest().io(BlockOp.Read, 63 * 512, bufs, 2), /end past the disk/],
    ["too many buffers", new BlockRequest().io(BlockOp.Read, 0, bufs, 3), /1\.\.2 buffers/],
    ["no buffers", new BlockRequest().io(BlockOp.Read, 0, bufs, 0), /1\.\.2 buffers/],
    ["negative offset", new BlockRequest().io(BlockOp.Read, -512, bufs, 1), /bad offset/],
  ];
  const lengthLie = new BlockRequest().io(BlockOp.Read, 0, bufs, 1);
  lengthLie.length = 1024;
  cases.push(["length not the buffers'", lengthLie, /buffers hold 512 bytes, the request 1024/]);
  const unknown = new BlockRequest().io(BlockOp.Read, 0, bufs, 1);
  unknown.op = 9 as BlockOp;
  cases.push(["unknown op", unknown, /unknown block op/]);
  for (const [what, r, re] of cases) {
    assert.throws(() => disk.submit([good, r], 2), re, what);
  }
  // A buffer the caller does not hold (released) or from elsewhere.
  disk.release(bufs.slice(3), 1);
  assert.throws(
    () => disk.submit([new BlockRequest().io(BlockOp.Write, 0, bufs.slice(3), 1)], 1),
    (e) => isPvdrvError(e, "disk") && /not one the caller holds/.test(e.message),
  );
  assert.equal(model.served.length, 0, "nothing reached the device");
  for (const b of bufs.slice(0, 3)) assert.equal(b.pool.owner(b), "app");
  disk.release(bufs, 3);
  await disk.close();
});

Deno.test("virtio-blk: read-only disks refuse writes, discards and write-zeroes; unsupported ops are named", async () => {
  const ro = open({ features: BLK_F.RO | BLK_F.BLK_SIZE | BLK_F.SEG_MAX | (1n << 32n) });
  assert.equal(ro.disk.info.readOnly, true);
  await assert.rejects(
    () => ro.disk.write(0, new Uint8Array(512)),
    (e) => isPvdrvError(e, "disk") && /read-only/.test(e.message),
  );
  await assert.rejects(() => ro.disk.discard(0, 4096), /read-only/);
  assert.deepEqual(await ro.disk.read(0, 512), new Uint8Array(512));
  assert.equal(ro.disk.info.discard, false);
  await ro.disk.close();
  const plain = open({ features: BLK_F.SEG_MAX | (1n << 32n) });
  await assert.rejects(() => plain.disk.discard(0, 4096), /does not support discard/);
  await assert.rejects(() => plain.disk.writeZeroes(0, 4096), /does not support write-zeroes/);
  await plain.disk.close();
});

Deno.test("virtio-blk: a read or write refused before posting gives its buffers back (none stay held)", async () => {
  const free = (d: VirtioBlk) => {
    const out: BlockBuffer[] = [];
    const n = d.allocBuffers(out, 1 << 16);
    d.release(out, n);
    return n;
  };
  const ro = open({ features: BLK_F.RO | BLK_F.BLK_SIZE | BLK_F.SEG_MAX | (1n << 32n) });
  const all = free(ro.disk);
  assert.ok(all > 16, `${all} buffers`);
  await assert.rejects(() => ro.disk.write(0, new Uint8Array(64 << 10)), /read-only/);
  assert.equal(free(ro.disk), all, "the refused write's buffers came back");
  await assert.rejects(() => ro.disk.read(ro.disk.info.capacity - 512, 4096), /end past the disk/);
  assert.equal(free(ro.disk), all, "the refused read's buffers came back");
  await ro.disk.close();
});

Deno.test("virtio-blk: a flush makes writes durable; FUA writes are durable when they complete", async () => {
  const { model, disk } = open();
  await disk.write(0, pattern(4096, 9));
  assert.deepEqual(model.durable.subarray(0, 4096), new Uint8Array(4096), "cached, not yet durable");
  await disk.flush();
  assert.deepEqual(model.durable.subarray(0, 4096), pattern(4096, 9));
  await disk.write(8192, pattern(4096, 10), { fua: true });
  assert.deepEqual(
    model.durable.subarray(8192, 8192 + 4096),
    pattern(4096, 10),
    "FUA: durable at completion",
  );
  const types = model.served.map((r) => r.type);
  assert.deepEqual(types.slice(-2), [BLK_T.OUT, BLK_T.FLUSH], "the FUA write's flush follows it");
  await disk.close();
  // Without a volatile cache a flush has nothing to do: it completes without the device.
  const wt = open({ writeback: 0 });
  assert.equal(wt.disk.info.writeCache, false);
  await wt.disk.write(0, pattern(512, 1));
  assert.deepEqual(wt.model.durable.subarray(0, 512), pattern(512, 1), "write-through");
  await wt.disk.flush();
  assert.ok(!wt.model.served.some((r) => r.type === BLK_T.FLUSH));
  await wt.disk.close();
});

Deno.test("virtio-blk: discard and write-zeroes zero their range", async () => {
  const { model, disk } = open();
  await disk.write(0, pattern(65536, 3));
  await disk.discard(4096, 8192);
  await disk.writeZeroes(32768, 4096, { unmap: true });
  const want = pattern(65536, 3);
  want.fill(0, 4096, 4096 + 8192);
  want.fill(0, 32768, 32768 + 4096);
  assert.deepEqual(await disk.read(0, 65536), want);
  assert.deepEqual(model.disk.subarray(0, 65536), want, "on the device too");
  assert.throws(
    () =>
      disk.submit([Object.assign(new BlockRequest(), { op: BlockOp.Discard, offset: 512, length: 4096 })], 1),
    /discard offset 512 is not a multiple of 4096/,
  );
  await disk.close();
});

Deno.test("virtio-blk: an I/O error is reported for that request; the disk goes on", async () => {
  const { model, disk } = open();
  model.statusFor = (t) => (t === BLK_T.IN ? 1 : undefined);
  await assert.rejects(() => disk.read(0, 4096), (e) => isPvdrvError(e, "disk") && e.code === "EIO");
  model.statusFor = null;
  await disk.write(0, pattern(512, 5));
  assert.deepEqual(await disk.read(0, 512), pattern(512, 5));
  assert.equal(disk.stats()[0].errors, 1);
  await disk.close();
});

Deno.test("virtio-blk: a hostile device breaks the queue with a clear error, never corrupts or leaks", async () => {
  const cases: [string, (m: VirtioBlkModel) => void, RegExp][] = [
    ["status outside the spec", (m) => void (m.statusFor = () => 7), /wrote status 7/],
    ["status left unwritten", (m) => void (m.skipStatus = true), /wrote status 255/],
    ["a request completed twice", (m) => void (m.completeTwice = true), /moved used\.idx|does not own/],
    ["used length past the buffers", (m) => void (m.usedLen = 1 << 20), /bytes into a/],
  ];
  for (const [what, harm, re] of cases) {
    const { model, disk } = open();
    harm(model);
    const bufs: BlockBuffer[] = [];
    disk.allocBuffers(bufs, 2);
    bufs[0].length = bufs[1].length = 4096;
    disk.submit([
      new BlockRequest().io(BlockOp.Read, 0, bufs, 1, 1),
      new BlockRequest().io(BlockOp.Read, 4096, bufs.slice(1), 1, 2),
    ], 2);
    const done = new Completions(4);
    assert.throws(
      () => {
        for (let i = 0; i < 3; i++) disk.poll(done, 4);
      },
      re,
      what,
    );
    assert.throws(() => disk.checkHealth(), re, `${what}: the queue stays broken`);
    assert.throws(() => disk.submit([new BlockRequest().io(BlockOp.Read, 0, bufs, 1)], 1), re);
    await disk.close();
    assert.equal(model.status, 0, `${what}: the device was reset at close`);
  }
  // A used element for a request never posted, while one is in flight.
  const { model, disk } = open();
  model.hold = true;
  const bufs: BlockBuffer[] = [];
  disk.allocBuffers(bufs, 1);
  bufs[0].length = 512;
  disk.submit([new BlockRequest().io(BlockOp.Read, 0, bufs, 1)], 1);
  model.forgeUsed(0, 5, 1);
  assert.throws(() => disk.poll(new Completions(1), 1), /descriptor id 5, which it does not own/);
  await disk.close();
});

Deno.test("virtio-blk: bad device configs are refused at open, and the device is told", () => {
  const cases: [BlkModelOptions, RegExp][] = [
    [{ blkSize: 100 }, /blk_size 100/],
    [{ blkSize: 1 << 20 }, /blk_size 1048576/],
    [{ segMax: 0 }, /seg_max 0/],
    [{ configQueues: 0 }, /num_queues 0/],
    [{ maxDiscardSectors: 0 }, /max_discard_sectors 0/],
    [{ physExp: 40 }, /physical_block_exp 40/],
  ];
  for (const [o, re] of cases) {
    const model = new VirtioBlkModel(o);
    assert.throws(() => VirtioBlk.openPci(model.pci()), re);
    assert.ok(model.status & 128, "FAILED set");
  }
  const net = new VirtioBlkModel();
  net.config.view.setUint16(2, 0x1041, true);
  assert.throws(() => VirtioBlk.openPci(net.pci()), /not a block device/);
});

Deno.test("virtio-blk: a resize is noticed (config generation, MSI-X config vector); blk_size changing breaks", async () => {
  for (const irq of ["poll", "msix"] as const) {
    const { model, disk } = open({ sectors: 1024 }, { irq });
    assert.equal(disk.configChanged(), false);
    model.resize(4096);
    assert.equal(disk.configChanged(), true, irq);
    assert.equal(disk.info.capacity, 4096 * 512);
    await disk.write(4000 * 512, pattern(512, 1));
    assert.deepEqual(model.disk.subarray(4000 * 512, 4001 * 512), pattern(512, 1));
    assert.equal(disk.configChanged(), false);
    model.changeBlockSize(4096);
    assert.throws(() => disk.configChanged(), /changed blk_size from 512 to 4096/);
    assert.throws(() => disk.checkHealth(), /changed blk_size/);
    await disk.close();
  }
});

Deno.test("virtio-blk: interrupts wake a waiting caller; the legacy transport works the same", async () => {
  const { model, disk } = open({}, { irq: "msix" });
  model.hold = true;
  const bufs: BlockBuffer[] = [];
  disk.allocBuffers(bufs, 1);
  bufs[0].length = 512;
  disk.submit([new BlockRequest().io(BlockOp.Read, 0, bufs, 1, 7)], 1);
  const done = new Completions(1);
  assert.equal(disk.poll(done, 1), 0);
  const woke = disk.waitCompletion();
  model.completeHeld();
  await woke;
  assert.equal(disk.poll(done, 1), 1);
  assert.equal(done.tags[0], 7);
  assert.equal(disk.stats()[0].interrupts, 1);
  await disk.close();
  const legacy = new VirtioBlkModel();
  const ld = VirtioBlk.open(legacy.legacyBus());
  assert.equal(ld.transport, "legacy");
  await ld.write(512, pattern(1024, 2));
  assert.deepEqual(await ld.read(512, 1024), pattern(1024, 2));
  await ld.close();
});

Deno.test("virtio-blk: close is idempotent; held buffers stay valid after it; queues are independent", async () => {
  const { model, disk } = open({}, { queues: 2 });
  assert.equal(disk.queues, 2);
  const bufs: BlockBuffer[] = [];
  disk.allocBuffers(bufs, 1, 1);
  bufs[0].length = 512;
  bufs[0].data.fill(0x5a, 0, 512);
  assert.equal(disk.submit([new BlockRequest().io(BlockOp.Write, 0, bufs, 1)], 1, 1), 1);
  assert.equal(model.served.length, 1);
  assert.equal(disk.poll(new Completions(1), 1, 1), 1);
  const held = bufs[0];
  await Promise.all([disk.close(), disk.close()]);
  assert.equal(held.data[0], 0x5a, "a held buffer is still memory");
  disk.release(bufs, 1);
  assert.throws(() => disk.submit([new BlockRequest()], 1), /closed/);
});

Deno.test("virtio-blk: a DMA allocator with a region limit (UIO's one huge page) gets pools that fit it", async () => {
  const model = new VirtioBlkModel();
  const dma = model.dma;
  const limited = Object.assign(Object.create(Object.getPrototypeOf(dma)), dma, { maxRegion: 1 << 20 });
  limited.alloc = (n: number) => {
    if (n > 1 << 20) throw new RangeError(`asked ${n}`);
    return dma.alloc(n);
  };
  const bus = { ...model.legacyBus(), dma: limited };
  const disk = VirtioBlk.open(bus);
  const bufs: BlockBuffer[] = [];
  assert.equal(disk.allocBuffers(bufs, 1000), 16, "1 MiB of 64 KiB buffers");
  disk.release(bufs, bufs.length);
  await disk.write(0, pattern(3 << 20, 4));
  assert.deepEqual(await disk.read(0, 3 << 20), pattern(3 << 20, 4), "more than the pool at once, in turns");
  await disk.close();
});

Deno.test("virtio-blk: discards align to both the device's alignment and the logical block", async () => {
  const { disk } = open({ sectors: 8192, blkSize: 4096, physExp: 0, discardAlignment: 9 });
  assert.equal(disk.info.discardAlignment, 36864, "lcm(4096, 9 x 512)");
  await disk.discard(36864, 4096);
  assert.throws(
    () =>
      disk.submit([
        Object.assign(new BlockRequest(), { op: BlockOp.Discard, offset: 4096 * 5, length: 4096 }),
      ], 1),
    /not a multiple of 36864/,
  );
  await disk.close();
});
