import assert from "assert";
import { Netfront } from "../../drivers/xen/netfront.ts";
import { XenStore, XS } from "../../drivers/xen/xenstore.ts";
import { RingError } from "../../drivers/xen/ring.ts";
import { checkFrame, FrameCheck, writeFrame } from "../../apps/frames.ts";
import { macToString, type PacketBuffer } from "../../drivers/net/nic.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { ModelEvtchns, ModelGrants, NetbackModel, type NetbackOptions } from "../models/xen.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { forward } from "../../apps/traffic.ts";

const DST = new Uint8Array([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);

function lab(o: NetbackOptions & { grantLimit?: number; mtu?: number } = {}) {
  const server = new XenStoreServer();
  const grants = new ModelGrants(o.grantLimit ?? 1024), evtchns = new ModelEvtchns();
  const back = new NetbackModel(server, grants, evtchns, o);
  const xs = new XenStore(server.connect(back.frontDomid).transport);
  const open = (queues = 1) => Netfront.open(xs, grants, evtchns, { timeoutMs: 2000, queues, mtu: o.mtu });
  return { server, grants, evtchns, back, xs, open };
}

/** Every state the frontend writes, in order. */
function frontStates(server: XenStoreServer, back: NetbackModel): string[] {
  const states: string[] = [];
  const hook = server.onWrite!;
  server.onWrite = (p, v) => {
    if (p === `${back.front}/state`) states.push(v);
    hook(p, v);
  };
  return states;
}

const size = (k: number) => 60 + (k * 149) % 1455;

function send(nf: Netfront, count: number, first = 0, q = 0, sizeOf = size): number {
  const bufs: PacketBuffer[] = [];
  let sent = 0;
  while (sent < count) {
    const got = nf.allocTx(bufs, Math.min(32, count - sent), q);
    assert.ok(got > 0, "TX buffers available");
    for (let i = 0; i < got; i++) {
      const k = first + sent + i;
      writeFrame(bufs[i].data, sizeOf(k), k, DST, nf.mac);
      bufs[i].length = sizeOf(k);
    }
    const n = nf.sendBatch(bufs, got, q);
    assert.ok(n > 0, "the TX ring takes frames");
    if (n < got) nf.release(bufs.slice(n, got), got - n, q);
    sent += n;
  }
  return sent;
}

function receiveAll(nf: Netfront, q = 0): PacketBuffer[] {
  const out: PacketBuffer[] = [], all: PacketBuffer[] = [];
  let n;
  while ((n = nf.receiveBatch(out, 64, q)) > 0) {
    for (let i = 0; i < n; i++) all.push(out[i]);
    if (all.length > 100000) break;
  }
  return all;
}

Deno.test("netfront: handshake writes every key in one transaction, Initialised then Connected", async () => {
  const { server, back, xs, open, grants } = lab();
  const states = frontStates(server, back);
  const nf = await open();
  try {
    assert.equal(back.state, 4);
    assert.deepEqual(states, ["1", "3", "4"]);
    const f = (k: string) => server.get(`${back.front}/${k}`);
    assert.ok(Number(f("tx-ring-ref")) > 0 && Number(f("rx-ring-ref")) > 0);
    assert.ok(f("event-channel-tx") && f("event-channel-rx"), "split event channels when offered");
    assert.equal(f("event-channel"), undefined);
    assert.deepEqual([f("request-rx-copy"), f("feature-rx-notify"), f("feature-sg")], ["1", "1", "1"]);
    const txWrites = server.log.filter((l) => l.type === XS.WRITE && l.tx !== 0);
    assert.ok(
      txWrites.some((l) => l.path.endsWith("/tx-ring-ref")) &&
        txWrites.some((l) => l.path.endsWith("/state")),
    );
    assert.equal(server.log.filter((l) => l.type === XS.TRANSACTION_START).length, 1);
    assert.equal(macToString(nf.mac), "00:16:3e:12:34:56");
    assert.equal(back.rxPosted(), 256, "RX ring filled");
    assert.equal(
      grants.unmapNotify.get(Number(f("tx-ring-ref"))),
      Number(f("event-channel-tx")),
      "the ring pages signal the TX port if this process dies with them mapped",
    );
  } finally {
    await nf.close();
  }
  assert.equal(server.get(`${back.front}/state`), "6");
  await xs.close();
});

Deno.test("netfront: feature subsets — no split channels, multi-queue, no rx-copy, bad keys, grant limit", async () => {
  {
    const { server, back, xs, open } = lab({ split: false });
    const nf = await open();
    assert.ok(server.get(`${back.front}/event-channel`));
    assert.equal(send(nf, 10), 10);
    assert.equal(back.sent[0].length, 10);
    await nf.close();
    await xs.close();
  }
  {
    const { server, back, xs, open } = lab({ maxQueues: 4 });
    const nf = await open(2);
    assert.equal(nf.queues, 2);
    assert.equal(server.get(`${back.front}/multi-queue-num-queues`), "2");
    assert.ok(server.get(`${back.front}/queue-1/tx-ring-ref`));
    assert.equal(send(nf, 5, 0, 1), 5);
    assert.equal(back.sent[1].length, 5);
    await nf.close();
    // Reopened with one queue: the first connection's multi-queue-num-queues is gone, so netback reads the
    // top-level rings this one wrote instead of queue-N's, which are no longer granted.
    const one = await open(1);
    assert.equal(server.get(`${back.front}/multi-queue-num-queues`), undefined);
    assert.equal(send(one, 3), 3);
    await one.close();
    await xs.close();
  }
  {
    const { xs, open } = lab({ rxCopy: false });
    await assert.rejects(open(), /feature-rx-copy/);
    await xs.close();
  }
  {
    const { xs, open, grants } = lab({ sg: false, mtu: 9000 });
    await assert.rejects(open(), /MTU 9000 needs multi-slot frames .* feature-sg/);
    assert.equal(grants.live, 0);
    await xs.close();
  }
  {
    const { server, back, xs, open } = lab({ sg: false });
    const nf = await open();
    assert.equal(server.get(`${back.front}/feature-sg`), "0", "MTU 1500 works without feature-sg");
    assert.equal(send(nf, 3), 3);
    await nf.close();
    await xs.close();
  }
  {
    const { xs } = lab();
    await assert.rejects(
      Netfront.open(xs, new ModelGrants(), new ModelEvtchns(), { mtu: 70000 }),
      /MTU 70000/,
    );
    await xs.close();
  }
  {
    const { server, back, xs, open } = lab();
    server.set(`${back.front}/backend`, "/etc/passwd");
    await assert.rejects(open(), /not a vif backend path/);
    server.set(`${back.front}/backend`, back.back);
    server.set(`${back.front}/mac`, "zz");
    await assert.rejects(open(), /not a MAC address/);
    await xs.close();
  }
  {
    const { xs, open, grants } = lab({ grantLimit: 300, maxQueues: 2 });
    await assert.rejects(open(1), /need 386 grants, only 300 left/);
    assert.equal(grants.live, 0);
    await xs.close();
  }
});

Deno.test("netfront: 20,000 frames each way byte-exact, rings wrapping many times", async () => {
  const { back, xs, open, grants } = lab();
  const nf = await open();
  try {
    const N = 20000;
    let sent = 0, recvd = 0;
    const seq = new Uint32Array(1), frame = new Uint8Array(1514);
    while (sent < N) {
      sent += send(nf, Math.min(100, N - sent), sent);
      for (let k = recvd; k < sent; k++) {
        writeFrame(frame, size(k), k, nf.mac, DST);
        assert.ok(back.deliver(frame.subarray(0, size(k)), 0, { flags: k % 2 ? 1 : 0 }));
      }
      const got = receiveAll(nf);
      for (const b of got) {
        assert.equal(checkFrame(b.data, b.length, seq), FrameCheck.Ok);
        assert.equal(seq[0], recvd);
        assert.equal(b.flags, recvd % 2 ? 2 : 0, "data_validated → RX_CSUM_VALID");
        recvd++;
      }
      nf.release(got, got.length);
    }
    nf.reclaimTx();
    assert.equal(back.sent[0].length, N);
    back.sent[0].forEach((f, k) => {
      if (k % 997 === 0) {
        assert.equal(checkFrame(f, f.length, seq), FrameCheck.Ok);
        assert.equal(seq[0], k);
      }
    });
    assert.equal(recvd, N);
    const st = nf.stats()[0];
    assert.deepEqual([st.txPackets, st.rxPackets, st.txErrors, st.rxDropped], [N, N, 0, 0]);
    assert.ok(st.notifications < N / 4, `notifications ${st.notifications}`);
  } finally {
    await nf.close();
  }
  assert.equal(grants.live, 0, "every grant ended");
  await xs.close();
});

Deno.test("netfront: RX offsets, multi-slot frames (gathered), extra-info slots, partial frames and error statuses", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    const seq = new Uint32Array(1);
    const frame = (k: number, len: number) => {
      const f = new Uint8Array(len);
      writeFrame(f, len, k, nf.mac, DST);
      return f;
    };
    back.deliver(frame(1, 100), 0, { offset: 66 });
    back.deliver(frame(2, 1400), 0, { slotBytes: 500 }); // three slots
    back.deliver(frame(3, 1000), 0, { slotBytes: 600, extra: true, flags: 1 }); // data, extra info, data
    back.deliver(frame(4, 3000), 0, { slotBytes: 1000 }); // over the MTU: dropped
    back.deliverError(0, -1); // NETIF_RSP_ERROR
    const got = receiveAll(nf);
    assert.deepEqual(got.map((b) => b.length), [100, 1400, 1000]);
    got.forEach((b, i) => {
      assert.equal(checkFrame(b.data, b.length, seq), FrameCheck.Ok);
      assert.equal(seq[0], i + 1);
    });
    assert.equal(got[2].flags, 2, "flags come from the first slot");
    assert.equal(nf.stats()[0].rxDropped, 2);
    nf.release(got, got.length);
    // A frame whose slots are published one at a time is delivered only when complete.
    assert.ok(back.deliver(frame(5, 1200), 0, { slotBytes: 700, publish: false }));
    back.jumpRx(0, 1);
    assert.equal(receiveAll(nf).length, 0, "first slot alone is not a frame");
    back.jumpRx(0, 1);
    const last = receiveAll(nf);
    assert.equal(last.length, 1);
    assert.equal(checkFrame(last[0].data, last[0].length, seq), FrameCheck.Ok);
    assert.equal(seq[0], 5);
    nf.release(last, 1);
    // Odd slot sizes and a first-slot offset: gathered byte by byte where words do not line up.
    back.deliver(frame(6, 1001), 0, { slotBytes: 333, offset: 3 });
    const odd = receiveAll(nf);
    assert.equal(odd.length, 1);
    assert.equal(checkFrame(odd[0].data, odd[0].length, seq), FrameCheck.Ok);
    assert.equal(seq[0], 6);
    nf.release(odd, 1);
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: jumbo MTU 9000 — 3,000 multi-slot frames each way byte-exact, TX slots and ids recycled", async () => {
  const { back, xs, open, grants, server } = lab({ mtu: 9000 });
  const nf = await open();
  try {
    assert.equal(nf.maxFrame, 9018); // the one frame-size rule: MTU + Ethernet header + one VLAN tag
    assert.equal(server.get(`${back.front}/feature-sg`), "1");
    const big = (k: number) => 60 + (k * 1693) % 8955;
    const N = 3000, seq = new Uint32Array(1);
    let sent = 0, recvd = 0;
    while (sent < N) {
      sent += send(nf, Math.min(40, N - sent), sent, 0, big);
      for (let k = recvd; k < sent; k++) {
        const f = new Uint8Array(big(k));
        writeFrame(f, f.length, k, nf.mac, DST);
        assert.ok(back.deliver(f), `posted RX pages for frame ${k}`);
      }
      const got = receiveAll(nf);
      for (const b of got) {
        assert.equal(checkFrame(b.data, b.length, seq), FrameCheck.Ok);
        assert.equal(seq[0], recvd++);
      }
      nf.release(got, got.length);
    }
    nf.reclaimTx();
    assert.equal(recvd, N);
    assert.equal(back.sent[0].length, N);
    back.sent[0].forEach((f, k) => {
      assert.equal(f.length, big(k));
      assert.equal(checkFrame(f, f.length, seq), FrameCheck.Ok, `frame ${k} (${f.length} bytes)`);
      assert.equal(seq[0], k);
    });
    const st = nf.stats()[0];
    assert.deepEqual([st.txPackets, st.rxPackets, st.txErrors, st.rxDropped], [N, N, 0, 0]);
    // Completions in reverse order: a frame is done only when all its slots are.
    back.autoProcess = false;
    assert.equal(send(nf, 6, N, 0, () => 9014), 6);
    assert.equal(back.processTx(0, true), 18, "three slots per 9014-byte frame");
    assert.equal(nf.reclaimTx(), 6);
    assert.equal(nf.stats()[0].txPackets, N + 6);
    assert.equal(back.sent[0].length, N + 6);
  } finally {
    await nf.close();
  }
  assert.equal(grants.live, 0);
  await xs.close();
});

Deno.test("netfront: the largest MTU (65517) — 16 slots per frame each way, 514 grants", async () => {
  const { back, xs, open, grants } = lab({ mtu: 65517 });
  const nf = await open();
  try {
    assert.equal(grants.limit - grants.remaining, 514);
    assert.equal(send(nf, 3, 0, 0, () => 65531), 3);
    assert.deepEqual(back.sent[0].map((f) => f.length), [65531, 65531, 65531]);
    const seq = new Uint32Array(1);
    assert.equal(checkFrame(back.sent[0][2], 65531, seq), FrameCheck.Ok);
    assert.equal(seq[0], 2);
    const f = new Uint8Array(65531);
    writeFrame(f, f.length, 9, nf.mac, DST);
    assert.ok(back.deliver(f));
    const got = receiveAll(nf);
    assert.equal(got.length, 1);
    assert.equal(checkFrame(got[0].data, got[0].length, seq), FrameCheck.Ok);
    nf.release(got, 1);
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: a hostile backend (bad ids, offset+length past the page, rsp_prod jump) breaks the ring cleanly", async () => {
  const cases: [string, (b: NetbackModel, nf: Netfront) => void, "rx" | "tx", RegExp][] = [
    ["RX id not the slot's", (b) => b.rxResponse(0, 999, 0, 0, 60), "rx", /RX slot 0 with id 999/],
    [
      "RX frame of endless slots",
      (b) => {
        for (let i = 0; i < 30; i++) b.rxResponse(0, i, 0, 4, 100);
      },
      "rx",
      /more than 24 slots/,
    ],
    ["RX past the page", (b) => b.rxResponse(0, 0, 4000, 0, 200), "rx", /200 bytes at offset 4000/],
    ["RX rsp_prod jump", (b) => b.jumpRx(0, 1000), "rx", /rsp_prod/],
    ["TX rsp_prod with nothing outstanding", (b) => b.txResponse(0, 7, 0), "tx", /rsp_prod/],
    [
      "TX id not in flight",
      (b, nf) => {
        b.autoProcess = false;
        send(nf, 1); // one request outstanding (buffer 0)
        b.txResponse(0, 7, 0);
      },
      "tx",
      /TX id 7/,
    ],
  ];
  for (const [name, act, which, re] of cases) {
    const { back, xs, open, grants } = lab();
    const nf = await open();
    act(back, nf);
    const run = () => (which === "rx" ? nf.receiveBatch([], 64) : nf.reclaimTx());
    assert.throws(run, RingError, name);
    assert.throws(run, re, `${name}: stays broken with a clear error`);
    assert.throws(() => nf.checkHealth(), RingError);
    await nf.close();
    assert.equal(grants.live, 0, `${name}: nothing leaked`);
    await xs.close();
  }
});

Deno.test("netfront: interrupt mode wakes on the RX event channel", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    const f = new Uint8Array(60);
    writeFrame(f, 60, 1, nf.mac, DST);
    const woke = nf.waitRx();
    setTimeout(() => back.deliver(f), 5);
    await woke;
    const got = receiveAll(nf);
    assert.equal(got.length, 1);
    nf.release(got, 1);
    assert.equal(nf.stats()[0].interrupts, 1);
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: reconnects after the backend restarts", async () => {
  const { server, back, xs, open } = lab();
  const nf = await open();
  try {
    assert.equal(send(nf, 3), 3);
    await back.restart();
    const deadline = Date.now() + 2000;
    while (nf.reconnects === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.equal(nf.reconnects, 1);
    assert.equal(back.state, 4);
    assert.equal(server.get(`${back.front}/state`), "4");
    assert.equal(send(nf, 4, 100), 4);
    assert.equal(back.sent[0].length, 4, "traffic flows on the new rings");
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: a backend left Connected by a frontend that died is closed first, then reconnected", async () => {
  const { server, back, grants, evtchns } = lab();
  const states = frontStates(server, back);
  // The first process connects, then dies: its xenstore connection goes, nothing is closed.
  const xs1 = new XenStore(server.connect(back.frontDomid).transport);
  await Netfront.open(xs1, grants, evtchns, { timeoutMs: 2000 });
  await xs1.close();
  assert.equal(back.state, 4);
  states.length = 0;
  const xs2 = new XenStore(server.connect(back.frontDomid).transport);
  const nf = await Netfront.open(xs2, grants, evtchns, { timeoutMs: 2000 });
  try {
    assert.deepEqual(states, ["5", "6", "1", "3", "4"]);
    assert.equal(back.state, 4);
    assert.equal(send(nf, 5), 5);
    assert.equal(back.sent[0].length, 5, "traffic flows on the new rings");
  } finally {
    await nf.close();
    await xs2.close();
  }
});

Deno.test("netfront: the link is up while connected, down once closed", async () => {
  const { xs, open } = lab();
  const nf = await open();
  assert.equal(nf.linkUp(), true);
  await nf.close();
  assert.equal(nf.linkUp(), false);
  await xs.close();
});

Deno.test("forward: from netfront's page-sized RX buffers into virtio-net's smaller TX buffers, byte-exact", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  const model = new VirtioNetModel();
  const to = VirtioNet.openPci(model.pci());
  try {
    const frames = [60, 129, 1000, 1514].map((len, i) => {
      const f = new Uint8Array(len);
      writeFrame(f, len, i, nf.mac, new Uint8Array([2, 0, 0, 0, 0, 0xfe]));
      return f;
    });
    for (const f of frames) assert.ok(back.deliver(f));
    const r = await forward(nf, to, { batch: 8, until: Infinity, frames: frames.length });
    assert.deepEqual(r, { forwarded: 4, dropped: 0 });
    assert.deepEqual(model.sent[0], frames);
  } finally {
    await to.close();
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: a frame of exactly an Ethernet header is delivered; ring state names its queue", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    const f = new Uint8Array(14);
    f.set(nf.mac, 0);
    assert.ok(back.deliver(f));
    const out: PacketBuffer[] = [];
    assert.equal(nf.receiveBatch(out, 4), 1);
    assert.equal(out[0].length, 14);
    nf.release(out, 1);
    assert.match(nf.ringState(0), /^tx: req_prod \d+ .*; rx: req_prod \d+/);
    assert.equal(nf.ringState(3), "no queue");
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: one queue writes its keys the single-queue way (no multi-queue-num-queues)", async () => {
  const { server, back, xs, open } = lab();
  const nf = await open(1);
  try {
    assert.equal(server.get(`${back.front}/multi-queue-num-queues`), undefined);
    assert.ok(
      server.get(`${back.front}/tx-ring-ref`) !== undefined,
      "the ring refs sit in the frontend's own directory",
    );
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: a backend that never connects times out with the state it is stuck in", async () => {
  const server = new XenStoreServer();
  const grants = new ModelGrants(), evtchns = new ModelEvtchns();
  const back = new NetbackModel(server, grants, evtchns);
  server.onWrite = () => {}; // the backend ignores the frontend: stays in InitWait
  const xs = new XenStore(server.connect(back.frontDomid).transport);
  await assert.rejects(
    () => Netfront.open(xs, grants, evtchns, { timeoutMs: 200 }),
    /did not reach Connected within 200 ms \(state 2\)/,
  );
  assert.equal(grants.live, 0);
  await xs.close();
});

Deno.test("netfront: a TX batch naming one buffer twice is refused whole, nothing left on the ring", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    const bufs: PacketBuffer[] = [];
    assert.equal(nf.allocTx(bufs, 2), 2);
    for (const b of bufs) {
      writeFrame(b.data, 60, b.index, DST, nf.mac);
      b.length = 60;
    }
    assert.throws(() => nf.sendBatch([bufs[0], bufs[0]], 2), /not held by the application/);
    assert.equal(bufs[0].pool.owner(bufs[0]), "app", "the buffer is still the application's");
    assert.equal(nf.sendBatch(bufs, 2), 2, "the ring takes the next batch");
    const deadline = Date.now() + 2000;
    while (back.sent[0].length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.equal(back.sent[0].length, 2, "two frames, not three: the refused one never went out");
  } finally {
    await nf.close();
    await xs.close();
  }
});
