/**
 * pvdrv on both sides of one ring: its own `VirtioNet` driver, through an in-process vhost-user front end that plays
 * QEMU (tests/models/vhost_user_frontend.ts), against its vhost-user backend (`VhostUserNet`). Then the front end
 * turns hostile: bad messages are refused with nothing leaked, a broken ring is quarantined alone.
 */
import assert from "node:assert/strict";
import { LINUX_FD_OPS } from "../../ffi/unix.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { VhostUserNet } from "../../drivers/virtio/vhost_net.ts";
import { VHOST_USER, VHOST_USER_FLAG } from "../../drivers/virtio/vhost_user_wire.ts";
import type { Nic, PacketBuffer } from "../../drivers/net/nic.ts";
import { GUEST_BASE, OneShotAcceptor, VhostUserFrontend } from "../models/vhost_user_frontend.ts";
import { RING } from "../../drivers/virtio/split_ring.ts";
import { openNic } from "../../system/table.ts";
import { FdListener, FdSocket } from "../../ffi/unix.ts";

const HOST_MAC = new Uint8Array([2, 0, 0, 0, 0, 1]);

function openFds(): number {
  return [...Deno.readDirSync("/proc/self/fd")].length;
}
/** Open descriptors as "fd=target"; one closed before it is read (the listing's own directory handle) is left out. */
function fdList(): string[] {
  return [...Deno.readDirSync("/proc/self/fd")].flatMap((e) => {
    try {
      return [e.name + "=" + Deno.readLinkSync("/proc/self/fd/" + e.name)];
    } catch {
      return [];
    }
  });
}

/** Descriptors open now that were not in `before`, once closes in flight have settled (at most 5 s). */
async function keptSince(before: string[]): Promise<string[]> {
  let kept = fdList().filter((x) => !before.includes(x));
  for (let i = 0; i < 100 && kept.length; i++) {
    await new Promise((r) => setTimeout(r, 50));
    kept = fdList().filter((x) => !before.includes(x));
  }
  return kept;
}

interface Rig {
  fe: VhostUserFrontend;
  nic: VhostUserNet;
  close(): Promise<void>;
}

function rig(pairs = 1): Rig {
  let nic: VhostUserNet | null = null;
  const fe = new VhostUserFrontend(() => nic?.pumpControl(), 2 * pairs);
  nic = new VhostUserNet(new OneShotAcceptor(fe.backendEnd), LINUX_FD_OPS, { mac: HOST_MAC, pairs });
  nic.pumpControl(); // accept
  fe.connect();
  return {
    fe,
    nic,
    async close() {
      await nic!.close();
      fe.close();
    },
  };
}

function frame(seq: number, len: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set([0x52, 0x54, 0, 0x12, 0x34, 0x57], 0);
  f.set(HOST_MAC, 6);
  f[12] = 0x88, f[13] = 0xb5;
  for (let i = 14; i < len; i++) f[i] = (seq * 7 + i) & 0xff;
  return f;
}

function send(nic: Nic, frames: Uint8Array[]): number {
  const bufs: PacketBuffer[] = [];
  const n = nic.allocTx(bufs, frames.length);
  for (let i = 0; i < n; i++) bufs[i].data.set(frames[i]), bufs[i].length = frames[i].length;
  const sent = nic.sendBatch(bufs, n);
  if (sent < n) nic.release(bufs.slice(sent), n - sent);
  return sent;
}

function receive(nic: Nic, max = 64): Uint8Array[] {
  const bufs: PacketBuffer[] = [];
  const n = nic.receiveBatch(bufs, max);
  const out = bufs.slice(0, n).map((b) => b.data.slice(0, b.length));
  nic.release(bufs, n);
  return out;
}

Deno.test("vhost-user: pvdrv's VirtioNet and pvdrv's backend exchange 2,000 frames of 60-1514 bytes both ways", async () => {
  const { fe, nic, close } = rig();
  const fds = openFds();
  const drv = VirtioNet.open(fe.bus(), { queueSize: 128 });
  try {
    assert.ok(nic.linkUp(), "rings started and enabled at DRIVER_OK");
    assert.ok(nic.session!.has(1n << 29n), "EVENT_IDX negotiated");
    const sizes = (i: number) => 60 + (i * 397) % 1455;
    // Guest → host.
    let sent = 0, got = 0;
    for (let round = 0; sent < 2000 && round < 10000; round++) {
      const batch = [];
      for (let i = 0; i < 32 && sent + batch.length < 2000; i++) batch.push(frame(sent + i, sizes(sent + i)));
      sent += send(drv, batch);
      for (const f of receive(nic)) {
        assert.deepEqual(f, frame(got, sizes(got)), `frame ${got}`);
        got++;
      }
      drv.reclaimTx();
    }
    assert.equal(got, 2000);
    // Host → guest (mergeable RX buffers).
    sent = 0, got = 0;
    for (let round = 0; got < 2000 && round < 10000; round++) {
      const batch = [];
      for (let i = 0; i < 32 && sent + batch.length < 2000; i++) batch.push(frame(sent + i, sizes(sent + i)));
      sent += send(nic, batch);
      for (const f of receive(drv)) {
        assert.deepEqual(f, frame(got, sizes(got)), `frame ${got}`);
        got++;
      }
    }
    assert.equal(got, 2000);
    const s = nic.stats()[0];
    assert.equal(s.rxPackets, 2000);
    assert.equal(s.txPackets, 2000);
    assert.equal(nic.counters.quarantined, 0);
  } finally {
    await drv.close();
    await close();
  }
  // Closes wait for the process's poll thread to let go of the descriptors (at most 5 s).
  for (let i = 0; i < 100 && openFds() > fds; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(openFds() <= fds, `every descriptor the backend received is closed (${openFds()} > ${fds})`);
});

Deno.test("vhost-user: GET_VRING_BASE stops a ring and reports where it stopped; a restart resumes there", async () => {
  const { fe, nic, close } = rig();
  const drv = VirtioNet.open(fe.bus(), { queueSize: 64 });
  try {
    for (let i = 0; i < 5; i++) send(drv, [frame(i, 100)]);
    assert.equal(receive(nic).length, 5);
    const ring = nic.session!.rings[1];
    const addr = ring.addr!;
    assert.equal(fe.stopRing(1), 5, "five chains taken from the TX ring");
    assert.equal(nic.session!.rings[1].started, false);
    assert.equal(nic.linkUp(), false);
    // While stopped, a frame the guest posts stays in its ring.
    send(drv, [frame(5, 100)]);
    assert.equal(receive(nic).length, 0);
    // QEMU restarts the ring at the used index (vhost-user.rst: SET_VRING_BASE, then the kick).
    fe.startRing(1, 64, {
      desc: Number(addr.desc) - 0x7f00_0000_0000,
      driver: Number(addr.avail) - 0x7f00_0000_0000,
      device: Number(addr.used) - 0x7f00_0000_0000,
    }, 5);
    const f = receive(nic);
    assert.equal(f.length, 1);
    assert.deepEqual(f[0], frame(5, 100));
  } finally {
    await drv.close();
    await close();
  }
});

Deno.test("vhost-user: a guest that breaks its TX ring has that ring quarantined, its error eventfd signalled", async () => {
  const { fe, nic, close } = rig();
  const drv = VirtioNet.open(fe.bus(), { queueSize: 64 });
  try {
    send(drv, [frame(0, 100)]);
    assert.equal(receive(nic).length, 1);
    // The guest writes avail.idx 1000 ahead: more than the ring holds.
    const a = nic.session!.rings[1].addr!;
    const off = Number(a.avail) - 0x7f00_0000_0000 - GUEST_BASE;
    const v = new DataView(fe.mem.bytes.buffer, fe.mem.bytes.byteOffset + off, 4);
    v.setUint16(RING.IDX, (v.getUint16(RING.IDX, true) + 1000) & 0xffff, true);
    assert.equal(receive(nic).length, 0, "nothing taken from a broken ring");
    assert.match(String(nic.session!.rings[1].broken), /ahead of a ring of 64/);
    assert.equal(nic.counters.quarantined, 1);
    assert.ok(fe.errs[1].drain(), "the error eventfd was signalled");
    assert.throws(() => nic.checkHealth(), /the guest broke a ring of pair 0/);
    // The RX ring (host → guest) still works.
    assert.equal(send(nic, [frame(1, 200)]), 1);
    const f = receive(drv);
    assert.equal(f.length, 1);
    assert.deepEqual(f[0], frame(1, 200));
  } finally {
    await drv.close();
    await close();
  }
});

Deno.test("vhost-user: refused messages leave the session as it was and leak no descriptor", async () => {
  const { fe, nic, close } = rig();
  try {
    const before = fdList();
    const s = nic.session!;
    const ack = VHOST_USER_FLAG.NEED_REPLY;
    const failed = () => VhostUserFrontend.prototype.reply.call(fe).payload[0] !== 0;
    // A vring index past the device's.
    fe.request(VHOST_USER.SET_VRING_NUM, VhostUserFrontend.state(9, 64), [], ack);
    assert.ok(failed(), "SET_VRING_NUM on vring 9 refused");
    // A ring size that is not a power of two.
    fe.request(VHOST_USER.SET_VRING_NUM, VhostUserFrontend.state(0, 100), [], ack);
    assert.ok(failed());
    // Features not offered.
    fe.request(VHOST_USER.SET_FEATURES, VhostUserFrontend.u64(1n << 60n), [], ack);
    assert.ok(failed());
    // Descriptors on a message that takes none are closed.
    fe.request(VHOST_USER.SET_OWNER, new Uint8Array(0), [fe.kicks[0].fd, fe.kicks[1].fd], ack);
    assert.ok(failed());
    // A kick with two descriptors.
    fe.request(VHOST_USER.SET_VRING_KICK, VhostUserFrontend.u64(0), [fe.kicks[0].fd, fe.kicks[1].fd], ack);
    assert.ok(failed());
    // A memory table whose region the file does not hold (a SIGBUS waiting to happen).
    const p = new Uint8Array(40);
    new DataView(p.buffer).setUint32(0, 1, true);
    new DataView(p.buffer).setBigUint64(8 + 8, BigInt(fe.size * 2), true);
    fe.request(VHOST_USER.SET_MEM_TABLE, p, [fe.memFd], ack);
    assert.ok(failed());
    assert.equal(s.memory, null);
    // A kick before the ring was set up: refused, the ring stays stopped.
    fe.request(VHOST_USER.SET_VRING_KICK, VhostUserFrontend.u64(0), [fe.kicks[0].fd], ack);
    assert.ok(failed());
    assert.equal(s.rings[0].started, false);
    assert.equal(s.closed, false);
    // Closes wait for the process's poll thread to let go of the descriptors.
    assert.deepEqual(await keptSince(before), [], "no descriptor kept from refused messages");
    // A header with a bad version ends the session; all it held is released.
    const h = new Uint8Array(12);
    new DataView(h.buffer).setUint32(4, 2, true);
    fe.sock.send(h);
    nic.pumpControl();
    assert.equal(s.closed, true);
    assert.match(String(s.lastError), /version 2, not 1/);
    assert.equal(nic.session, null);
    assert.equal(nic.linkUp(), false);
  } finally {
    await close();
  }
});

Deno.test("vhost-user: openNic('vhost-user:PATH') listens (replacing a stale socket), waits on kicks, serves", async () => {
  const dir = Deno.makeTempDirSync(), path = `${dir}/vm.sock`;
  // A socket file left by a killed backend: replaced, not an error.
  FdListener.listen(path); // never closed: as if its process died
  const nic = await openNic(`vhost-user:${path}`, { irq: "msix" }) as VhostUserNet;
  const fe = new VhostUserFrontend(() => nic.pumpControl(), 2, 8 << 20, FdSocket.connect(path));
  try {
    nic.pumpControl();
    fe.connect();
    const drv = VirtioNet.open(fe.bus(), { queueSize: 64 });
    try {
      assert.ok(nic.linkUp());
      // The host sleeps on the guest's TX kick: waitRx resolves once the guest sends.
      const woke = nic.waitRx();
      send(drv, [frame(1, 300)]);
      await woke;
      assert.deepEqual(receive(nic), [frame(1, 300)]);
    } finally {
      await drv.close();
    }
  } finally {
    await nic.close();
    fe.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
