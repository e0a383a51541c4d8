/**
 * virtio-net against a device that lies: each case is a finding of the adversarial review, and each fails on the
 * driver before its fix. A bad device must break the queue (or the open) with a clear error, drop nothing valid
 * uncounted, hand out nothing it should not, and leave no DMA memory behind.
 */
import assert from "assert";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { SplitQueue, splitQueueBytes, VirtqueueError } from "../../drivers/virtio/virtqueue.ts";
import { ModelDmaAllocator } from "../../hal/dma.ts";
import { checkFrame, FrameCheck, writeFrame } from "../../apps/frames.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import { PacketPool } from "../../drivers/net/packet_pool.ts";
import { type ModelOptions, VirtioNetModel } from "../models/virtio_net_device.ts";

const DST = new Uint8Array([0x52, 0x54, 0, 0, 0, 2]);
const SRC = new Uint8Array([0x52, 0x54, 0, 0, 0, 3]);

const seqOut = new Uint32Array(1);
/** The frame check and the sequence number it read. */
function check(b: PacketBuffer): { check: FrameCheck; seq: number } {
  return { check: checkFrame(b.data, b.length, seqOut), seq: seqOut[0] };
}

function frame(len: number, seq: number): Uint8Array {
  const f = new Uint8Array(len);
  writeFrame(f, len, seq, DST, SRC);
  return f;
}

function openFails(opts: ModelOptions, re: RegExp, nicOpts = {}): VirtioNetModel {
  const model = new VirtioNetModel(opts);
  assert.throws(() => VirtioNet.openPci(model.pci(), nicOpts), re);
  assert.equal(model.dma.live, 0, "a failed open frees every DMA region");
  assert.deepEqual(model.enabledTwice, [], "no queue programmed twice");
  return model;
}

function send(nic: VirtioNet, sizes: number[]): number {
  const bufs: PacketBuffer[] = [];
  const n = nic.allocTx(bufs, sizes.length);
  for (let i = 0; i < n; i++) {
    writeFrame(bufs[i].data, sizes[i], i, DST, nic.mac);
    bufs[i].length = sizes[i];
  }
  return nic.sendBatch(bufs, n);
}

Deno.test("virtio hostile: num_buffers beyond what is in the used ring breaks the queue; valid frames survive", () => {
  for (const nb of [65535, 2, 0]) {
    const model = new VirtioNetModel();
    const nic = VirtioNet.openPci(model.pci());
    try {
      model.deliver(frame(100, 1), 0, { numBuffers: nb });
      assert.throws(() => nic.receiveBatch([], 32), VirtqueueError, `num_buffers ${nb}`);
      assert.throws(() => nic.checkHealth(), /spans/);
    } finally {
      nic.close();
    }
    assert.equal(model.dma.live, 0);
  }
  // A real multi-buffer frame (too long for one slot) is dropped with both buffers, counted; the frames after it
  // are delivered, within one call and across calls.
  const model = new VirtioNetModel({ mtu: 4000 });
  const nic = VirtioNet.openPci(model.pci());
  try {
    assert.ok(model.deliver(frame(3000, 1)));
    for (let i = 0; i < 3; i++) model.deliver(frame(60 + i, 2 + i));
    const out: PacketBuffer[] = [];
    const n = nic.receiveBatch(out, 32);
    assert.equal(n, 3);
    for (let i = 0; i < 3; i++) assert.equal(check(out[i]).check, FrameCheck.Ok);
    nic.release(out, n);
    model.deliver(frame(61, 9));
    assert.equal(nic.receiveBatch(out, 32), 1, "nothing skipped across calls");
    nic.release(out, 1);
    const st = nic.stats()[0];
    assert.equal(st.rxDropped, 1);
    assert.equal(st.rxDroppedBuffers, 2, "every buffer of the dropped frame is counted");
    assert.equal(st.rxPackets, 4);
  } finally {
    nic.close();
  }
});

Deno.test("virtio hostile: queue counts that alias or are missing are refused before any queue is programmed", () => {
  openFails({ maxPairs: 1, configMaxPairs: 0x8000 }, /max_virtqueue_pairs 32768.*16-bit/, { queues: 1 });
  openFails({ maxPairs: 1, configMaxPairs: 0 }, /max_virtqueue_pairs 0/);
  openFails({ numQueues: 0 }, /num_queues 0/);
  openFails({ maxPairs: 4, numQueues: 5 }, /num_queues 5 but 4 queue pair/);
  // Without MQ the control queue is queue 2; a device with 2 queues has none for it.
  openFails({ features: F.VERSION_1 | NET_F.CTRL_VQ, numQueues: 2 }, /num_queues 2/);
});

Deno.test("virtio hostile: a failed open (TX queue_size 0) frees the RX queue already allocated", () => {
  openFails({ queueSizeOf: (q) => (q === 1 ? 0 : 256) }, /queue 1 is not available/);
  openFails({ queueSizeOf: (q) => (q === 8 ? 0 : 256) }, /queue 8 is not available/); // the control queue
  openFails({ queueSizeOf: (q) => (q === 1 ? 1 : 256) }, /size 1 is not a power of two in 2\.\.32768/);
});

Deno.test("virtio hostile: an odd notify_off_multiplier is refused; a doorbell that fails breaks the queue", () => {
  openFails({ notifyMultiplier: 3 }, /notify_off_multiplier 3/);
  openFails({ notifyMultiplier: 6 }, /notify_off_multiplier 6/);
  const model = new VirtioNetModel({ notifyMultiplier: 2 });
  const nic = VirtioNet.openPci(model.pci());
  try {
    assert.equal(send(nic, [60]), 1, "multiplier 2 works");
    model.failNotify = true;
    assert.throws(() => send(nic, [60, 60]), /notification failed/);
    assert.throws(() => nic.checkHealth(), VirtqueueError, "the queue is marked broken");
    assert.throws(() => send(nic, [60]), VirtqueueError);
  } finally {
    nic.close();
  }
  assert.equal(model.dma.live, 0);
});

Deno.test("virtio hostile: lengths beyond the negotiated maximum are dropped; only defined flags reach the app", () => {
  const model = new VirtioNetModel({ mtu: 68 });
  const nic = VirtioNet.openPci(model.pci());
  const out: PacketBuffer[] = [];
  try {
    assert.equal(nic.maxFrame, 68 + 18);
    model.deliver(frame(200, 1)); // fits the 2 KiB slot, not the MTU
    model.deliver(frame(60, 2), 0, { usedLen: 2048 }); // the device claims the whole slot
    model.deliver(frame(80, 3), 0, { flags: 0xff });
    assert.equal(nic.receiveBatch(out, 32), 1);
    assert.equal(out[0].length, 80);
    assert.equal(out[0].flags, 3, "NEEDS_CSUM | DATA_VALID only");
    nic.release(out, 1);
    assert.equal(nic.stats()[0].rxDropped, 2);
  } finally {
    nic.close();
  }
  const m2 = new VirtioNetModel();
  const n2 = VirtioNet.openPci(m2.pci(), { disable: NET_F.GUEST_CSUM });
  try {
    m2.deliver(frame(80, 3), 0, { flags: 0xff });
    assert.equal(n2.receiveBatch(out, 32), 1);
    assert.equal(out[0].flags, 0, "no checksum flags without GUEST_CSUM");
    n2.release(out, 1);
  } finally {
    n2.close();
  }
});

Deno.test("virtio hostile: used.idx published before buffers exist is caught at the next doorbell", () => {
  const model = new VirtioNetModel({ autoProcess: false });
  const nic = VirtioNet.openPci(model.pci());
  try {
    model.jumpUsedIdx(1, 3); // nothing is outstanding on TX
    assert.throws(() => send(nic, [60, 60, 60, 60, 60, 60, 60, 60]), /used\.idx .* 0 buffers outstanding/);
    assert.throws(() => nic.reclaimTx(), VirtqueueError, "nothing of ours is read back as a completion");
  } finally {
    nic.close();
  }
  assert.equal(model.dma.live, 0);
});

Deno.test("virtio hostile: used entries — idx one past outstanding, id == ring size, id free while others fly", () => {
  const cases: [string, (m: VirtioNetModel) => void][] = [
    ["used.idx one past what is outstanding", (m) => m.jumpUsedIdx(1, 3)],
    ["id equal to the ring size", (m) => m.forgeUsed(1, 256, 0)],
    ["id in range, free, while others are in flight", (m) => m.forgeUsed(1, 7, 0)],
    ["length beyond a TX buffer's writable part", (m) => m.forgeUsed(1, 0, 1)],
  ];
  for (const [name, act] of cases) {
    const model = new VirtioNetModel({ autoProcess: false });
    const nic = VirtioNet.openPci(model.pci());
    try {
      assert.equal(send(nic, [60, 60]), 2); // ids 0 and 1 with the device
      act(model);
      assert.throws(() => nic.reclaimTx(), VirtqueueError, name);
    } finally {
      nic.close();
    }
  }
});

Deno.test("virtio hostile: a bad used entry after a multi-buffer frame leaves no received buffer held", () => {
  // The batch pops a frame claiming two buffers, the good one after it, then an entry naming no buffer: the queue
  // breaks, the frame and its second buffer go back, and nothing stays with the application (the pool would then
  // outlive the device).
  for (const ring of ["split", "packed"] as const) {
    const model = new VirtioNetModel();
    const nic = VirtioNet.openPci(model.pci(), { ring });
    try {
      assert.ok(model.deliver(frame(100, 1), 0, { numBuffers: 2 }));
      assert.ok(model.deliver(frame(100, 2)));
      model.forgeUsed(0, 999, 0);
      const out: PacketBuffer[] = [];
      assert.throws(() => nic.receiveBatch(out, 32), /id 999, which it does not own/, ring);
    } finally {
      nic.close();
    }
    assert.deepEqual([model.dma.live, model.dma.kept], [0, 0], `${ring}: every region freed at close`);
  }
});

Deno.test("virtio hostile: a bound ring refuses ids the app holds, ids given back twice, and held RX buffers", () => {
  // Descriptor i is buffer i: the pool's owner record is all the ring checks a used id against.
  const model = new VirtioNetModel({ autoProcess: false });
  const nic = VirtioNet.openPci(model.pci());
  try {
    assert.equal(send(nic, [60, 60]), 2); // buffers 0 and 1 with the device
    const held: PacketBuffer[] = [];
    assert.equal(nic.allocTx(held, 2), 2);
    assert.deepEqual(held.map((b) => b.index), [2, 3]);
    model.forgeUsed(1, 0, 0);
    model.forgeUsed(1, 0, 0); // the same buffer again, in the same batch
    assert.throws(() => nic.reclaimTx(), /device returned descriptor id 0, which it does not own/);
    assert.equal(held[0].pool.owner(held[0]), "app", "the application's buffers stay the application's");
    nic.release(held, 2);
  } finally {
    nic.close();
  }
  const m2 = new VirtioNetModel({ autoProcess: false });
  const n2 = VirtioNet.openPci(m2.pci());
  try {
    assert.equal(send(n2, [60, 60, 60]), 3);
    const held: PacketBuffer[] = [];
    assert.equal(n2.allocTx(held, 1), 1);
    m2.forgeUsed(1, held[0].index, 0); // a buffer the application is still filling
    assert.throws(() => n2.reclaimTx(), new RegExp(`descriptor id ${held[0].index}, which it does not own`));
    assert.equal(held[0].pool.owner(held[0]), "app");
  } finally {
    n2.close();
  }
  const m3 = new VirtioNetModel();
  const n3 = VirtioNet.openPci(m3.pci());
  try {
    m3.deliver(frame(100, 1));
    const out: PacketBuffer[] = [];
    assert.equal(n3.receiveBatch(out, 8), 1);
    const c = check(out[0]);
    m3.forgeUsed(0, out[0].index, 60); // the RX buffer the application holds, "filled" again
    assert.throws(() => n3.receiveBatch([], 8), VirtqueueError);
    assert.deepEqual(check(out[0]), c, "the held frame is untouched");
    assert.equal(out[0].pool.owner(out[0]), "app");
    n3.release(out, 1);
  } finally {
    n3.close();
  }
  assert.equal(model.dma.live + m2.dma.live + m3.dma.live, 0);
  assert.equal(model.dma.kept, 0, "the buffer completed before the bad entry went back: nothing is stranded");
});

Deno.test("virtio: buffers held across close stay valid memory, the device loses them, release stays harmless", () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci());
  model.deliver(frame(300, 42));
  const out: PacketBuffer[] = [];
  assert.equal(nic.receiveBatch(out, 32), 1);
  const tx: PacketBuffer[] = [];
  assert.equal(nic.allocTx(tx, 2), 2);
  nic.close();
  assert.equal(model.dma.live, 0, "the device can reach nothing");
  assert.equal(model.dma.kept, 2, "the RX and TX pools under held buffers are kept");
  const c = check(out[0]);
  assert.equal(c.check, FrameCheck.Ok);
  assert.equal(c.seq, 42);
  assert.throws(() => nic.sendBatch(tx, 2), /closed/);
  nic.release(out, 1);
  assert.equal(model.dma.kept, 1);
  nic.release(tx, 2);
  assert.equal(model.dma.kept, 0, "the last release frees the memory");
  assert.throws(() => nic.release(out, 1), /returned twice/);
});

Deno.test("virtio: VERSION_1 without MRG_RXBUF still uses the 12-byte header (TX bytes land unshifted)", () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci(), { disable: NET_F.MRG_RXBUF });
  try {
    assert.equal(nic.hdrLen, 12);
    assert.equal(send(nic, [60, 61]), 2);
    for (let i = 0; i < 2; i++) {
      const f = model.sent[0][i];
      assert.equal(f.length, 60 + i);
      assert.deepEqual(f, frame(60 + i, i).map((b, k) => k >= 6 && k < 12 ? nic.mac[k - 6] : b));
    }
    model.deliver(frame(64, 5));
    const out: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(out, 32), 1);
    assert.equal(out[0].length, 64);
    assert.equal(check(out[0]).check, FrameCheck.Ok);
    nic.release(out, 1);
  } finally {
    nic.close();
  }
});

Deno.test("virtio: runts are dropped, TX lengths are bounded both ways, a refused control command throws", () => {
  const model = new VirtioNetModel({ ctrlAck: 1 });
  const nic = VirtioNet.openPci(model.pci());
  try {
    model.deliver(new Uint8Array(13).fill(1));
    model.deliver(new Uint8Array(14).fill(2));
    const out: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(out, 32), 1);
    assert.equal(out[0].length, 14);
    nic.release(out, 1);
    assert.equal(nic.stats()[0].rxDropped, 1);
    const bufs: PacketBuffer[] = [];
    nic.allocTx(bufs, 1);
    for (const bad of [13, nic.maxFrame + 1]) {
      bufs[0].length = bad;
      assert.throws(() => nic.sendBatch(bufs, 1), RangeError, `length ${bad}`);
    }
    bufs[0].length = nic.maxFrame;
    assert.equal(nic.sendBatch(bufs, 1), 1);
    assert.throws(() => nic.setPromiscuous(true), /rejected control command 0\/0 \(ack 1\)/);
  } finally {
    nic.close();
  }
  const refused = new VirtioNetModel({ ctrlAck: 1 });
  assert.throws(() => VirtioNet.openPci(refused.pci(), { promiscuous: true }), /rejected control command/);
  assert.equal(refused.dma.live, 0);
});

Deno.test("virtio: open resets the device before enabling bus mastering (a killed driver's device stops first)", () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci());
  nic.close();
  assert.deepEqual(model.order.slice(0, 2), ["reset", "bus master"]);
});

Deno.test("pools refuse buffers of another pool; the frame check covers the last byte", () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci());
  try {
    const tx: PacketBuffer[] = [];
    nic.allocTx(tx, 1);
    model.deliver(frame(100, 1));
    const rx: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(rx, 8), 1);
    assert.throws(() => rx[0].pool.put(tx[0], "app"), /belongs to pool tx0/);
    assert.throws(() => tx[0].pool.put(rx[0], "app"), /belongs to pool rx0/);
    assert.throws(() => rx[0].pool.put(rx[0], "device"), /returned twice or by the wrong owner/);
    nic.release(rx, 1);
    nic.release(tx, 1);
  } finally {
    nic.close();
  }
  for (const len of [24, 60, 61, 1514]) {
    const f = frame(len, 9);
    assert.equal(checkFrame(f, len, seqOut), FrameCheck.Ok);
    f[len - 1] ^= 1;
    assert.equal(checkFrame(f, len, seqOut), FrameCheck.Corrupt, `last byte of ${len}`);
  }
});

Deno.test("virtio: under VFIO a device without ACCESS_PLATFORM is refused with the fix named", () => {
  const model = new VirtioNetModel({ features: F.VERSION_1 | NET_F.MAC });
  const pci = { ...model.pci(), iommu: true };
  assert.throws(() => VirtioNet.openPci(pci), /VIRTIO_F_ACCESS_PLATFORM.*iommu_platform=on/);
  const ok = new VirtioNetModel();
  VirtioNet.openPci({ ...ok.pci(), iommu: true }).close();
});

Deno.test("virtio hostile: a misaligned capability and a device config too short for its features name the fault", () => {
  const misaligned = new VirtioNetModel();
  const v = misaligned.config.view;
  v.setUint32(0x74 + 8, v.getUint32(0x74 + 8, true) + 2, true); // the device-config structure at offset + 2
  assert.throws(
    () => VirtioNet.openPci(misaligned.pci()),
    /capability type 4 at BAR0 offset 0x[0-9a-f]+ is not 4-byte aligned/,
  );
  const short = new VirtioNetModel({
    features: F.VERSION_1 | F.ACCESS_PLATFORM | NET_F.MAC | NET_F.STATUS | NET_F.MTU,
  });
  short.config.view.setUint32(0x74 + 12, 10, true); // 10 bytes: MAC and status, not the MTU at 10..11
  assert.throws(
    () => VirtioNet.openPci(short.pci()),
    /device config is 10 bytes, too short for VIRTIO_NET_F_MTU \(needs 12\)/,
  );
  // Each feature's field ends where virtio 1.2 §5.1.4 puts it: a MAC needs 6 bytes, the status 8.
  for (
    const [features, size, needs] of [[NET_F.MAC, 5, "MAC \\(needs 6\\)"], [
      NET_F.MAC | NET_F.STATUS,
      7,
      "STATUS \\(needs 8\\)",
    ]] as const
  ) {
    const m = new VirtioNetModel({ features: F.VERSION_1 | F.ACCESS_PLATFORM | features });
    m.config.view.setUint32(0x74 + 12, size, true);
    assert.throws(
      () => VirtioNet.openPci(m.pci()),
      new RegExp(`${size} bytes, too short for VIRTIO_NET_F_${needs}`),
    );
  }
  const exact = new VirtioNetModel({ features: F.VERSION_1 | F.ACCESS_PLATFORM | NET_F.MAC | NET_F.STATUS });
  exact.config.view.setUint32(0x74 + 12, 8, true);
  return VirtioNet.openPci(exact.pci()).close();
});

Deno.test("virtqueue: once broken it stays broken: verify throws the first error again", () => {
  const q = new SplitQueue(new ModelDmaAllocator(), 0, 8, false, () => {});
  q.verify(); // healthy: nothing outstanding, nothing used
  assert.throws(() => q.fail("used id 9 out of range"), /used id 9/);
  assert.throws(() => q.verify(), /queue 0: used id 9 out of range/);
  q.region.free?.();
});

Deno.test("virtqueue: binding takes an idle queue and a pool of exactly its size; a bound queue posts by index", () => {
  const dma = new ModelDmaAllocator();
  const q = new SplitQueue(dma, 0, 8, false, () => {});
  const pool = (n: number) => new PacketPool("p", dma.alloc(n * 2048), n, 2048, 12);
  assert.throws(() => q.bindPool(pool(16), 2048, false), /exactly 8 buffers/);
  assert.throws(
    () =>
      q.bindPool(
        new PacketPool("plain", { bytes: new Uint8Array(8 * 2048), free() {} }, 8, 2048, 0),
        2048,
        false,
      ),
    /no device addresses/,
  );
  const p = pool(8);
  q.bindPool(p, 2048, false);
  assert.throws(() => q.bindPool(p, 2048, false), /exactly 8 buffers/, "bound once");
  assert.throws(() => q.add(0x1000, 64, false), /bound to a pool/);
  assert.throws(() => q.addChain([{ addr: 0x1000, len: 64, write: false }]), /bound to a pool/);
  assert.equal(q.freeCount, 8);
  const held: PacketBuffer[] = [];
  assert.equal(p.takeMany(held, 2), 2);
  held[0].length = 64;
  held[1].length = 64;
  assert.throws(() => p.toDeviceMany([held[0], held[0]], 2), /not held/, "one buffer twice in a batch");
  assert.equal(p.owner(held[0]), "app", "a refused batch hands nothing over");
  p.toDeviceMany(held, 1);
  q.postFrames(Uint16Array.of(held[0].index), Uint32Array.of(12 + held[0].length), 1);
  const i = held[0].index;
  assert.equal(q.freeCount, 7);
  const desc = new DataView(q.region.bytes.buffer, q.region.bytes.byteOffset);
  assert.equal(
    desc.getBigUint64(16 * i, true),
    BigInt(p.buffers[i].deviceAddress),
    "descriptor i is buffer i",
  );
  assert.equal(desc.getUint32(16 * i + 8, true), 76);
  q.region.free();
});

Deno.test("virtio: a device config of exactly the MAC opens with MAC alone; the split ring's areas never overlap", async () => {
  const m = new VirtioNetModel({ features: F.VERSION_1 | F.ACCESS_PLATFORM | NET_F.MAC });
  m.config.view.setUint32(0x74 + 12, 6, true);
  await VirtioNet.openPci(m.pci()).close();
  for (let size = 2; size <= 32768; size *= 2) {
    const { availOff, usedOff, total } = splitQueueBytes(size);
    assert.equal(availOff, 16 * size, `size ${size}: descriptors first`);
    assert.ok(
      usedOff >= availOff + 6 + 2 * size && usedOff % 4096 === 0,
      `size ${size}: used after avail, aligned`,
    );
    assert.ok(total >= usedOff + 6 + 8 * size && total % 4096 === 0, `size ${size}: room for the used ring`);
  }
});

Deno.test("virtio: a notify capability that ends exactly at the end of config space is whole; a broken queue takes nothing", () => {
  const m = new VirtioNetModel();
  const v = m.config.view;
  // Move the notify capability (20 bytes at 0x50) to 0xec, ending at 0x100, the config space's end.
  for (let i = 0; i < 20; i++) v.setUint8(0xec + i, v.getUint8(0x50 + i));
  v.setUint8(0x41, 0xec); // the common capability now points there
  const nic = VirtioNet.openPci(m.pci());
  void nic.close();
  const q = new SplitQueue(new ModelDmaAllocator(), 1, 8, false, () => {});
  assert.throws(() => q.fail("id 99"), /id 99/);
  assert.throws(() => q.add(0x1000, 64, false), /queue 1: id 99/, "add refuses on a broken queue");
});
