/**
 * Netfront and the xenstore client against a backend or a xenstored that misbehaves: each case is a finding of the
 * adversarial review and fails on the driver before its fix.
 */
import assert from "assert";
import { Netfront } from "../../drivers/xen/netfront.ts";
import { XenStore, XS } from "../../drivers/xen/xenstore.ts";
import { RingError } from "../../drivers/xen/ring.ts";
import { checkFrame, FrameCheck, writeFrame } from "../../apps/frames.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { ModelEvtchns, ModelGrants, NetbackModel } from "../models/xen.ts";

const DST = new Uint8Array([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
const seqOut = new Uint32Array(1);

function lab(requestTimeoutMs = 10_000, mtu = 1500) {
  const server = new XenStoreServer();
  const grants = new ModelGrants(1024), evtchns = new ModelEvtchns();
  const back = new NetbackModel(server, grants, evtchns);
  const { transport, conn } = server.connect(back.frontDomid);
  const xs = new XenStore(transport, { requestTimeoutMs });
  const open = () => Netfront.open(xs, grants, evtchns, { timeoutMs: 2000, mtu });
  return { server, grants, evtchns, back, xs, conn, open };
}

function fill(nf: Netfront, bufs: PacketBuffer[], n: number, first = 0): number {
  const got = nf.allocTx(bufs, n);
  for (let i = 0; i < got; i++) {
    writeFrame(bufs[i].data, 60 + i, first + i, DST, nf.mac);
    bufs[i].length = 60 + i;
  }
  return got;
}

async function until(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("netfront: buffers held when the backend closes stay mapped; released after a reconnect, harmlessly", async () => {
  const { back, xs, open, grants } = lab();
  const nf = await open();
  try {
    const f = new Uint8Array(300);
    writeFrame(f, 300, 77, nf.mac, DST);
    back.deliver(f);
    const rx: PacketBuffer[] = [];
    assert.equal(nf.receiveBatch(rx, 8), 1);
    const tx: PacketBuffer[] = [];
    assert.equal(fill(nf, tx, 2), 2);
    const liveBefore = grants.live;
    await back.restart(); // Closing → Closed → InitWait
    await until(() => nf.reconnects === 1, "the reconnect");
    // The old RX and TX pools are still granted (their pages mapped) because the application holds buffers.
    assert.ok(grants.live > liveBefore, `old pools kept: ${grants.live} > ${liveBefore}`);
    assert.equal(checkFrame(rx[0].data, rx[0].length, seqOut), FrameCheck.Ok);
    assert.equal(seqOut[0], 77, "the held frame is intact");
    assert.throws(
      () => nf.sendBatch(tx, 2),
      /retired when its device closed or disconnected/,
      "old buffers stay out",
    );
    nf.release(rx, 1);
    nf.release(tx, 2);
    assert.equal(grants.live, liveBefore, "the last release ended the old pools' grants");
    // The new connection works.
    const fresh: PacketBuffer[] = [];
    assert.equal(nf.sendBatch(fresh, fill(nf, fresh, 3, 10)), 3);
    assert.equal(back.sent[0].length, 3);
  } finally {
    await nf.close();
    await xs.close();
  }
  assert.equal(grants.live, 0);
});

Deno.test("netfront: a broken ring takes no more requests or RX pages", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    back.rxResponse(0, 999, 0, 0, 60);
    assert.throws(() => nf.receiveBatch([], 8), RingError);
    const posted = back.rxPosted(0);
    const tx: PacketBuffer[] = [];
    fill(nf, tx, 4);
    assert.throws(() => nf.sendBatch(tx, 4), /RX slot 0 with id 999/);
    back.autoProcess = false;
    nf.release(tx, 4);
    assert.equal(back.rxPosted(0), posted, "no RX pages posted on a broken ring");
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: rsp_prod published before any request is caught at the next push, not read back", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    back.autoProcess = false;
    back.txResponse(0, 0, 0); // rsp_prod 1 with nothing outstanding
    const tx: PacketBuffer[] = [];
    fill(nf, tx, 8);
    assert.throws(() => nf.sendBatch(tx, 8), /rsp_prod to 1 with 0 requests outstanding/);
    assert.throws(() => nf.reclaimTx(), RingError, "stays broken: our own requests are never completions");
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("xenstore: a daemon that never answers fails requests, open and waitFor in time; shutdown still frees", async () => {
  const { server, xs, conn, open, grants, evtchns } = lab(200);
  const nf = await open();
  const t0 = performance.now();
  conn.mute = true;
  const logged = () => server.log.length;
  await assert.rejects(() => xs.read("device/vif/0/state"), /did not answer request .* within 200 ms/);
  await assert.rejects(
    () => xs.waitFor("device/vif/0/nothing", (v) => v === "x", 300),
    /ETIMEDOUT|timed out|did not answer/,
  );
  const before = logged();
  await nf.close();
  assert.ok(
    logged() - before <= 2,
    `after xenstore fell silent, shutdown sent ${logged() - before} more requests`,
  );
  assert.ok(performance.now() - t0 < 10_000, `bounded: ${(performance.now() - t0).toFixed(0)} ms`);
  assert.equal(grants.live, 0, "every grant ended although xenstore is silent");
  assert.equal(evtchns.ports.size, 0, "every port closed");
  await xs.close();
  // Opening against a silent daemon fails instead of hanging, and leaves nothing behind.
  const l2 = lab(200);
  l2.conn.mute = true;
  await assert.rejects(() => l2.open(), /did not answer/);
  assert.equal(l2.grants.live, 0);
  await l2.xs.close();
});

Deno.test("xenstore: watch events nobody reads are merged and bounded, drops counted", async () => {
  const server = new XenStoreServer();
  const xs = new XenStore(server.connect(0).transport, { maxQueuedEvents: 64 });
  const it = xs.watch("/local/x");
  assert.equal((await it.next()).value, "/local/x", "the registration event");
  for (let i = 0; i < 3000; i++) server.set(`/local/x/k${i % 100}`, String(i)); // 100 paths, 30 times each
  for (let i = 0; i < 1000; i++) server.set(`/local/x/other${i}`, "v");
  await new Promise((r) => setTimeout(r, 20));
  let got = 0;
  const seen = new Set<string>();
  while (got < 64) {
    const ev = await it.next();
    seen.add(ev.value!);
    got++;
  }
  assert.equal(seen.size, 64, "repeats of a queued path were merged");
  // k0..k63 filled the queue (their repeats merged); each event of k64..k99 and other* was dropped and counted.
  assert.equal(xs.droppedEvents, 36 * 30 + 1000);
  await it.return!();
  await xs.close();
});

Deno.test("netfront: TX id equal to the ring size, and RX offset + length exactly at the page end", async () => {
  {
    const { back, xs, open } = lab();
    const nf = await open();
    back.autoProcess = false;
    const tx: PacketBuffer[] = [];
    nf.sendBatch(tx, fill(nf, tx, 2));
    back.txResponse(0, 256, 0);
    assert.throws(() => nf.reclaimTx(), /TX id 256/);
    await nf.close();
    await xs.close();
  }
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    back.rxResponse(0, 0, 4096 - 100, 0, 100); // ends exactly at the page end: fine (not a pvdrv frame, still a frame)
    const out: PacketBuffer[] = [];
    assert.equal(nf.receiveBatch(out, 8), 1);
    assert.equal(out[0].length, 100);
    nf.release(out, 1);
    back.rxResponse(0, 1, 4096 - 100, 0, 101);
    assert.throws(() => nf.receiveBatch(out, 8), /101 bytes at offset 3996/);
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: a frame of 24 slots is taken (and dropped as oversized), 25 slots break the ring", async () => {
  for (const slots of [24, 25]) {
    const { back, xs, open } = lab();
    const nf = await open();
    try {
      for (let i = 0; i < slots; i++) back.rxResponse(0, i, 0, i < slots - 1 ? 4 : 0, 100);
      if (slots === 24) {
        assert.equal(nf.receiveBatch([], 8), 0);
        assert.equal(nf.stats()[0].rxDropped, 1, "2,400 bytes exceed the MTU: dropped, counted");
      } else assert.throws(() => nf.receiveBatch([], 8), /more than 24 slots/);
    } finally {
      await nf.close();
      await xs.close();
    }
  }
});

Deno.test("xenstore: unknown req_id, payloads at and past 4096 bytes, and only EAGAIN is retried", async () => {
  const server = new XenStoreServer();
  const { transport, conn } = server.connect(0);
  const xs = new XenStore(transport);
  const big = "x".repeat(4096 - "/local/a".length - 1);
  await xs.write("/local/a", big); // path + NUL + value = 4096: allowed
  assert.equal(await xs.read("/local/a"), big);
  await assert.rejects(() => xs.write("/local/a", big + "y"), /E2BIG|too long/);
  // A commit refused with anything but EAGAIN is not retried.
  let starts = 0;
  const handle = server.handle.bind(server);
  server.handle = (c, type, req, tx, payload) => {
    if (type === XS.TRANSACTION_START) starts++;
    if (type === XS.TRANSACTION_END && new TextDecoder().decode(payload).startsWith("T")) {
      return c.reply(XS.ERROR, req, tx, "EACCES\0");
    }
    handle(c, type, req, tx, payload);
  };
  await assert.rejects(() => xs.transaction(async (t) => await xs.write("/local/b", "1", t)), /EACCES/);
  assert.equal(starts, 1, "EACCES is final");
  server.handle = handle;
  // A reply to a request never made fails the connection with a clear error.
  const dv = new DataView(new ArrayBuffer(16 + 3));
  dv.setUint32(0, XS.READ, true);
  dv.setUint32(4, 4242, true);
  dv.setUint32(12, 3, true);
  conn.raw(new Uint8Array(dv.buffer));
  await new Promise((r) => setTimeout(r, 10));
  await assert.rejects(() => xs.read("/local/a"), /unknown request 4242/);
  await xs.close();
});

Deno.test("netfront: a zero-length slot inside a multi-slot frame is part of it, not an error", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    back.rxResponse(0, 0, 0, 4, 100);
    back.rxResponse(0, 1, 0, 4, 0);
    back.rxResponse(0, 2, 0, 0, 60);
    const out: PacketBuffer[] = [];
    assert.equal(nf.receiveBatch(out, 8), 1);
    assert.equal(out[0].length, 160);
    nf.release(out, 1);
    assert.equal(nf.stats()[0].rxDropped, 0);
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: shutdown goes on after xenstore refuses a step (only silence or a closed connection stop it)", async () => {
  const { server, back, xs, open } = lab();
  const nf = await open();
  const handle = server.handle.bind(server);
  server.handle = (c, type, req, tx, payload) => {
    const text = new TextDecoder().decode(payload);
    if (type === XS.WRITE && text.endsWith("/state\x005")) return c.reply(XS.ERROR, req, tx, "EACCES\0");
    handle(c, type, req, tx, payload);
  };
  await nf.close();
  assert.equal(server.get(`${back.front}/state`), "6", "Closed was still written");
  await xs.close();
});

/** A netfront at MTU 9000 on the model, and a maker of test frames `len` bytes long with sequence `k`. */
async function jumboLab() {
  const { back, xs, open } = lab(10_000, 9000);
  const nf = await open();
  const frame = (k: number, len: number) => {
    const f = new Uint8Array(len);
    writeFrame(f, len, k, nf.mac, DST);
    return f;
  };
  return { back, xs, nf, frame };
}

Deno.test("netfront: gathering a frame never writes past it into another held frame (MTU 9000)", async () => {
  const { back, xs, nf, frame } = await jumboLab();
  try {
    const out: PacketBuffer[] = [];
    assert.ok(back.deliver(frame(1, 9000), 0, { slotBytes: 3000 })); // three slots
    assert.ok(back.deliver(frame(2, 5000), 0, { slotBytes: 4000 })); // two
    assert.ok(back.deliver(frame(3, 5000), 0, { slotBytes: 4000 }));
    assert.equal(nf.receiveBatch(out, 8), 3);
    const held = out.slice(0, 3);
    nf.release([held[1]], 1);
    assert.ok(back.deliver(frame(4, 8000), 0, { slotBytes: 4096 })); // two slots, gathered where frame 2 was
    assert.equal(nf.receiveBatch(out, 8), 1);
    for (const [b, k] of [[held[0], 1], [held[2], 3], [out[0], 4]] as const) {
      assert.equal(checkFrame(b.data, b.length, seqOut), FrameCheck.Ok, `frame ${k} intact`);
      assert.equal(seqOut[0], k);
    }
    nf.release([held[0], held[2], out[0]], 3);
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: a backlog of more multi-slot frames than gather buffers waits in the ring, none dropped", async () => {
  const { back, xs, nf, frame } = await jumboLab();
  try {
    // A receiver that stalled: 40 two-slot frames wait when it asks for 64 at once (the gather pool holds 32).
    const N = 40;
    for (let k = 0; k < N; k++) assert.ok(back.deliver(frame(k, 6000), 0, { slotBytes: 4096 }), `frame ${k}`);
    const out: PacketBuffer[] = new Array(64), seen: number[] = [];
    const first = nf.receiveBatch(out, 64);
    assert.ok(first > 0 && first < N, `the first batch stops at the gather pool (${first})`);
    let got = first;
    const check = (n: number) => {
      for (let i = 0; i < n; i++) {
        assert.equal(checkFrame(out[i].data, out[i].length, seqOut), FrameCheck.Ok);
        seen.push(seqOut[0]);
      }
    };
    check(first);
    // Still held: the rest waits, whatever the caller asks for.
    assert.equal(nf.receiveBatch(out.slice(first), 64), 0);
    nf.release(out, first);
    for (let tries = 0; got < N && tries < 10; tries++) {
      const n = nf.receiveBatch(out, 64);
      check(n);
      nf.release(out, n);
      got += n;
    }
    assert.deepEqual(seen, Array.from({ length: N }, (_, k) => k), "every frame, in order");
    assert.equal(nf.stats()[0].rxDropped, 0);
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("netfront: multi-queue-max-queues that is not a whole number is refused", async () => {
  const ok = lab();
  ok.server.set(`${ok.back.back}/multi-queue-max-queues`, "256");
  await (await ok.open()).close(); // the largest value netback may offer
  await ok.xs.close();
  for (const v of ["x", "1.5", "0", "257"]) {
    const l = lab();
    l.server.set(`${l.back.back}/multi-queue-max-queues`, v);
    await assert.rejects(() => l.open(), /multi-queue-max-queues is/, v);
    assert.equal(l.grants.live, 0);
    await l.xs.close();
  }
});

Deno.test("xenstore: open with a short timeout returns in its bound when xenstore falls silent mid-wait", async () => {
  const server = new XenStoreServer();
  const grants = new ModelGrants(), evtchns = new ModelEvtchns();
  const back = new NetbackModel(server, grants, evtchns);
  const { transport, conn } = server.connect(back.frontDomid);
  // The backend never answers the frontend; once the frontend has written its state, xenstore stops answering.
  server.onWrite = (path) => void (path.endsWith("/state") && setTimeout(() => conn.mute = true, 30));
  const xs = new XenStore(transport); // the default 10 s request deadline
  const t0 = performance.now();
  await assert.rejects(() => Netfront.open(xs, grants, evtchns, { timeoutMs: 150 }), /150 ms/);
  const ms = performance.now() - t0;
  // Was ~20 s: an UNWATCH and a state read each waited a whole request deadline after the wait had ended.
  assert.ok(ms < 5000, `open returned after ${ms.toFixed(0)} ms`);
  assert.equal(grants.live, 0);
  await xs.close();
});

Deno.test("xenstore: directory and domain-path replies that are not UTF-8 are protocol errors, as values are", async () => {
  const server = new XenStoreServer();
  const { transport, conn } = server.connect(0);
  const xs = new XenStore(transport);
  server.set("/local/x", "1");
  const bad = new Uint8Array([0x61, 0xff, 0xfe, 0]);
  const reply = conn.reply.bind(conn);
  conn.reply = (type, req, tx, payload) =>
    reply(type, req, tx, type === XS.DIRECTORY || type === XS.GET_DOMAIN_PATH ? bad : payload);
  await assert.rejects(() => xs.directory("/local"), /not UTF-8/);
  await assert.rejects(() => xs.domainPath(3), /not UTF-8/);
  await xs.close();
});

Deno.test("xenstore: an empty string reply reads as empty, not as its terminator", async () => {
  const server = new XenStoreServer();
  const { transport, conn } = server.connect(0);
  const xs = new XenStore(transport);
  const reply = conn.reply.bind(conn);
  conn.reply = (type, req, tx, payload) => reply(type, req, tx, type === XS.GET_DOMAIN_PATH ? "\0" : payload);
  assert.equal(await xs.domainPath(3), "");
  await xs.close();
});

Deno.test("xenstore: a watch read after the connection failed ends with the failure, it does not wait forever", async () => {
  const server = new XenStoreServer();
  const xs = new XenStore(server.connect(0).transport);
  const it = xs.watch("/local/w");
  assert.equal((await it.next()).value, "/local/w");
  await xs.close();
  await assert.rejects(() => it.next(), /closed/);
});

Deno.test("netfront: once the TX ring broke, received pages are not posted again", async () => {
  const { back, xs, open } = lab();
  const nf = await open();
  try {
    back.autoProcess = false;
    const tx: PacketBuffer[] = [];
    nf.sendBatch(tx, fill(nf, tx, 1));
    back.txResponse(0, 256, 0); // a TX id that was never in flight
    assert.throws(() => nf.reclaimTx(), /TX id 256/);
    const f = new Uint8Array(60);
    f.set(nf.mac, 0);
    assert.ok(back.deliver(f));
    const posted = back.rxPosted();
    const out: PacketBuffer[] = [];
    try {
      nf.release(out, nf.receiveBatch(out, 8));
    } catch { /* the broken pair may say so */ }
    assert.equal(back.rxPosted(), posted, "no RX request posted on a broken queue pair");
  } finally {
    await nf.close();
    await xs.close();
  }
});

Deno.test("xenstore: late replies are recognised for the last 1024 timed-out requests, no more (bounded memory)", async () => {
  const server = new XenStoreServer();
  const { transport, conn } = server.connect(0);
  const xs = new XenStore(transport, { requestTimeoutMs: 20 });
  server.set("/local/x", "1");
  const stash: [number, number, number, string | Uint8Array][] = [];
  let holding = true;
  const reply = conn.reply.bind(conn);
  conn.reply = (type, req, tx, payload) =>
    void (holding ? stash.push([type, req, tx, payload]) : reply(type, req, tx, payload));
  // 1025 requests time out; then their replies arrive.
  const reads = Array.from({ length: 1025 }, () => xs.read("/local/x").catch((e) => e));
  for (const r of await Promise.all(reads)) assert.match(String(r), /did not answer/);
  holding = false;
  for (const [type, req, tx, payload] of stash.slice(0, 1024)) reply(type, req, tx, payload);
  assert.equal(await xs.read("/local/x"), "1", "1024 late replies were recognised and dropped");
  reply(...stash[1024]); // the 1025th to time out was not remembered: a reply to a request never made
  await assert.rejects(() => xs.read("/local/x"), /unknown|never|req/);
  await xs.close();
});

Deno.test("xenstore: messages are traced on stderr only when PVDRV_XS_TRACE=1", async () => {
  const code = `
    import { XenStore } from "./drivers/xen/xenstore.ts";
    import { XenStoreServer } from "./tests/models/xenstore_server.ts";
    const server = new XenStoreServer();
    server.set("/local/t", "v");
    const xs = new XenStore(server.connect(0).transport);
    await xs.read("/local/t");
    await xs.close();`;
  const run = async (env: Record<string, string>) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-check", code],
      cwd: new URL("../../", import.meta.url).pathname,
      env,
      stderr: "piped",
      stdout: "null",
    }).output();
    return new TextDecoder().decode(out.stderr);
  };
  assert.doesNotMatch(await run({ PVDRV_XS_TRACE: "" }), /^xs [<>]/m);
  assert.match(await run({ PVDRV_XS_TRACE: "1" }), /^xs > type 2 req \d+ \/local\/t/m);
});
