/**
 * The switch (apps/switch.ts) joining two in-process guests: each is pvdrv's own VirtioNet behind an in-process
 * vhost-user front end, served by a VhostUserNet port. Learning, flooding, no echo back, the table's bound, and
 * a guest's partial checksum completed on the way.
 */
import assert from "node:assert/strict";
import { LINUX_FD_OPS } from "../../ffi/unix.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { VhostUserNet } from "../../drivers/virtio/vhost_net.ts";
import type { Nic, PacketBuffer } from "../../drivers/net/nic.ts";
import { FdPort, MAX_MACS, NicPort, Switch, type SwitchPort } from "../../apps/switch.ts";
import { UdpLink } from "../../ffi/udp_link.ts";
import { PcapWriter } from "../../apps/pcap.ts";
import { OneShotAcceptor, VhostUserFrontend } from "../models/vhost_user_frontend.ts";
import { finish, sum16 } from "../../net/checksum.ts";

interface Guest {
  fe: VhostUserFrontend;
  port: NicPort;
  drv: VirtioNet;
}

function guest(i: number): Guest {
  let nic: VhostUserNet | null = null;
  const fe = new VhostUserFrontend(() => nic?.pumpControl());
  nic = new VhostUserNet(new OneShotAcceptor(fe.backendEnd), LINUX_FD_OPS, {
    mac: new Uint8Array([2, 0, 0, 0, 9, i]),
  });
  nic.pumpControl();
  fe.connect();
  const drv = VirtioNet.open(fe.bus(), { queueSize: 64 });
  return { fe, port: new NicPort(`vhost-user:${i}`, nic), drv };
}

function frame(dst: Uint8Array, src: Uint8Array, len: number, fill = 0): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88, f[13] = 0xb5;
  for (let i = 14; i < len; i++) f[i] = (i + fill) & 0xff;
  return f;
}

function send(nic: Nic, f: Uint8Array, csum?: { start: number; offset: number }): void {
  const b: PacketBuffer[] = [];
  assert.equal(nic.allocTx(b, 1), 1);
  b[0].data.set(f);
  b[0].length = f.length;
  if (csum) b[0].csumStart = csum.start, b[0].csumOffset = csum.offset;
  assert.equal(nic.sendBatch(b, 1), 1);
}

function received(nic: Nic): Uint8Array[] {
  const b: PacketBuffer[] = [];
  const n = nic.receiveBatch(b, 64);
  const out = b.slice(0, n).map((x) => x.data.slice(0, x.length));
  nic.release(b, n);
  return out;
}

async function closeAll(gs: Guest[]): Promise<void> {
  for (const g of gs) {
    await g.drv.close();
    await g.port.close();
    g.fe.close();
  }
}

const MAC_A = new Uint8Array([0x52, 0x54, 0, 0, 0, 0xa]);
const MAC_B = new Uint8Array([0x52, 0x54, 0, 0, 0, 0xb]);
const MAC_C = new Uint8Array([0x52, 0x54, 0, 0, 0, 0xc]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

Deno.test("switch: floods the unknown and broadcasts, learns sources, then sends only where a MAC lives", async () => {
  const gs = [guest(1), guest(2), guest(3)];
  const sw = new Switch(gs.map((g) => g.port as SwitchPort));
  try {
    // A broadcasts: B and C get it, A does not.
    send(gs[0].drv, frame(BCAST, MAC_A, 60));
    assert.equal(sw.round(0), 1);
    assert.equal(received(gs[1].drv).length, 1);
    assert.equal(received(gs[2].drv).length, 1);
    assert.equal(received(gs[0].drv).length, 0, "never back where it came from");
    // B answers A: A's MAC was learned on port 0, so only A gets it.
    const reply = frame(MAC_A, MAC_B, 1514, 3);
    send(gs[1].drv, reply);
    sw.round(1);
    assert.deepEqual(received(gs[0].drv), [reply]);
    assert.equal(received(gs[2].drv).length, 0, "C does not see unicast for A");
    // To C, not yet learned: flooded to A and C.
    send(gs[0].drv, frame(MAC_C, MAC_A, 100));
    sw.round(2);
    assert.equal(received(gs[1].drv).length, 1);
    assert.equal(received(gs[2].drv).length, 1);
    assert.equal(sw.counters.flooded, 2);
    assert.equal(sw.learned, 2);
    assert.equal(gs[0].port.counters.rx, 2);
    assert.equal(gs[0].port.counters.tx, 1);
  } finally {
    await closeAll(gs);
  }
});

Deno.test("switch: a guest's partial UDP checksum is completed before the other guest gets the frame", async () => {
  const gs = [guest(1), guest(2)];
  const sw = new Switch(gs.map((g) => g.port as SwitchPort));
  try {
    // An IPv4/UDP frame whose checksum field holds the pseudo-header seed, as a driver leaves it for the device.
    const f = frame(MAC_B, MAC_A, 14 + 20 + 8 + 30);
    f[12] = 0x08, f[13] = 0x00;
    const ip = 14, udp = 34;
    f.set([0x45, 0, 0, 58, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2], ip);
    f.set([0x30, 0x39, 0x00, 0x07, 0, 38, 0, 0], udp);
    const seed = (10 << 8) + 1 + (10 << 8) + 2 + 17 + 38;
    f[udp + 6] = (seed >> 8) & 0xff, f[udp + 7] = seed & 0xff;
    send(gs[0].drv, f, { start: udp, offset: 6 });
    sw.round(0);
    const [got] = received(gs[1].drv);
    assert.ok(got, "delivered");
    // The receiver's check: the UDP checksum over pseudo header and datagram sums to zero.
    const pseudo = (10 << 8) + 1 + (10 << 8) + 2 + 17 + 38;
    assert.equal(finish(sum16(got, udp, 38, pseudo)), 0, "the checksum is complete and right");
    assert.notDeepEqual(got.subarray(udp + 6, udp + 8), f.subarray(udp + 6, udp + 8));
  } finally {
    await closeAll(gs);
  }
});

Deno.test("switch: --pcap captures every frame switched, whole, in order", async () => {
  const gs = [guest(1), guest(2)];
  const file = Deno.makeTempFileSync({ suffix: ".pcap" });
  const pcap = new PcapWriter(file);
  const sw = new Switch(gs.map((g) => g.port as SwitchPort), pcap);
  try {
    const a = frame(BCAST, MAC_A, 60), b = frame(MAC_A, MAC_B, 1514, 1);
    send(gs[0].drv, a);
    sw.round(0);
    send(gs[1].drv, b);
    sw.round(1);
    pcap.close();
    const d = Deno.readFileSync(file), v = new DataView(d.buffer);
    assert.equal(v.getUint32(0, true), 0xa1b2c3d4);
    // Record 1 at 24: 16-byte header (caplen at +8), then the frame; record 2 after it.
    assert.equal(v.getUint32(24 + 8, true), 60);
    assert.deepEqual(d.subarray(40, 100), a);
    assert.equal(v.getUint32(100 + 8, true), 1514);
    assert.deepEqual(d.subarray(116, 116 + 1514), b);
    assert.equal(d.length, 116 + 1514);
  } finally {
    await closeAll(gs);
    Deno.removeSync(file);
  }
});

Deno.test("switch: the learning table never grows past its bound; a full table floods", () => {
  const sent: number[] = [];
  const port = (name: string, frames: Uint8Array[]): SwitchPort => ({
    name,
    counters: { rx: 0, rxBytes: 0, tx: 0, txBytes: 0, dropped: 0, bad: 0 },
    receive(input, max) {
      let n = 0;
      while (n < max && frames.length) input(this, frames.shift()!, 60), n++;
      return n;
    },
    output(_d, len) {
      sent.push(len);
      return true;
    },
    flush() {},
    wait: () => Promise.resolve(),
    close() {},
  });
  const flood: Uint8Array[] = [];
  for (let i = 0; i < MAX_MACS + 100; i++) {
    flood.push(frame(MAC_B, new Uint8Array([0x52, 0, 0, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff]), 60));
  }
  const sw = new Switch([port("a", flood), port("b", [])]);
  while (sw.round(0)) { /* until the flood is switched */ }
  assert.equal(sw.learned, MAX_MACS);
  assert.equal(sw.counters.unlearned, 100);
  assert.equal(sent.length, MAX_MACS + 100);
});

Deno.test("switch: a guest's frames leave through a UDP link port, one per datagram, and come back in", async () => {
  // Two UDP links on loopback facing each other: the switch's port, and the far end this test reads.
  const pa = 40000 + Math.floor(Math.random() * 10000), pb = pa + 1;
  const far = UdpLink.open(`127.0.0.1:${pa}`, pb);
  const link = UdpLink.open(`127.0.0.1:${pb}`, pa);
  const g = guest(7);
  const udp = new FdPort("udp", link, () => Promise.resolve(), () => link.close());
  const sw = new Switch([g.port, udp]);
  try {
    const out = frame(MAC_B, MAC_A, 300, 5);
    send(g.drv, out);
    sw.round(0);
    const buf = new Uint8Array(2048);
    let n = -1;
    for (let i = 0; i < 100 && n < 0; i++) {
      n = far.read(buf, buf.length), n < 0 && await new Promise((r) => setTimeout(r, 5));
    }
    assert.deepEqual(buf.slice(0, n), out, "the frame, whole, in one datagram");
    const back = frame(MAC_A, MAC_B, 1514, 9);
    assert.ok(far.write(back, back.length));
    let got: Uint8Array[] = [];
    for (let i = 0; i < 100 && !got.length; i++) {
      sw.round(1);
      got = received(g.drv);
      if (!got.length) await new Promise((r) => setTimeout(r, 5));
    }
    assert.deepEqual(got, [back], "learned: the reply goes to the guest");
    assert.deepEqual([udp.counters.rx, udp.counters.tx], [1, 1]);
  } finally {
    far.close();
    await udp.close();
    await g.drv.close();
    await g.port.close();
    g.fe.close();
  }
});
