/** The fuzzer's oracle must catch planted driver bugs, or a clean fuzz run would prove nothing. */
import assert from "assert";
import { fuzzTarget } from "../fuzz/fuzz.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { PacketPool } from "../../drivers/net/packet_pool.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import { type Datagram, UdpSocket } from "../../net/udp.ts";
import { ArpCache, Enqueued } from "../../net/arp.ts";

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

Deno.test("fuzz net: the host on a hostile wire gives only ok outcomes (the CI seed)", async () => {
  const r = await fuzzTarget("net", 1.5, 20261206);
  assert.ok(r.iterations > 0 && r.events > 20_000, `${r.events} frames`);
  assert.deepEqual(r.failures, []);
  assert.equal(r.counts.ok, r.iterations);
});

Deno.test("fuzz net: the oracle catches a reflected reply, a lost valid frame and an ARP flood", async () => {
  const planted: [string, () => () => void, RegExp][] = [
    ["replies to the limited broadcast", () => {
      const reply = UdpSocket.prototype.reply;
      UdpSocket.prototype.reply = function (d: Datagram) {
        return this.sendBytes(d.bytes, d.offset, d.length, 0xffffffff, d.srcPort);
      };
      return () => void (UdpSocket.prototype.reply = reply);
    }, /broadcast|special/],
    ["drops one datagram in 40 uncounted", () => {
      const deliver = UdpSocket.prototype.deliver;
      let n = 0;
      UdpSocket.prototype.deliver = function (d: Datagram) {
        if (++n % 40 !== 0) deliver.call(this, d);
      };
      return () => void (UdpSocket.prototype.deliver = deliver);
    }, /no reply to a valid UDP/],
    ["asks for every unresolved address at once", () => {
      const enqueue = ArpCache.prototype.enqueue;
      ArpCache.prototype.enqueue = function (ip: number, f: Uint8Array, now: number) {
        enqueue.call(this, ip, f, now);
        return Enqueued.Request;
      };
      return () => void (ArpCache.prototype.enqueue = enqueue);
    }, /ARP requests in/],
  ];
  for (const [what, plant, expected] of planted) {
    const undo = plant();
    try {
      const r = await fuzzTarget("net", 1, 5);
      assert.ok(r.counts.silent > 0, `${what}: ${JSON.stringify(r.counts)}`);
      assert.match(r.failures[0].detail, expected, what);
    } finally {
      undo();
    }
  }
});
