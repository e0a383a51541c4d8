/** The test frame format and flow frames (apps/frames.ts), and the multi-queue peer's control replies (lab/guest/mq_peer.ts). */
import assert from "assert";
import {
  checkFlowFrame,
  FLOW_PORT,
  FrameCheck,
  MIN_FLOW_FRAME,
  MIN_TEST_FRAME,
  writeFlowFrame,
  writeFrame,
} from "../../apps/frames.ts";
import { finish, sum16 } from "../../net/checksum.ts";
import { MQ_CTRL_ETHERTYPE, parseStats } from "../../lab/guest/mq_peer.ts";
import { checkFrame, PVDRV_ETHERTYPE } from "../../apps/frames.ts";

const A = new Uint8Array([2, 0, 0, 0, 0, 1]), B = new Uint8Array([2, 0, 0, 0, 0, 2]);

/** The frame as the peer sends it back: MACs, IPv4 addresses and UDP ports swapped. */
function reflect(b: Uint8Array): void {
  const swap = (x: number, y: number, n: number) => {
    const t = b.slice(x, x + n);
    b.copyWithin(x, y, y + n);
    b.set(t, y);
  };
  swap(0, 6, 6);
  swap(26, 30, 4);
  swap(34, 36, 2);
}

Deno.test("flow frames: every size checks out both ways with its sequence and flow; IPv4 header checksummed", () => {
  const b = new Uint8Array(1514), out = new Uint32Array(2);
  for (let len = MIN_FLOW_FRAME; len <= 1514; len += 97) {
    const seq = 0xfffff000 + len, flow = len % 300;
    writeFlowFrame(b, len, seq, flow, A, B);
    assert.equal(finish(sum16(b, 14, 20)), 0, "the IPv4 header sums to zero");
    assert.equal((b[34] << 8) | b[35], FLOW_PORT + flow);
    assert.equal(checkFlowFrame(b, len, out), FrameCheck.Ok);
    assert.deepEqual([...out], [seq >>> 0, flow]);
    reflect(b);
    out.fill(0);
    assert.equal(checkFlowFrame(b, len, out), FrameCheck.Ok, "a reflected frame is the same flow");
    assert.deepEqual([...out], [seq >>> 0, flow]);
  }
});

Deno.test("flow frames: a flipped byte anywhere past the MACs, or a wrong length, is never Ok", () => {
  const b = new Uint8Array(200), out = new Uint32Array(2);
  writeFlowFrame(b, 200, 77, 5, A, B);
  for (let i = 12; i < 200; i++) {
    b[i] ^= 0x10;
    assert.notEqual(checkFlowFrame(b, 200, out), FrameCheck.Ok, `byte ${i} flipped`);
    b[i] ^= 0x10;
  }
  assert.equal(checkFlowFrame(b, 199, out), FrameCheck.Corrupt, "one byte short");
  assert.equal(checkFlowFrame(b, 200, out), FrameCheck.Ok);
  b[13] = 0x06; // ARP
  assert.equal(checkFlowFrame(b, 200, out), FrameCheck.Foreign);
  assert.throws(() => writeFlowFrame(b, MIN_FLOW_FRAME - 1, 0, 0, A, B), RangeError);
  assert.throws(() => writeFlowFrame(b, 100, 0, 0x7fff, A, B), RangeError);
});

function statsFrame(text: string): Uint8Array {
  const b = new Uint8Array(128);
  b.set(B, 6);
  b[12] = MQ_CTRL_ETHERTYPE >> 8;
  b[13] = MQ_CTRL_ETHERTYPE & 0xff;
  b.set(new TextEncoder().encode(text), 14);
  return b;
}

Deno.test("mqpeer stats: only the reply to this request's token is taken, and only well-formed counters", () => {
  const good = statsFrame("stats 7 10 0 1 640 10 4000 0 123 5");
  const s = parseStats(good, 128, 7);
  assert.ok(s);
  assert.deepEqual(
    { ...s, mac: [...s.mac] },
    {
      valid: 10,
      corrupt: 0,
      foreign: 1,
      bytes: 640,
      reflected: 10,
      blasted: 4000,
      dropped: 0,
      tapRx: 123,
      socketDrops: 5,
      mac: [...B],
    },
  );
  assert.equal(parseStats(good, 128, 6), null, "a late reply to an earlier request");
  assert.equal(parseStats(statsFrame("stats 7 10 0 1 640 10 4000 0 -1 5"), 128, 7), null, "negative");
  assert.equal(parseStats(statsFrame("stats 7 10 0 1 640 10 4000 0 5"), 128, 7), null, "a counter missing");
  assert.equal(parseStats(statsFrame("stats 7 x 0 1 640 10 4000 0 1 5"), 128, 7), null, "not a number");
  const other = statsFrame("stats 7 10 0 1 640 10 4000 0 123 5");
  other[13] = 0xb5;
  assert.equal(parseStats(other, 128, 7), null, "another ethertype");
});

Deno.test("frames: writeFrame refuses a length below an Ethernet header or past the buffer", () => {
  const buf = new Uint8Array(100), mac = new Uint8Array(6);
  writeFrame(buf, MIN_TEST_FRAME, 1, mac, mac);
  writeFrame(buf, 100, 1, mac, mac);
  assert.throws(() => writeFrame(buf, MIN_TEST_FRAME - 1, 1, mac, mac), RangeError);
  assert.throws(() => writeFrame(buf, 101, 1, mac, mac), RangeError);
});

Deno.test("frames: a buffer shorter than a pvdrv header is foreign even with the pvdrv ethertype", () => {
  const b = new Uint8Array(23);
  b[12] = PVDRV_ETHERTYPE >> 8;
  b[13] = PVDRV_ETHERTYPE & 0xff;
  b.set([0x50, 0x56, 0x44, 0x52], 14); // "PVDR"
  assert.equal(checkFrame(b, 23, new Uint32Array(1)), FrameCheck.Foreign);
});
