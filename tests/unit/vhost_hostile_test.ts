/**
 * One test per class of hostile input behind the published vhost-user backend CVEs (DPDK CVE-2020-10722…10726,
 * CVE-2020-14374…14378, CVE-2022-2132, CVE-2024-11614; libvhost-user): message header and size, descriptor counts,
 * vring index, ring size, ring and buffer addresses, zero-length descriptors, chain loops and length, indirect
 * tables, descriptor direction, a header spanning descriptors, csum_start, avail index jumps, and double fetches.
 * Each is met by pvdrv's backend with a refusal or a quarantine of that ring alone — never a crash, a read outside
 * the shared memory, or a leaked descriptor.
 */
import assert from "node:assert/strict";
import { LINUX_FD_OPS } from "../../ffi/unix.ts";
import { EventFd } from "../../ffi/irq.ts";
import { VhostUserNet } from "../../drivers/virtio/vhost_net.ts";
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE } from "../../drivers/virtio/split_ring.ts";
import {
  VHOST_USER,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_FLAG,
  writeHeader,
} from "../../drivers/virtio/vhost_user_wire.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import { GUEST_BASE, OneShotAcceptor, VhostUserFrontend } from "../models/vhost_user_frontend.ts";
import { HostileGuest, LAYOUT, Q } from "../models/vhost_guest.ts";

const ACK = VHOST_USER_FLAG.NEED_REPLY;

interface Rig {
  fe: VhostUserFrontend;
  nic: VhostUserNet;
  g: HostileGuest;
  close(): Promise<void>;
}

/** A backend with one pair started on a ring-level guest (features: VERSION_1, plus `extra`). */
function rig(extra = 0n, start = true): Rig {
  let nic: VhostUserNet | null = null;
  const fe = new VhostUserFrontend(() => nic?.pumpControl(), 2, 1 << 20);
  nic = new VhostUserNet(new OneShotAcceptor(fe.backendEnd), LINUX_FD_OPS, {
    mac: new Uint8Array([2, 0, 0, 0, 0, 1]),
    irq: false,
  });
  nic.pumpControl();
  fe.connect();
  fe.request(
    VHOST_USER.SET_FEATURES,
    VhostUserFrontend.u64(F.VERSION_1 | extra | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))),
  );
  assert.ok(fe.setMemTable());
  const g = new HostileGuest(fe);
  if (start) g.start();
  const n = nic;
  return {
    fe,
    nic: n,
    g,
    async close() {
      await n.close();
      fe.close();
    },
  };
}

/** The backend's answer to a NEED_REPLY request: true when it refused. */
function refused(fe: VhostUserFrontend): boolean {
  return fe.reply().payload[0] !== 0;
}

function hostReceive(nic: VhostUserNet): Uint8Array[] {
  const b: PacketBuffer[] = [];
  const n = nic.receiveBatch(b, 32);
  const out = b.slice(0, n).map((x) => x.data.slice(0, x.length));
  nic.release(b, n);
  return out;
}

function hostSend(nic: VhostUserNet, f: Uint8Array): number {
  const b: PacketBuffer[] = [];
  nic.allocTx(b, 1);
  b[0].data.set(f);
  b[0].length = f.length;
  const k = nic.sendBatch(b, 1);
  if (!k) nic.release(b, 1);
  return k;
}

const FRAME = new Uint8Array(100).map((_, i) => i);

/** Quarantined: that ring alone stopped with `why`, its error eventfd signalled, the other direction working. */
function assertQuarantined(r: Rig, ring: 0 | 1, why: RegExp): void {
  const v = r.nic.session!.rings[ring];
  assert.match(String(v.broken), why);
  assert.equal(v.started, false);
  assert.ok(r.fe.errs[ring].drain(), "the ring's error eventfd was signalled");
  assert.equal(r.nic.session!.closed, false, "the session goes on");
  if (ring === 1) {
    // RX still delivers.
    r.g.postRx();
    assert.equal(hostSend(r.nic, FRAME), 1);
    assert.deepEqual(r.g.receive(), [FRAME]);
  } else {
    // TX still collects.
    r.g.postTx(FRAME);
    assert.deepEqual(hostReceive(r.nic), [FRAME]);
  }
}

Deno.test("CVE class: message header and size — bad version, oversized or cut-short messages end the session", async () => {
  for (
    const send of [
      (fe: VhostUserFrontend) => {
        const h = new Uint8Array(12);
        writeHeader(h, { request: VHOST_USER.GET_FEATURES, flags: 2, size: 0 });
        fe.sock.send(h);
      },
      (fe: VhostUserFrontend) => {
        const h = new Uint8Array(12);
        writeHeader(h, { request: VHOST_USER.SET_FEATURES, flags: 1, size: 0x7fffffff });
        fe.sock.send(h);
      },
      (fe: VhostUserFrontend) => {
        const h = new Uint8Array(12 + 8);
        writeHeader(h, { request: VHOST_USER.SET_VRING_ADDR, flags: 1, size: 40 });
        fe.sock.send(h); // 8 of 40 payload bytes, then nothing
      },
    ]
  ) {
    const r = rig();
    try {
      const s = r.nic.session!;
      send(r.fe);
      r.nic.pumpControl();
      assert.equal(s.closed, true, String(s.lastError));
      assert.match(String(s.lastError), /version 2|too large|cut short/);
      assert.equal(r.nic.linkUp(), false);
    } finally {
      await r.close();
    }
  }
});

Deno.test("CVE class: descriptor counts — too many, too few or unexpected descriptors are refused and closed", async () => {
  const r = rig();
  try {
    const extra = Array.from({ length: 9 }, () => new EventFd());
    // Nine descriptors: more than any message takes. The receive refuses and closes them all; the session ends.
    r.fe.request(VHOST_USER.SET_OWNER, new Uint8Array(0), extra.map((e) => e.fd));
    assert.equal(r.nic.session, null);
    extra.forEach((e) => e.close());
  } finally {
    await r.close();
  }
  const r2 = rig();
  try {
    const p = new Uint8Array(8 + 64);
    new DataView(p.buffer).setUint32(0, 2, true);
    r2.fe.request(VHOST_USER.SET_MEM_TABLE, p, [r2.fe.memFd], ACK);
    assert.ok(refused(r2.fe), "2 regions with 1 descriptor");
    r2.fe.request(VHOST_USER.SET_VRING_CALL, VhostUserFrontend.u64(0), [], ACK);
    assert.ok(refused(r2.fe), "a CALL without NOFD and without a descriptor");
    r2.fe.request(VHOST_USER.GET_QUEUE_NUM, new Uint8Array(0), [r2.fe.kicks[0].fd]);
    assert.match(String(r2.nic.session?.lastError ?? "session ended"), /descriptors|ended/);
  } finally {
    await r2.close();
  }
});

Deno.test("CVE class: vring index — an index past the device's is refused; a GET on one ends the session", async () => {
  const r = rig();
  try {
    for (const req of [VHOST_USER.SET_VRING_NUM, VHOST_USER.SET_VRING_BASE, VHOST_USER.SET_VRING_ENABLE]) {
      r.fe.request(req, VhostUserFrontend.state(2, 1), [], ACK);
      assert.ok(refused(r.fe), `request ${req} on vring 2`);
    }
    r.fe.request(VHOST_USER.SET_VRING_KICK, VhostUserFrontend.u64(0xff), [r.fe.kicks[0].fd], ACK);
    assert.ok(refused(r.fe), "a kick for vring 255");
    r.fe.request(VHOST_USER.SET_VRING_KICK, VhostUserFrontend.u64(0x1000), [r.fe.kicks[0].fd], ACK);
    assert.ok(refused(r.fe), "unknown bits in the kick's index word");
    const s = r.nic.session!;
    r.fe.request(VHOST_USER.GET_VRING_BASE, VhostUserFrontend.state(7, 0));
    assert.equal(s.closed, true, "nothing to answer: the session ends");
  } finally {
    await r.close();
  }
});

Deno.test("CVE class: ring size — zero, not a power of two, or past 32768 is refused", async () => {
  const r = rig(0n, false);
  try {
    for (const num of [0, 3, 100, 65536, 0xffffffff]) {
      r.fe.request(VHOST_USER.SET_VRING_NUM, VhostUserFrontend.state(0, num), [], ACK);
      assert.ok(refused(r.fe), `size ${num}`);
    }
    assert.equal(r.nic.session!.rings[0].num, 0);
  } finally {
    await r.close();
  }
});

Deno.test("CVE class: addresses — rings outside the memory, regions that wrap or overlap, buffers outside", async () => {
  const r = rig(0n, false);
  try {
    // A ring whose used area runs past the region's end: its kick is refused and it stays stopped.
    r.fe.startRing(0, Q, {
      desc: GUEST_BASE,
      driver: GUEST_BASE + 0x400,
      device: GUEST_BASE + (1 << 20) - 100,
    });
    assert.equal(r.nic.session!.rings[0].started, false);
    assert.match(String(r.nic.session!.lastError), /outside the shared memory/);
    // Regions that wrap past 2^64, or overlap.
    const table = (regions: [bigint, bigint, bigint][]) => {
      const p = new Uint8Array(8 + 32 * regions.length), v = new DataView(p.buffer);
      v.setUint32(0, regions.length, true);
      regions.forEach(([g, s, u], i) => {
        v.setBigUint64(8 + 32 * i, g, true);
        v.setBigUint64(16 + 32 * i, s, true);
        v.setBigUint64(24 + 32 * i, u, true);
      });
      return p;
    };
    r.fe.request(VHOST_USER.SET_MEM_TABLE, table([[0xffff_ffff_ffff_f000n, 0x2000n, 0n]]), [r.fe.memFd], ACK);
    assert.ok(refused(r.fe), "a region wrapping past 2^64");
    r.fe.request(
      VHOST_USER.SET_MEM_TABLE,
      table([[0n, 0x10000n, 0x1000n], [0x8000n, 0x10000n, 0x100000n]]),
      [r.fe.memFd, r.fe.memFd],
      ACK,
    );
    assert.ok(refused(r.fe), "overlapping regions");
    assert.equal(r.nic.session!.memory!.regions, 1, "the valid table stays");
  } finally {
    await r.close();
  }
  // A TX buffer outside the shared memory, and one straddling its end: the TX ring is quarantined.
  for (const addr of [GUEST_BASE - 4096, GUEST_BASE + (1 << 20) - 50, 2 ** 60]) {
    const q = rig();
    try {
      q.g.tx.desc(0, addr, 100, 0, 0);
      q.g.tx.publish(0);
      assert.deepEqual(hostReceive(q.nic), []);
      assertQuarantined(q, 1, /outside the shared memory/);
    } finally {
      await q.close();
    }
  }
});

Deno.test("a TX buffer outside the shared memory, over and over: no host buffer is lost to it", async () => {
  // Each quarantine takes a host buffer for the frame before the copy fails; it must go back, or a guest that
  // breaks and restarts its ring a pool's worth of times (256) leaves the port unable to receive.
  const r = rig();
  try {
    for (let round = 0; round < 600; round++) {
      const h = round % Q;
      if (round % 2) { // a header inside, the frame outside: the chain path (one copy per descriptor)
        r.g.tx.desc(h, HostileGuest.buffer(Q), 12, DESC_F_NEXT, (h + 1) % Q);
        r.g.tx.desc((h + 1) % Q, GUEST_BASE - 4096, 100, 0, 0);
      } else r.g.tx.desc(h, GUEST_BASE - 4096, 100, 0, 0); // one descriptor (the run path)
      r.g.tx.publish(h);
      assert.deepEqual(hostReceive(r.nic), []);
      assert.match(String(r.nic.session!.rings[1].broken), /outside the shared memory/, `round ${round}`);
      r.fe.startRing(1, Q, LAYOUT.tx, round + 1); // the guest restarts past the bad chain
    }
    r.g.tx.desc(0, HostileGuest.buffer(Q), 12 + FRAME.length, 0, 0);
    r.g.tx.bytes(HostileGuest.buffer(Q), 12).fill(0);
    r.g.tx.bytes(HostileGuest.buffer(Q) + 12, FRAME.length).set(FRAME);
    r.g.tx.publish(0);
    assert.deepEqual(hostReceive(r.nic), [FRAME], "a good frame after 600 quarantines");
  } finally {
    await r.close();
  }
});

Deno.test("CVE class: zero-length descriptors — dropped and counted, the ring goes on", async () => {
  const r = rig();
  try {
    r.g.tx.desc(0, HostileGuest.buffer(Q), 0, 0, 0);
    r.g.tx.publish(0);
    r.g.tx.free.splice(r.g.tx.free.indexOf(0), 1);
    assert.deepEqual(hostReceive(r.nic), []);
    assert.equal(r.nic.stats()[0].rxDropped, 1);
    r.g.reclaimTx = () => 0; // descriptor 0 was hand-made; the next post uses the others
    r.g.postTx(FRAME);
    assert.deepEqual(hostReceive(r.nic), [FRAME]);
    // An empty RX buffer (no MRG_RXBUF): no frame fits it. Like vhost-net, the device gives it back used with
    // length 0 and drops that frame (counted); the next frame takes the next buffer.
    r.g.rx.desc(5, HostileGuest.buffer(5), 0, DESC_F_WRITE, 0);
    r.g.rx.publish(5);
    r.g.rx.free.splice(r.g.rx.free.indexOf(5), 1);
    r.g.postRx();
    assert.equal(hostSend(r.nic, FRAME), 1);
    assert.deepEqual(r.g.rx.used(), [[5, 0]]);
    assert.equal(r.nic.stats()[0].txErrors, 1);
    assert.equal(hostSend(r.nic, FRAME), 1);
    assert.equal(r.g.rx.used()[0][1], 12 + FRAME.length);
  } finally {
    await r.close();
  }
});

Deno.test("with MRG_RXBUF a frame too big for one RX buffer spans several, num_buffers saying how many", async () => {
  const r = rig(NET_F.MRG_RXBUF);
  try {
    // Two whole buffers, two of 64 bytes, one whole: the 112 bytes of header and frame fit one whole buffer, or
    // two of the small ones.
    for (const len of [2048, 2048, 64, 64, 2048]) r.g.postRx(len);
    const b: PacketBuffer[] = [];
    assert.equal(r.nic.allocTx(b, 4), 4);
    for (let i = 0; i < 4; i++) b[i].data.set(FRAME), b[i].length = FRAME.length;
    assert.equal(r.nic.sendBatch(b, 4), 4);
    const used = r.g.rx.used();
    assert.deepEqual(used.map(([, len]) => len), [112, 112, 64, 48, 112]);
    // num_buffers (virtio 1.2 §5.1.6.4) in the header at the front of each frame's first buffer.
    const numBuffers = (k: number) =>
      new DataView(r.g.rx.bytes(r.g.buffer(used[k][0]), 12).slice().buffer).getUint16(10, true);
    assert.deepEqual([0, 1, 2, 4].map(numBuffers), [1, 1, 2, 1]);
    const spanned = new Uint8Array(112);
    spanned.set(r.g.rx.bytes(r.g.buffer(used[2][0]), 64));
    spanned.set(r.g.rx.bytes(r.g.buffer(used[3][0]), 48), 64);
    assert.deepEqual(spanned.subarray(12), FRAME);
    for (const k of [0, 1, 4]) assert.deepEqual(r.g.rx.bytes(r.g.buffer(used[k][0]) + 12, 100), FRAME);
    assert.equal(r.nic.stats()[0].txPackets, 4);
  } finally {
    await r.close();
  }
});

Deno.test("CVE class: chain loops and length — a loop or a chain longer than the ring is quarantined", async () => {
  for (
    const make of [
      (g: HostileGuest) => g.tx.desc(0, HostileGuest.buffer(Q), 64, DESC_F_NEXT, 0),
      (g: HostileGuest) => {
        for (let i = 0; i < Q; i++) g.tx.desc(i, HostileGuest.buffer(Q), 64, DESC_F_NEXT, (i + 1) % Q);
      },
      (g: HostileGuest) => g.tx.desc(0, HostileGuest.buffer(Q), 64, DESC_F_NEXT, 4000),
    ]
  ) {
    const r = rig();
    try {
      make(r.g);
      r.g.tx.publish(0);
      assert.deepEqual(hostReceive(r.nic), []);
      assertQuarantined(r, 1, /loops|out of range/);
    } finally {
      await r.close();
    }
  }
});

Deno.test("CVE class: indirect tables — never offered, quarantined when used", async () => {
  const r = rig();
  try {
    r.g.tx.desc(0, HostileGuest.buffer(Q), 16, DESC_F_INDIRECT, 0);
    r.g.tx.publish(0);
    assert.deepEqual(hostReceive(r.nic), []);
    assertQuarantined(r, 1, /indirect/);
  } finally {
    await r.close();
  }
});

Deno.test("CVE class: descriptor direction — writable TX is dropped, readable RX is quarantined", async () => {
  const r = rig();
  try {
    r.g.tx.desc(0, HostileGuest.buffer(Q), 112, DESC_F_WRITE, 0);
    r.g.tx.publish(0);
    assert.deepEqual(hostReceive(r.nic), []);
    assert.equal(r.nic.stats()[0].rxDropped, 1);
    // A readable buffer after a writable one breaks §2.7.4.2: quarantined.
    r.g.tx.desc(1, HostileGuest.buffer(Q + 1), 12, DESC_F_WRITE | DESC_F_NEXT, 2);
    r.g.tx.desc(2, HostileGuest.buffer(Q + 2), 100, 0, 0);
    r.g.tx.publish(1);
    hostReceive(r.nic);
    assert.match(String(r.nic.session!.rings[1].broken), /readable descriptor .* after a writable/);
  } finally {
    await r.close();
  }
  const q = rig();
  try {
    q.g.rx.desc(0, HostileGuest.buffer(0), 2048, 0, 0);
    q.g.rx.publish(0);
    assert.equal(hostSend(q.nic, FRAME), 0);
    assertQuarantined(q, 0, /device-readable/);
  } finally {
    await q.close();
  }
});

Deno.test("CVE class: a virtio-net header spanning descriptors is read whole, its checksum request honoured", async () => {
  const r = rig(NET_F.CSUM);
  try {
    const at = HostileGuest.buffer(Q);
    const b = r.g.tx.bytes(at, 12 + FRAME.length);
    b.set([1, 0, 0, 0, 0, 0, 20, 0, 6, 0, 0, 0]); // NEEDS_CSUM, csum_start 20, csum_offset 6
    b.set(FRAME, 12);
    // The header in three pieces (5, 4, 3 bytes), the frame's first bytes sharing the last descriptor.
    r.g.tx.desc(0, at, 5, DESC_F_NEXT, 1);
    r.g.tx.desc(1, at + 5, 4, DESC_F_NEXT, 2);
    r.g.tx.desc(2, at + 9, 3 + FRAME.length, 0, 0);
    r.g.tx.publish(0);
    const bufs: PacketBuffer[] = [];
    assert.equal(r.nic.receiveBatch(bufs, 1), 1);
    assert.deepEqual(bufs[0].data.slice(0, bufs[0].length), FRAME);
    assert.deepEqual([bufs[0].csumStart, bufs[0].csumOffset], [20, 6]);
    r.nic.release(bufs, 1);
  } finally {
    await r.close();
  }
});

Deno.test("CVE class: csum_start and csum_offset outside the frame, or GSO never offered — dropped, counted", async () => {
  const r = rig(NET_F.CSUM);
  try {
    for (
      const hdr of [[1, 0, 0, 0, 0, 0, 99, 0, 2, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], [
        0,
        1,
      ]]
    ) {
      const h = r.g.tx.free.pop()!, at = HostileGuest.buffer(Q + h);
      r.g.tx.bytes(at, 12).fill(0).set(hdr);
      r.g.tx.bytes(at + 12, FRAME.length).set(FRAME);
      r.g.tx.desc(h, at, 12 + FRAME.length, 0, 0);
      r.g.tx.publish(h);
    }
    assert.deepEqual(hostReceive(r.nic), []);
    assert.equal(r.nic.stats()[0].rxDropped, 3);
    assert.equal(r.nic.session!.rings[1].broken, null, "a bad header costs the frame, not the ring");
  } finally {
    await r.close();
  }
});

Deno.test("CVE class: avail index jumps and bad heads — quarantined before anything is read", async () => {
  const r = rig();
  try {
    r.g.tx.publish(0, 5000);
    assert.deepEqual(hostReceive(r.nic), []);
    assertQuarantined(r, 1, /ahead of a ring/);
  } finally {
    await r.close();
  }
  const q = rig();
  try {
    q.g.rx.publish(999);
    assert.equal(hostSend(q.nic, FRAME), 0);
    assertQuarantined(q, 0, /head 999 out of range/);
  } finally {
    await q.close();
  }
});

Deno.test("CVE class: double fetch — descriptors rewritten while the backend copies do not change what it checked", async () => {
  const r = rig();
  try {
    const at = HostileGuest.buffer(Q);
    r.g.tx.bytes(at, 12).fill(0);
    r.g.tx.bytes(at + 12, FRAME.length).set(FRAME);
    r.g.tx.desc(0, at, 12 + FRAME.length, 0, 0);
    r.g.tx.publish(0);
    // The guest rewrites the descriptor (an address outside the shared memory) every time the backend touches its
    // data, as a racing vCPU could between the check and the use.
    const mem = r.nic.session!.memory!;
    const copyOut = mem.copyOut.bind(mem);
    Object.defineProperty(mem, "copyOut", {
      value: (a: number, n: number, dst: Uint8Array, at: number) => {
        r.g.tx.desc(0, 2 ** 40, 112, 0, 0);
        copyOut(a, n, dst, at);
      },
    });
    const got = hostReceive(r.nic);
    assert.deepEqual(got, [FRAME], "the frame is what the checked descriptor held");
    // The rewritten descriptor is checked afresh when next made available: outside, quarantined.
    r.g.tx.publish(0);
    hostReceive(r.nic);
    assert.match(String(r.nic.session!.rings[1].broken), /outside the shared memory/);
  } finally {
    await r.close();
  }
});

Deno.test("a ring stopped with GET_VRING_BASE and restarted there resumes; an enable flap drops TX, holds RX", async () => {
  const r = rig();
  try {
    r.g.postTx(FRAME);
    assert.equal(hostReceive(r.nic).length, 1);
    assert.equal(r.fe.stopRing(1), 1);
    r.g.postTx(FRAME);
    assert.deepEqual(hostReceive(r.nic), [], "stopped: nothing taken");
    r.fe.startRing(1, Q, LAYOUT.tx, 1);
    assert.deepEqual(hostReceive(r.nic), [FRAME]);
    // Started but disabled (vhost-user.rst "Ring states"): TX is taken and dropped, no RX is supplied.
    r.fe.request(VHOST_USER.SET_VRING_ENABLE, VhostUserFrontend.state(1, 0));
    r.fe.request(VHOST_USER.SET_VRING_ENABLE, VhostUserFrontend.state(0, 0));
    r.g.reclaimTx();
    r.g.postTx(FRAME);
    r.g.postRx();
    assert.deepEqual(hostReceive(r.nic), []);
    assert.equal(r.g.reclaimTx(), 1, "the disabled ring still gave the chain back");
    assert.equal(hostSend(r.nic, FRAME), 0);
    assert.deepEqual(r.g.receive(), []);
  } finally {
    await r.close();
  }
});

Deno.test("multi-queue: two pairs carry frames apart, and a quarantine on pair 0 leaves pair 1 running", async () => {
  let nic: VhostUserNet | null = null;
  const fe = new VhostUserFrontend(() => nic?.pumpControl(), 4, 2 << 20);
  nic = new VhostUserNet(new OneShotAcceptor(fe.backendEnd), LINUX_FD_OPS, {
    mac: new Uint8Array([2, 0, 0, 0, 0, 2]),
    pairs: 2,
    irq: false,
  });
  const n = nic;
  try {
    n.pumpControl();
    fe.connect();
    assert.equal(fe.queueNum, 2, "GET_QUEUE_NUM answers the pairs");
    fe.request(
      VHOST_USER.SET_FEATURES,
      VhostUserFrontend.u64(F.VERSION_1 | NET_F.MQ | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))),
    );
    assert.ok(fe.setMemTable());
    const g0 = new HostileGuest(fe, 12, 0), g1 = new HostileGuest(fe, 12, 1);
    g0.start();
    g1.start();
    const f1 = FRAME.map((b) => b ^ 0x55);
    g1.postTx(f1);
    g0.postTx(FRAME);
    const got = (q: number) => {
      const b: PacketBuffer[] = [];
      const k = n.receiveBatch(b, 8, q);
      const out = b.slice(0, k).map((x) => x.data.slice(0, x.length));
      n.release(b, k, q);
      return out;
    };
    assert.deepEqual(got(1), [f1], "pair 1's frame on queue 1");
    assert.deepEqual(got(0), [FRAME], "pair 0's frame on queue 0");
    // Pair 0's TX ring breaks; pair 1 goes on both ways.
    g0.tx.publish(0, 5000);
    assert.deepEqual(got(0), []);
    assert.match(String(n.session!.rings[1].broken), /ahead/);
    g1.postTx(f1);
    assert.deepEqual(got(1), [f1]);
    g1.postRx();
    const b: PacketBuffer[] = [];
    n.allocTx(b, 1, 1);
    b[0].data.set(FRAME);
    b[0].length = FRAME.length;
    assert.equal(n.sendBatch(b, 1, 1), 1);
    assert.deepEqual(g1.receive(), [FRAME]);
    assert.equal(n.session!.rings[3].broken, null);
  } finally {
    await n.close();
    fe.close();
  }
});

Deno.test("the host's own misuse (a released, repeated or foreign buffer) is its error: the guest's ring is not quarantined", async () => {
  const r = rig();
  try {
    r.g.postRx();
    const b: PacketBuffer[] = [];
    assert.equal(r.nic.allocTx(b, 1), 1);
    b[0].data.set(FRAME);
    b[0].length = FRAME.length;
    b[0].length = 13;
    assert.throws(
      () => r.nic.sendBatch(b, 1),
      /outside 14/,
      "a runt is refused before the guest's ring is read",
    );
    b[0].length = FRAME.length;
    r.nic.release(b, 1);
    assert.throws(() => r.nic.sendBatch(b, 1), /not held by the application/);
    const rx: PacketBuffer[] = [];
    r.g.tx.bytes(HostileGuest.buffer(Q), 12).fill(0);
    r.g.tx.bytes(HostileGuest.buffer(Q) + 12, FRAME.length).set(FRAME);
    r.g.tx.desc(0, HostileGuest.buffer(Q), 12 + FRAME.length, 0, 0);
    r.g.tx.publish(0);
    assert.equal(r.nic.receiveBatch(rx, 1), 1);
    rx[0].length = FRAME.length;
    assert.throws(() => r.nic.sendBatch(rx, 1), /belongs to pool/, "a received buffer is not a send buffer");
    r.nic.release(rx, 1);
    // One buffer twice in a batch: refused whole before a byte is written, the buffer still the host's.
    r.g.postRx();
    assert.equal(r.nic.allocTx(b, 1), 1);
    b[0].data.set(FRAME);
    b[0].length = FRAME.length;
    b[1] = b[0];
    assert.throws(() => r.nic.sendBatch(b, 2), /not held by the application/);
    assert.deepEqual(r.g.rx.used(), [], "nothing went to the guest");
    assert.equal(r.nic.sendBatch(b, 1), 1, "the buffer is still the host's to send");
    assert.deepEqual(r.g.receive(), [FRAME]);
    assert.equal(r.nic.session!.rings[0].broken, null, "RX ring untouched");
    assert.equal(hostSend(r.nic, FRAME), 1, "and it still delivers");
    assert.deepEqual(r.g.receive(), [FRAME]);
  } finally {
    await r.close();
  }
});
