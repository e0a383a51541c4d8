/** The traffic loops (apps/traffic.ts). */
import assert from "assert";
import { receive, YIELD_EVERY } from "../../apps/traffic.ts";
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
