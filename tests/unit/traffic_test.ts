/** The traffic loops (apps/traffic.ts). */
import assert from "assert";
import { generate, receive, YIELD_EVERY } from "../../apps/traffic.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import type { Nic } from "../../drivers/net/nic.ts";
import { type PacketBuffer, PacketPool } from "../../drivers/net/packet_pool.ts";

Deno.test("receive yields to the event loop by frames handled, not per batch, whatever the frames are", async () => {
  // A NIC that delivers batches of 64 frames that are not pvdrv test frames (any other traffic on the wire).
  const pool = new PacketPool("fake", { bytes: new Uint8Array(64 * 2048), free() {} }, 64, 2048, 0);
  let delivered = 0;
  const nic = {
    name: "fake",
    receiveBatch(out: PacketBuffer[], max: number) {
      const n = pool.takeMany(out, Math.min(max, 64));
      for (let i = 0; i < n; i++) out[i].length = 60; // zeros: a foreign frame
      delivered += n;
      return n;
    },
    release(pkts: PacketBuffer[], n: number) {
      for (let i = 0; i < n; i++) pool.put(pkts[i], "app");
    },
  } as unknown as Nic;
  // Loops yield with setImmediate (a chained setTimeout is clamped to >= 4 ms); count both.
  const realSetTimeout = globalThis.setTimeout, realSetImmediate = globalThis.setImmediate;
  let yields = 0;
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    yields++;
    return realSetTimeout(fn, ms);
  }) as typeof setTimeout;
  globalThis.setImmediate = ((fn: () => void) => {
    yields++;
    return realSetImmediate(fn);
  }) as typeof setImmediate;
  try {
    const frames = 20 * YIELD_EVERY;
    const r = await receive(nic, { count: 0, idleTimeoutMs: 1000, stop: () => delivered >= frames });
    assert.equal(r.foreign, frames);
    assert.ok(yields <= frames / YIELD_EVERY + 1, `${yields} yields for ${frames} frames`);
  } finally {
    globalThis.setTimeout = realSetTimeout;
    globalThis.setImmediate = realSetImmediate;
  }
});

Deno.test("generate: a device that completes nothing stops the sender, which reads the clock only when it yields", async () => {
  const model = new VirtioNetModel({ autoProcess: false }); // takes frames, never completes them
  const nic = VirtioNet.openPci(model.pci());
  const realNow = performance.now.bind(performance), realAlloc = nic.allocTx.bind(nic);
  let clocks = 0, polls = 0;
  performance.now = () => (clocks++, realNow());
  nic.allocTx = (bufs, n, q) => (polls++, realAlloc(bufs, n, q));
  try {
    const dst = new Uint8Array([2, 0, 0, 0, 0, 0xfe]);
    await assert.rejects(
      generate(nic, { count: 100_000, minSize: 60, maxSize: 60, dst, stallMs: 300 }),
      /completed nothing for 0.3 s \(256 frames queued so far\)/,
    );
    // A poll of a full ring is cheap; a clock read in a VM may not be (the lab guest's clock is the HPET).
    assert.ok(polls > 10_000 && clocks * 500 < polls, `${clocks} clock reads for ${polls} polls`);
  } finally {
    performance.now = realNow;
    await nic.close();
  }
});

Deno.test("generate: the clock is read by the sender's rate, not per batch, and durationMs still ends the run", async () => {
  const model = new VirtioNetModel(); // completes every frame at once
  const nic = VirtioNet.openPci(model.pci());
  const realNow = performance.now.bind(performance);
  let clocks = 0;
  performance.now = () => (clocks++, realNow());
  try {
    const dst = new Uint8Array([2, 0, 0, 0, 0, 0xfe]);
    const r = await generate(nic, {
      count: 2 ** 31 - 1,
      minSize: 60,
      maxSize: 60,
      dst,
      batch: 1,
      durationMs: 300,
      headerOnly: true,
    });
    assert.ok(r.seconds >= 0.3, `ran ${r.seconds} s`);
    // At the model's rate a fixed 64 frames between reads would be one read per 64 frames.
    assert.ok(clocks * 256 < r.sent, `${clocks} clock reads for ${r.sent} frames`);
  } finally {
    performance.now = realNow;
    await nic.close();
  }
});
