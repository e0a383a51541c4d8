import assert from "assert";
import { type RingFormat, VirtioNet } from "../../drivers/virtio/net.ts";
import { F, NET_F, STATUS } from "../../drivers/virtio/features.ts";
import { VirtqueueError } from "../../drivers/virtio/virtqueue.ts";
import { VirtioError } from "../../drivers/virtio/transport.ts";
import { checkFrame, FrameCheck, writeFrame } from "../../apps/frames.ts";
import { type PacketBuffer, settledStats } from "../../drivers/net/nic.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";

const DST = new Uint8Array([0x52, 0x54, 0, 0, 0, 2]);

// Every test runs twice: on split rings (virtio 1.2 §2.7) and on packed ones (§2.8). `ring` is the current one.
let ring: RingFormat = "split";
function test(name: string, fn: () => void | Promise<void>): void {
  for (const r of ["split", "packed"] as const) {
    Deno.test(`${name} [${r}]`, async () => {
      ring = r;
      try {
        await fn();
      } finally {
        ring = "split";
      }
    });
  }
}

function open(model: VirtioNetModel, opts = {}) {
  return VirtioNet.openPci(model.pci(), { ring, ...opts });
}

function sendFrames(nic: VirtioNet, sizes: number[], firstSeq = 0, queue = 0): number {
  const bufs: PacketBuffer[] = [];
  let seq = firstSeq, sent = 0;
  while (sent < sizes.length) {
    const want = Math.min(32, sizes.length - sent);
    const got = nic.allocTx(bufs, want, queue);
    assert.ok(got > 0, "TX buffers available");
    for (let i = 0; i < got; i++) {
      writeFrame(bufs[i].data, sizes[sent + i], seq++, DST, nic.mac);
      bufs[i].length = sizes[sent + i];
    }
    const n = nic.sendBatch(bufs, got, queue);
    if (n < got) nic.release(bufs.slice(n), got - n, queue);
    sent += n;
    seq = firstSeq + sent;
  }
  return sent;
}

test("virtio-net: handshake against the model negotiates the intersection and reads the config", () => {
  const model = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 9], mtu: 1400 });
  const nic = open(model);
  try {
    assert.equal(
      model.status & 0xf,
      STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK,
    );
    assert.equal(nic.features & ~model.offered, 0n);
    assert.ok(
      nic.features & F.VERSION_1 && nic.features & F.RING_EVENT_IDX && nic.features & NET_F.MRG_RXBUF,
    );
    assert.equal(model.driverFeatures, nic.features);
    assert.equal(nic.macString, "02:00:00:00:00:09");
    assert.equal(nic.mtu, 1400);
    assert.equal(nic.hdrLen, 12);
    assert.equal(nic.queues, 1);
    assert.equal(nic.transport, "modern");
    assert.equal(nic.ring, ring);
    assert.equal(model.packed, ring === "packed");
    assert.equal(model.rxAvailable(), 256, "RX ring filled");
    assert.equal(nic.linkUp(), true);
    model.linkUp = false;
    assert.equal(nic.linkUp(), false);
  } finally {
    nic.close();
  }
  assert.equal(model.status, 0, "close resets the device");
  assert.equal(model.dma.live, 0, "close frees every DMA region");
});

test("virtio-net: feature subsets — minimal device, no VERSION_1, FEATURES_OK refused", () => {
  const minimal = new VirtioNetModel({ features: F.VERSION_1 | F.ACCESS_PLATFORM });
  const nic = open(minimal);
  try {
    assert.equal(nic.features, F.VERSION_1 | F.ACCESS_PLATFORM);
    assert.equal(nic.mac[0] & 3, 2, "random locally administered unicast MAC");
    assert.throws(() => nic.setPromiscuous(true), /CTRL_RX/);
    assert.equal(sendFrames(nic, [60, 1514]), 2);
    assert.equal(minimal.sent[0].length, 2);
  } finally {
    nic.close();
  }
  assert.throws(() => open(new VirtioNetModel({ features: NET_F.MAC })), /required features/);
  assert.throws(() => open(new VirtioNetModel({ rejectFeatures: true })), /FEATURES_OK/);
  const m = new VirtioNetModel({ features: NET_F.MAC });
  try {
    open(m);
  } catch { /* expected */ }
  assert.equal(m.dma.live, 0, "a failed open leaks nothing");
  assert.ok(m.status & STATUS.FAILED);
});

test("virtio-net: TX of mixed sizes arrives byte-exact with zeroed headers, one doorbell per batch", () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    const sizes = Array.from({ length: 100 }, (_, i) => 60 + ((i * 149) % 1455));
    assert.equal(sendFrames(nic, sizes), 100);
    assert.equal(model.sent[0].length, 100);
    const seq = new Uint32Array(1);
    model.sent[0].forEach((f, i) => {
      assert.equal(f.length, sizes[i]);
      assert.equal(checkFrame(f, f.length, seq), FrameCheck.Ok);
      assert.equal(seq[0], i);
    });
    for (const h of model.sentHeaders[0]) assert.deepEqual([...h], new Array(12).fill(0));
    assert.ok(model.notifies[1] <= 4, `notifications ${model.notifies[1]} for 4 batches`);
    nic.reclaimTx();
    const st = nic.stats()[0];
    assert.equal(st.txPackets, 100);
    assert.equal(st.txBytes, sizes.reduce((a, b) => a + b, 0));
  } finally {
    nic.close();
  }
});

test("virtio-net: TX checksum offload fills the header", () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    const b: PacketBuffer[] = [];
    nic.allocTx(b, 1);
    writeFrame(b[0].data, 100, 1, DST, nic.mac);
    b[0].length = 100;
    b[0].csumStart = 34;
    b[0].csumOffset = 6;
    nic.sendBatch(b, 1);
    const h = new DataView(model.sentHeaders[0][0].buffer);
    assert.equal(h.getUint8(0), 1, "NEEDS_CSUM");
    assert.equal(h.getUint16(6, true), 34);
    assert.equal(h.getUint16(8, true), 6);
  } finally {
    nic.close();
  }
});

test("virtio-net: RX delivers byte-exact frames with flags, release refills", () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    const frame = new Uint8Array(1514);
    for (let s = 0; s < 300; s++) {
      const len = 60 + ((s * 37) % 1455);
      writeFrame(frame, len, s, nic.mac, DST);
      assert.ok(model.deliver(frame.subarray(0, len), 0, { flags: s % 2 ? 2 : 0 }), `delivered ${s}`);
      if (s % 50 === 49) {
        const out: PacketBuffer[] = [];
        const seq = new Uint32Array(1);
        let got = 0;
        while (true) {
          const n = nic.receiveBatch(out, 32);
          if (!n) break;
          for (let i = 0; i < n; i++) {
            const sq = s - 49 + got + i;
            assert.equal(checkFrame(out[i].data, out[i].length, seq), FrameCheck.Ok);
            assert.equal(seq[0], sq);
            assert.equal(out[i].flags, sq % 2 ? 2 : 0);
          }
          nic.release(out, n);
          got += n;
        }
        assert.equal(got, 50);
      }
    }
    assert.equal(model.rxAvailable(), 256);
    assert.equal(nic.stats()[0].rxPackets, 300);
  } finally {
    nic.close();
  }
});

test("virtio-net: a frame spread over several mergeable buffers is dropped cleanly, the next one is fine", () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    const big = new Uint8Array(3000), small = new Uint8Array(100);
    writeFrame(small, 100, 7, nic.mac, DST);
    assert.ok(model.deliver(big));
    assert.ok(model.deliver(small));
    const out: PacketBuffer[] = [];
    const n = nic.receiveBatch(out, 32);
    assert.equal(n, 1);
    assert.equal(out[0].length, 100);
    assert.equal(nic.stats()[0].rxDropped, 1);
    nic.release(out, n);
  } finally {
    nic.close();
  }
});

test("virtio-net: multi-queue sets the pair count over the control queue and uses every pair", () => {
  const model = new VirtioNetModel({ maxPairs: 4 });
  const nic = open(model, { queues: 3, promiscuous: true });
  try {
    assert.equal(nic.queues, 3);
    const mq = model.ctrl.find((c) => c.cls === 4);
    assert.ok(mq);
    assert.equal(mq.data[0] | (mq.data[1] << 8), 3);
    assert.equal(model.promiscuous, true);
    for (let q = 0; q < 3; q++) {
      assert.equal(sendFrames(nic, [64, 128, 256], 10 * q, q), 3);
      assert.equal(model.sent[q].length, 3);
      const f = new Uint8Array(64);
      writeFrame(f, 64, q, nic.mac, DST);
      model.deliver(f, q);
      const out: PacketBuffer[] = [];
      assert.equal(nic.receiveBatch(out, 8, q), 1);
      nic.release(out, 1, q);
    }
    assert.throws(() => nic.receiveBatch([], 1, 3), /out of range/);
    nic.setPromiscuous(false);
    assert.equal(model.promiscuous, false);
    nic.setMacFilter([new Uint8Array(6).fill(1)], [new Uint8Array([1, 0, 0x5e, 0, 0, 1])]);
    const t = model.ctrl.at(-1)!;
    assert.deepEqual([t.cls, t.cmd, t.data.length], [1, 0, 20]);
  } finally {
    nic.close();
  }
});

test("virtio-net: EVENT_IDX suppresses doorbells the device did not ask for, and interrupts while polling", () => {
  const model = new VirtioNetModel({ autoProcess: false });
  const nic = open(model);
  try {
    sendFrames(nic, [60, 60]);
    assert.equal(model.notifies[1], 1);
    model.process(1); // the device asks for a notification at the next buffer (avail_event / its event area)
    sendFrames(nic, [60]);
    assert.equal(model.notifies[1], 2, "device asked again after processing");
    sendFrames(nic, [60, 60]); // device has not caught up: the point it asked for is behind
    assert.equal(model.notifies[1], 2, "next kick suppressed");
    const f = new Uint8Array(60);
    for (let i = 0; i < 20; i++) model.deliver(f);
    assert.equal(model.interrupts[0], 0, "no RX interrupts in polling mode");
  } finally {
    nic.close();
  }
  const legacyStyle = new VirtioNetModel({
    autoProcess: false,
    features: F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_PACKED,
  });
  const n2 = open(legacyStyle);
  try {
    for (let i = 0; i < 5; i++) legacyStyle.deliver(new Uint8Array(60));
    assert.equal(legacyStyle.interrupts[0], 0, "NO_INTERRUPT flag honoured without EVENT_IDX");
  } finally {
    n2.close();
  }
});

test("virtio-net: interrupt mode (MSI-X) wakes on RX and stays quiet otherwise", async () => {
  const model = new VirtioNetModel();
  const nic = open(model, { irq: "msix" });
  try {
    assert.equal(model.vectors.length, 2);
    assert.equal(model.queue(0).vector, 1);
    const f = new Uint8Array(60);
    writeFrame(f, 60, 1, nic.mac, DST);
    const woke = nic.waitRx();
    setTimeout(() => model.deliver(f), 5);
    await woke;
    const out: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(out, 8), 1);
    nic.release(out, 1);
    assert.equal(model.interrupts[0], 1);
    for (let i = 0; i < 10; i++) model.deliver(f); // polling again: no interrupts
    assert.equal(model.interrupts[0], 1);
    await nic.waitRx(); // frames pending: resolves at once
    assert.equal(nic.receiveBatch(out, 32), 10);
    nic.release(out, 10);
  } finally {
    nic.close();
  }
  const p = new VirtioNetModel();
  const polled = open(p);
  await assert.rejects(polled.waitRx(), /polling mode/);
  polled.close();
});

test("virtio-net: ring indices wrap past 2^16 on both queues without loss", () => {
  const model = new VirtioNetModel();
  const nic = open(model, { queueSize: 64 });
  try {
    const total = 70_000;
    const bufs: PacketBuffer[] = [], out: PacketBuffer[] = [];
    const frame = new Uint8Array(64);
    const seq = new Uint32Array(1);
    let sent = 0, recvd = 0;
    while (sent < total) {
      const got = nic.allocTx(bufs, Math.min(32, total - sent));
      for (let i = 0; i < got; i++) {
        writeFrame(bufs[i].data, 64, sent + i, DST, nic.mac);
        bufs[i].length = 64;
      }
      const n = nic.sendBatch(bufs, got);
      if (n < got) nic.release(bufs.slice(n), got - n);
      sent += n;
      for (let i = 0; i < n; i++) {
        writeFrame(frame, 64, recvd + i, nic.mac, DST);
        assert.ok(model.deliver(frame));
      }
      const r = nic.receiveBatch(out, 64);
      for (let i = 0; i < r; i++) {
        assert.equal(checkFrame(out[i].data, out[i].length, seq), FrameCheck.Ok);
        assert.equal(seq[0], recvd + i);
      }
      nic.release(out, r);
      recvd += r;
    }
    assert.equal(sent, total);
    assert.equal(recvd, total);
    assert.equal(model.sent[0].length, total);
    assert.equal(checkFrame(model.sent[0][total - 1], 64, seq), FrameCheck.Ok);
    assert.equal(seq[0], total - 1);
  } finally {
    nic.close();
  }
});

test("virtio-net: a hostile device (bad id, oversize length, used.idx jump) breaks the queue cleanly", () => {
  for (
    const [name, act] of [
      ["id out of range", (m: VirtioNetModel) => m.forgeUsed(0, 999, 60)],
      ["id not owned", (m: VirtioNetModel, nic: VirtioNet) => {
        sendFrames(nic, [60]); // buffer 0 goes out; the device returns 3
        m.forgeUsed(1, 3, 0);
      }],
      ["length beyond the buffer", (m: VirtioNetModel) => m.forgeUsed(0, 0, 4096)],
      // Split: used.idx runs past what is outstanding. Packed: used descriptors repeat one id.
      ["used.idx jump", (m: VirtioNetModel) => m.jumpUsedIdx(0, 5000)],
    ] as const
  ) {
    const model = new VirtioNetModel({ autoProcess: false });
    const nic = open(model);
    act(model, nic);
    const q = name === "id not owned" ? "tx" : "rx";
    const run = () => (q === "rx" ? nic.receiveBatch([], 32) : nic.reclaimTx());
    assert.throws(run, VirtqueueError, name);
    assert.throws(run, VirtqueueError, `${name}: stays broken`);
    assert.throws(() => nic.checkHealth(), VirtqueueError);
    nic.close();
    assert.equal(model.dma.live, 0, `${name}: nothing leaked`);
  }
  const model = new VirtioNetModel();
  const nic = open(model);
  model.needsReset();
  assert.throws(() => nic.checkHealth(), /needs reset/);
  nic.close();
});

test("virtio-net: buffer ownership is enforced", () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    const b: PacketBuffer[] = [];
    nic.allocTx(b, 2);
    nic.release(b, 1);
    assert.throws(() => nic.release(b, 1), /returned twice/);
    b[1].length = 10;
    assert.throws(() => nic.sendBatch([b[1]], 1), /outside 14/);
    b[1].length = 60;
    assert.equal(nic.sendBatch([b[1]], 1), 1);
    assert.throws(() => nic.sendBatch([b[1]], 1), /not held by the application/);
  } finally {
    nic.close();
  }
  assert.throws(
    () => VirtioNet.openPci(new VirtioNetModel().pci(), { queues: 1, disable: 0n }).receiveBatch([], 1, 5),
    /out of range/,
  );
  void VirtioError;
});

test("virtio-net: a TX batch with one bad frame is refused whole, whichever frame it is", () => {
  const model = new VirtioNetModel(), other = new VirtioNetModel();
  const nic = open(model), nic2 = open(other);
  try {
    const b: PacketBuffer[] = [], foreign: PacketBuffer[] = [];
    assert.equal(nic.allocTx(b, 3), 3);
    assert.equal(nic2.allocTx(foreign, 1), 1);
    for (const x of [...b, ...foreign]) {
      writeFrame(x.data, 60, x.index, DST, nic.mac);
      x.length = 60;
    }
    const cases: [string, PacketBuffer[], RegExp][] = [
      ["the same buffer twice", [b[0], b[1], b[0]], /not held by the application/],
      ["a buffer of another NIC", [b[0], b[1], foreign[0]], /belongs to pool/],
      ["a runt last", [b[0], b[1], Object.assign(b[2], { length: 13 })], /outside 14/],
    ];
    for (const [name, batch, err] of cases) {
      assert.throws(() => nic.sendBatch(batch, batch.length), err, name);
      assert.equal(model.sent[0].length, 0, `${name}: nothing reached the device`);
      for (const x of b) {
        assert.equal(x.pool.owner(x), "app", `${name}: buffer ${x.index} is still the application's`);
      }
    }
    b[2].length = 60;
    // A frame that asked for checksum offload, then a frame without it in the same buffer: its header is clean.
    b[0].csumStart = 34;
    b[0].csumOffset = 6;
    assert.equal(nic.sendBatch(b, 3), 3);
    assert.equal(model.sent[0].length, 3);
    assert.equal(model.sentHeaders[0][0][0], 1, "NEEDS_CSUM asked");
    nic.reclaimTx();
    const again: PacketBuffer[] = [];
    assert.equal(nic.allocTx(again, 3), 3);
    const reused = again.find((x) => x.index === b[0].index)!;
    assert.ok(reused, "the offload buffer comes back");
    again.forEach((x, i) => x.length = 60 + 10 * i);
    assert.equal(nic.sendBatch(again, 3), 3);
    const h = model.sentHeaders[0][3 + again.indexOf(reused)];
    assert.deepEqual(
      [...h],
      new Array(h.length).fill(0),
      "no offload left over from the buffer's last frame",
    );
    nic.reclaimTx();
    assert.equal(nic.stats()[0].txPackets, 6);
    assert.equal(nic.stats()[0].txBytes, 3 * 60 + 60 + 70 + 80, "completed bytes are the frames' lengths");
  } finally {
    nic.close();
    nic2.close();
  }
});

test("virtio-net: released RX buffers go back to the ring; a mixed or repeated release is checked as before", () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    const size = model.rxAvailable();
    const frame = new Uint8Array(100);
    writeFrame(frame, 100, 1, nic.mac, DST);
    for (let i = 0; i < 3; i++) assert.ok(model.deliver(frame));
    const rx: PacketBuffer[] = [], tx: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(rx, 8), 3);
    assert.equal(model.rxAvailable(), size - 3, "the device holds the rest");
    assert.equal(nic.allocTx(tx, 1), 1);
    // An RX buffer, a TX buffer the application did not send, an RX buffer: each goes where it belongs.
    nic.release([rx[0], tx[0], rx[1]], 3);
    assert.equal(model.rxAvailable(), size - 1, "both RX buffers are the device's again");
    assert.equal(rx[0].pool.owner(rx[0]), "device");
    assert.equal(tx[0].pool.owner(tx[0]), "free", "the TX buffer is back in its pool");
    // The same buffer twice: the first goes back, the second is refused as a repeated release.
    assert.throws(() => nic.release([rx[2], rx[2]], 2), /returned twice/);
    assert.equal(rx[2].pool.owner(rx[2]), "device");
    assert.equal(model.rxAvailable(), size, "every RX buffer is posted once");
    assert.throws(() => nic.release([rx[2]], 1), /returned twice/, "the device holds it now");
    for (let i = 0; i < 2; i++) assert.ok(model.deliver(frame));
    const again: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(again, 8), 2, "the ring goes on");
    nic.release(again, 2);
    assert.equal(nic.stats()[0].rxPackets, 5);
    assert.equal(nic.stats()[0].rxBytes, 500, "received bytes are the frames' lengths");
  } finally {
    nic.close();
  }
});

test("virtio-net over a fake legacy transport: 32 feature bits, fixed queue sizes, frames both ways", () => {
  const model = new VirtioNetModel({ queueMax: 128 });
  const nic = VirtioNet.open(model.legacyBus(), { queueSize: 64 });
  try {
    assert.equal(nic.transport, "legacy");
    assert.equal(nic.features >> 32n, 0n, "only the low 32 feature bits exist");
    assert.equal(nic.features & F.VERSION_1, 0n);
    assert.equal(nic.hdrLen, 12, "MRG_RXBUF negotiated: num_buffers present");
    assert.equal(model.status & STATUS.FEATURES_OK, 0, "legacy has no FEATURES_OK step");
    assert.equal(model.rxAvailable(), 128, "the device's fixed queue size wins over queueSize");
    const sizes = Array.from({ length: 50 }, (_, i) => 60 + ((i * 149) % 1455));
    assert.equal(sendFrames(nic, sizes), 50);
    assert.deepEqual(model.sent[0].map((f) => f.length), sizes);
    const frame = new Uint8Array(300).map((_, i) => i);
    assert.ok(model.deliver(frame));
    const out: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(out, 8), 1);
    assert.deepEqual(out[0].data.subarray(0, out[0].length), frame);
    nic.release(out, 1);
  } finally {
    nic.close();
  }
  assert.equal(model.status, 0, "close resets the device");
  assert.equal(model.dma.live, 0);
});

test("NIC core: a ring that breaks while refilling keeps the frames already received; the next call throws", async () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    for (let i = 0; i < 3; i++) assert.ok(model.deliver(new Uint8Array(60).fill(i)));
    // The refill step fails (as a ring found broken before its doorbell does).
    Object.defineProperty(nic, "refill", {
      configurable: true,
      value: () => {
        throw new VirtqueueError("queue 0: broken while refilling");
      },
    });
    const out: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(out, 8), 3, "the three frames are the caller's");
    assert.deepEqual(out.map((b) => b.data[20]), [0, 1, 2]);
    assert.throws(
      () => nic.receiveBatch(out, 8),
      /broken while refilling/,
      "with nothing received, it throws",
    );
    delete (nic as unknown as { refill?: unknown }).refill; // the driver's own refill again
    nic.release(out, 3);
  } finally {
    await nic.close();
  }
});

test("virtio-net: a buffer from another NIC is refused on release, first in its batch or not", async () => {
  const a = open(new VirtioNetModel()), b = open(new VirtioNetModel());
  try {
    const mine: PacketBuffer[] = [], theirs: PacketBuffer[] = [];
    a.allocTx(mine, 1);
    b.allocTx(theirs, 1);
    assert.throws(() => a.release([theirs[0]], 1), /is not ours/);
    assert.throws(() => a.release([mine[0], theirs[0]], 2), /is not ours/);
    b.release(theirs, 1);
  } finally {
    await a.close();
    await b.close();
  }
});

test("virtio-net legacy without MRG_RXBUF: a 10-byte header, and TX frames arrive byte-exact", () => {
  const model = new VirtioNetModel({ queueMax: 128, features: NET_F.MAC | NET_F.STATUS });
  const nic = VirtioNet.open(model.legacyBus(), { queueSize: 64 });
  try {
    assert.equal(nic.hdrLen, 10);
    const out: PacketBuffer[] = [];
    assert.equal(nic.allocTx(out, 1), 1);
    out[0].data.set([0xa1, 0xa2, 0xa3, 0xa4], 0);
    out[0].length = 60;
    assert.equal(nic.sendBatch(out, 1), 1);
    assert.deepEqual(
      [...model.sent[0][0].subarray(0, 4)],
      [0xa1, 0xa2, 0xa3, 0xa4],
      "the frame's first bytes intact",
    );
    assert.equal(model.sentHeaders[0][0].length, 10);
  } finally {
    nic.close();
  }
});

test("virtio-net: a queue size that is not a power of two is rounded down to one (modern)", async () => {
  const model = new VirtioNetModel({ queueSizeOf: () => 300 });
  const nic = open(model, { queueSize: 1024 });
  try {
    assert.equal(model.queue(0).size, 256);
    assert.equal(model.rxAvailable(), 256);
  } finally {
    await nic.close();
  }
});

test("settledStats: TX completions the hot path has not reclaimed yet are counted", async () => {
  const model = new VirtioNetModel();
  const nic = open(model);
  try {
    assert.equal(sendFrames(nic, [60, 60, 60]), 3);
    assert.equal(nic.stats()[0].txPackets, 0, "completed by the device, not yet reclaimed");
    assert.equal(settledStats(nic).txPackets, 3);
  } finally {
    await nic.close();
  }
});
