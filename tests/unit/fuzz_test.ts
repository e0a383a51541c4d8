/** The fuzzer's oracle must catch planted driver bugs, or a clean fuzz run would prove nothing. */
import assert from "assert";
import { fuzzTarget } from "../fuzz/fuzz.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { PacketPool } from "../../drivers/net/packet_pool.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";

Deno.test("fuzz: a clean driver gives only ok and clean breaks", async () => {
  const r = await fuzzTarget("virtio", 0.5, 7);
  assert.ok(r.iterations > 0 && r.events > 1000, `${r.events} events`);
  assert.equal(r.counts["other-exception"] + r.counts.silent + r.counts.leak + r.counts.hang, 0);
});

Deno.test("fuzz: the oracle catches a buffer handed out twice (silent) and pools never freed (leak)", async () => {
  const recv = VirtioNet.prototype.receiveBatch;
  VirtioNet.prototype.receiveBatch = function (out: PacketBuffer[], max: number, q?: number) {
    const n = recv.call(this, out, max, q);
    if (n > 0 && n < max) out[n] = out[0];
    return n > 0 && n < max ? n + 1 : n;
  };
  try {
    const r = await fuzzTarget("virtio", 0.5, 7);
    assert.ok(r.counts.silent > 0, JSON.stringify(r.counts));
    assert.match(r.failures[0].detail, /handed out twice/);
  } finally {
    VirtioNet.prototype.receiveBatch = recv;
  }
  const retire = PacketPool.prototype.retire;
  PacketPool.prototype.retire = function () {};
  try {
    const r = await fuzzTarget("virtio", 0.5, 7);
    assert.ok(r.counts.leak > 0, JSON.stringify(r.counts));
  } finally {
    PacketPool.prototype.retire = retire;
  }
});
