/**
 * In-process cost of virtio-net's hot paths: batches of 32 frames through the real driver (virtqueue + NIC core)
 * against the device model doing only ring work. The baseline of each group is C doing the same split-ring work,
 * driver and device side (bench/ring_loop.c, test-only, built here with `cc`), so the report reads as TS/C; a
 * plain 64-byte typed-array copy per frame is shown for scale, and bench/ring_loop.ts, the C loop's work in plain
 * TypeScript, separates the language's share from pvdrv's own.
 * @module
 */
import { type RingFormat, VirtioNet } from "../drivers/virtio/net.ts";
import { NET_F } from "../drivers/virtio/features.ts";
import type { PacketBuffer } from "../drivers/net/packet_pool.ts";
import { PacketBatch } from "../drivers/net/packet_batch.ts";
import { VirtioNetModel } from "../tests/models/virtio_net_device.ts";
import { RingLoop } from "./ring_loop.ts";
import { type BenchCase, ringLoopLibrary } from "./cases.ts";

const BATCH = 32, FRAME = 64;

/**
 * The virtio-net cases on `ring`s (split: virtio 1.2 §2.7, packed: §2.8) and what closes them. Run one format per
 * process: with both, the NIC core's ring calls would see two queue classes and compile slower for each.
 */
export function virtioNetCases(ring: RingFormat = "split"): { cases: BenchCase[]; close(): void } {
  const model = new VirtioNetModel({ autoProcess: false });
  // Without MRG_RXBUF the device need not write num_buffers, so the model completes RX without touching data.
  const nic = VirtioNet.openPci(model.pci(), { disable: NET_F.MRG_RXBUF, ring });
  if (nic.ring !== ring) throw new Error(`the model did not take ${ring} rings`);
  const tag = ring === "packed" ? " (packed rings)" : "";
  const bufs: PacketBuffer[] = new Array(BATCH), out: PacketBuffer[] = new Array(2 * BATCH);
  const batch = new PacketBatch(BATCH), txBatch = new PacketBatch(BATCH);
  const src = new Uint8Array(FRAME), dst = new Uint8Array(2048 * 256);
  let slot = 0;
  const copyFloor = () => {
    for (let i = 0; i < BATCH; i++) dst.set(src, (slot++ & 255) << 11);
  };
  const lib = ringLoopLibrary({
    ring_new: { parameters: [], result: "pointer" },
    ring_tx_batch: { parameters: ["pointer", "i32", "u32"], result: "i32" },
    ring_rx_batch: { parameters: ["pointer", "i32", "u32"], result: "i32" },
  });
  const c = lib.symbols;
  const ctx = c.ring_new(), crx = c.ring_new();
  // The same ring work in plain TypeScript typed arrays: how much of TS/C is the language, how much pvdrv's own.
  const ttx = new RingLoop(), trx = new RingLoop();
  const cases: BenchCase[] = [
    {
      name: "C ring loop: 32-frame TX batch (post, device completes, reclaim)",
      group: "tx",
      baseline: true,
      fn() {
        if (c.ring_tx_batch(ctx, BATCH, FRAME) !== BATCH) throw new Error("C TX batch short");
      },
    },
    { name: "floor: 32 x 64-byte TypedArray.set", group: "tx", fn: copyFloor },
    {
      name: "TS ring loop: the C loop's TX work in plain typed arrays",
      group: "tx",
      fn() {
        if (ttx.txBatch(BATCH, FRAME) !== BATCH) throw new Error("TS TX batch short");
      },
    },
    {
      name: `virtio-net TX${tag}: allocTx + sendBatch, 32 x 64-byte frames`,
      group: "tx",
      fn() {
        const k = nic.allocTx(bufs, BATCH);
        for (let i = 0; i < k; i++) bufs[i].length = FRAME;
        const sent = nic.sendBatch(bufs, k);
        if (sent !== BATCH) throw new Error(`sent ${sent} of ${BATCH}`);
        model.fastComplete(1, 0);
      },
    },
    {
      name: `virtio-net TX${tag}: allocInto + sendFrom (PacketBatch), 32 x 64-byte frames`,
      group: "tx",
      fn() {
        const k = nic.allocInto(txBatch, BATCH), lens = txBatch.lengths;
        for (let i = 0; i < k; i++) lens[i] = FRAME;
        const sent = nic.sendFrom(txBatch);
        if (sent !== BATCH) throw new Error(`sent ${sent} of ${BATCH}`);
        model.fastComplete(1, 0);
      },
    },
    {
      name: "C ring loop: 32-frame RX batch (device fills, take, check, repost)",
      group: "rx",
      baseline: true,
      fn() {
        if (c.ring_rx_batch(crx, BATCH, FRAME) !== BATCH) throw new Error("C RX batch short");
      },
    },
    { name: "floor: 32 x 64-byte TypedArray.set", group: "rx", fn: copyFloor },
    {
      name: "TS ring loop: the C loop's RX work in plain typed arrays",
      group: "rx",
      fn() {
        if (trx.rxBatch(BATCH, FRAME) !== BATCH) throw new Error("TS RX batch short");
      },
    },
    {
      name: `virtio-net RX${tag}: receiveBatch + release, 32 x 64-byte frames`,
      group: "rx",
      fn() {
        let got = 0;
        while (got < BATCH) {
          model.fastComplete(0, nic.hdrLen + FRAME);
          const k = nic.receiveBatch(out, BATCH - got);
          nic.release(out, k);
          got += k;
        }
      },
    },
    {
      name: `virtio-net RX${tag}: receiveInto + releaseBatch (PacketBatch), 32 x 64-byte frames`,
      group: "rx",
      fn() {
        model.fastComplete(0, nic.hdrLen + FRAME);
        const k = nic.receiveInto(batch);
        nic.releaseBatch(batch);
        if (k !== BATCH) throw new Error(`received ${k} of ${BATCH}`);
      },
    },
  ];
  return {
    cases,
    close() {
      void nic.close();
      lib.close();
    },
  };
}
