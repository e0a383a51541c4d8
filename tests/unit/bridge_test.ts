/** The TAP bridge against a virtio-net model and an in-memory frame port. */
import assert from "assert";
import { bridge, type FramePort } from "../../apps/bridge.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import type { Nic, PacketBuffer } from "../../drivers/net/nic.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { ALL } from "./net_fixture.ts";

/** A frame port reading from a list of frames (the TAP's side); what the NIC side delivers is kept. */
class ListPort implements FramePort {
  readonly fd = -1;
  readonly written: Uint8Array[] = [];
  constructor(readonly frames: Uint8Array[]) {}
  read(buf: Uint8Array, max: number): number {
    const f = this.frames.shift();
    if (!f) return -1;
    const n = Math.min(f.length, max);
    buf.set(f.subarray(0, n));
    return n;
  }
  write(buf: Uint8Array, len: number): boolean {
    this.written.push(buf.slice(0, len));
    return true;
  }
}

Deno.test("bridge: frames read from the TAP wait while the NIC's ring is full, none dropped, order kept", async () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xa], features: ALL });
  const real = VirtioNet.openPci(m.pci());
  // A NIC whose ring takes two frames on odd rounds and none on even ones (a slow device).
  let round = 0, polls = 0;
  const send = real.sendBatch.bind(real), nic: Nic = real;
  nic.sendBatch = (pkts: PacketBuffer[], n: number, q?: number) =>
    send(pkts, round++ % 2 ? Math.min(n, 2) : 0, q);
  const frames = Array.from({ length: 100 }, (_, i) => {
    const f = new Uint8Array(60 + i);
    f.set(real.mac, 0);
    f[14] = i;
    return f;
  });
  // One frame too short for an Ethernet header: not carried, counted, and the frames around it go on. A frame of
  // exactly a header is carried.
  frames.splice(50, 0, new Uint8Array(10));
  frames.splice(60, 1, new Uint8Array(14)); // in place of frame 59
  const port = new ListPort(frames);
  try {
    const s = await bridge(nic, port, {
      stop: () => m.sent[0].length >= 100 || ++polls > 10_000,
      interrupts: false,
    });
    assert.equal(s.toNic, 100);
    assert.equal(s.nicDropped, 1, "only the frame no NIC carries");
    assert.deepEqual(
      m.sent[0].map((f) => [f.length, f[14]]),
      Array.from({ length: 100 }, (_, i) => i === 59 ? [14, undefined] : [60 + i, i]),
    );
  } finally {
    await real.close();
  }
});

Deno.test("bridge: on interrupts it sleeps only when idle, never while frames wait to go out", async () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xa], features: ALL });
  const nic = VirtioNet.openPci(m.pci(), { irq: "msix" });
  // The ring takes one frame per round: frames are held across rounds, the bridge is busy all along.
  const send = nic.sendBatch.bind(nic);
  nic.sendBatch = (pkts: PacketBuffer[], n: number, q?: number) => send(pkts, Math.min(n, 1), q);
  const port = new ListPort(Array.from({ length: 40 }, () => new Uint8Array(60)));
  let rounds = 0;
  try {
    const s = await bridge(nic, port, {
      stop: () => m.sent[0].length >= 40 || ++rounds > 1000,
      interrupts: true,
    });
    assert.equal(s.toNic, 40);
    assert.ok(s.sleeps <= 1, `${s.sleeps} sleeps while frames were waiting`);
  } finally {
    await nic.close();
  }
});

Deno.test("bridge: frames only from the NIC keep it busy too: no sleep between them", async () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xa], features: ALL });
  const nic = VirtioNet.openPci(m.pci(), { irq: "msix" });
  // One frame per receive call: every round has NIC → TAP work and nothing from the TAP.
  const receive = nic.receiveBatch.bind(nic);
  nic.receiveBatch = (out: PacketBuffer[], _max: number, q?: number) => receive(out, 1, q);
  for (let i = 0; i < 20; i++) assert.ok(m.deliver(new Uint8Array(60).fill(i)));
  const port = new ListPort([]);
  let rounds = 0;
  try {
    const s = await bridge(nic, port, {
      stop: () => port.written.length >= 20 || ++rounds > 1000,
      interrupts: true,
    });
    assert.equal(s.toTap, 20);
    assert.ok(s.sleeps <= 1, `${s.sleeps} sleeps while frames were arriving`);
  } finally {
    await nic.close();
  }
});
