/** Xen blkfront (drivers/xen/blkfront.ts) on the disk class core, against the blkback model. */
import assert from "assert";
import { Blkfront } from "../../drivers/xen/blkfront.ts";
import { BLKIF_OP, BLKIF_RSP } from "../../drivers/xen/blkif.ts";
import { XenStore } from "../../drivers/xen/xenstore.ts";
import { RingError } from "../../drivers/xen/ring.ts";
import { BlockOp, BlockRequest, BlockStatus, Completions } from "../../drivers/block/disk.ts";
import { isPvdrvError } from "../../hal/errors.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { ModelEvtchns, ModelGrants } from "../models/xen.ts";
import { BlkbackModel, type BlkbackOptions } from "../models/blkback.ts";

function lab(o: BlkbackOptions & { grantLimit?: number } = {}) {
  const server = new XenStoreServer();
  const grants = new ModelGrants(o.grantLimit ?? 1024), evtchns = new ModelEvtchns();
  const back = new BlkbackModel(server, grants, evtchns, o);
  const xs = new XenStore(server.connect(back.frontDomid).transport);
  const open = (opts: Partial<Parameters<typeof Blkfront.open>[3]> = {}) =>
    Blkfront.open(xs, grants, evtchns, { vbd: o.vbd ?? 51712, timeoutMs: 2000, ...opts });
  return { server, grants, evtchns, back, xs, open };
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 13 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

/** Post one read of `len` bytes at `off` through the zero-copy API without waiting for it. */
function postRead(disk: Blkfront, off: number, len: number, tag = 1) {
  const bufs: import("../../drivers/block/disk.ts").BlockBuffer[] = [];
  const n = Math.ceil(len / 4096);
  assert.equal(disk.allocBuffers(bufs, n), n);
  for (let k = 0; k < n; k++) bufs[k].length = Math.min(4096, len - k * 4096);
  const r = new BlockRequest();
  r.io(BlockOp.Read, off, bufs, n, tag);
  try {
    assert.equal(disk.submit([r], 1), 1);
  } catch (e) {
    disk.release(bufs, n); // a refused request leaves its buffers with the caller
    throw e;
  }
  return bufs;
}

Deno.test("blkfront: handshake to Connected; keys, protocol and the disk's info as blkback wrote them", async () => {
  const { back, server, xs, open } = lab({ sectors: 8192, physicalSectorSize: 4096, discard: true });
  const disk = await open();
  try {
    const get = (k: string) => server.get(`${back.front}/${k}`);
    assert.equal(get("protocol"), "x86_64-abi");
    assert.equal(get("state"), "4");
    assert.equal(back.state, 4);
    assert.ok(get("ring-ref") !== undefined && get("event-channel") !== undefined);
    assert.equal(get("feature-persistent"), "1");
    const i = disk.info;
    assert.equal(i.capacity, 8192 * 512);
    assert.equal(i.logicalBlockSize, 512);
    assert.equal(i.physicalBlockSize, 4096);
    assert.equal(i.writeCache, true);
    assert.equal(i.discard, true);
    assert.equal(i.maxSegments, 32, "indirect segments (the backend offers 256, blkfront asks 32)");
    assert.equal(i.queueDepth, 32);
    assert.equal(await disk.serial(), "", "blkif has no get-id");
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: reads and writes of any size land byte-exact, direct and indirect", async () => {
  const { back, grants, xs, open } = lab({ sectors: 16384 });
  const disk = await open();
  try {
    for (
      const [off, len, seed] of [[0, 512, 1], [4096, 8192, 2], [1 << 20, 128 * 1024, 3], [
        512 * 9,
        700 * 1024,
        4,
      ]]
    ) {
      const data = pattern(len, seed);
      await disk.write(off, data);
      assert.deepEqual(back.disk.subarray(off, off + len), data, `write of ${len} at ${off}`);
      assert.deepEqual(await disk.read(off, len), data, `read of ${len} at ${off}`);
    }
    assert.ok(back.served.some((r) => r.segments > 11), "some requests were indirect");
    assert.ok(back.served.every((r) => r.segments <= 32));
    assert.deepEqual(back.errors, []);
  } finally {
    await disk.close();
    await xs.close();
  }
  assert.equal(grants.live, 0, "every grant ended at close");
});

Deno.test("blkfront: flush makes writes durable; FUA is a write and a flush; discard zeroes", async () => {
  const { back, xs, open } = lab({ discard: true });
  const disk = await open();
  try {
    const a = pattern(4096, 9);
    await disk.write(8192, a);
    assert.notDeepEqual(back.durable.subarray(8192, 8192 + 4096), a, "volatile until a flush");
    await disk.flush();
    assert.deepEqual(back.durable.subarray(8192, 8192 + 4096), a);
    const b = pattern(4096, 10);
    await disk.write(65536, b, { fua: true });
    assert.deepEqual(back.durable.subarray(65536, 65536 + 4096), b, "FUA completes durable");
    await disk.discard(0, 16384);
    assert.deepEqual(back.disk.subarray(8192, 8192 + 4096), new Uint8Array(4096));
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: a read-only disk refuses writes before anything is posted", async () => {
  const { back, xs, open } = lab({ readOnly: true });
  const disk = await open();
  try {
    assert.equal(disk.info.readOnly, true);
    await assert.rejects(() => disk.write(0, new Uint8Array(512)), /read-only/);
    assert.equal(back.served.length, 0);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: a deeper queue asks for a bigger ring (ring-page-order), as far as the backend allows", async () => {
  const { back, server, xs, open } = lab({ maxRingPageOrder: 1 });
  const disk = await open({ queueDepth: 128 });
  try {
    assert.equal(server.get(`${back.front}/ring-page-order`), "1");
    assert.ok(server.get(`${back.front}/ring-ref1`) !== undefined);
    assert.equal(disk.info.queueDepth, 64, "two pages hold 64 requests");
    const data = pattern(64 * 1024, 5);
    await disk.write(0, data);
    assert.deepEqual(await disk.read(0, data.length), data);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: reopened with one queue and one page after two and a bigger ring, it connects", async () => {
  // The stale multi-queue-num-queues and ring-page-order of the first connection would make blkback look for
  // rings under queue-N and ring-refN that are no longer granted (Linux blkback: "mapping ring-ref" fails).
  const { back, server, xs, open } = lab({ maxQueues: 2, maxRingPageOrder: 2 });
  const data = pattern(8192, 9);
  let disk = await open({ queues: 2, queueDepth: 64 });
  try {
    assert.equal(server.get(`${back.front}/multi-queue-num-queues`), "2");
    assert.equal(server.get(`${back.front}/ring-page-order`), "1");
    await disk.write(0, data);
  } finally {
    await disk.close();
  }
  disk = await open({ queues: 1, queueDepth: 32 });
  try {
    assert.equal(server.get(`${back.front}/multi-queue-num-queues`), undefined);
    assert.equal(server.get(`${back.front}/ring-page-order`), undefined);
    assert.equal(disk.queues, 1);
    assert.deepEqual(await disk.read(0, data.length), data);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: without indirect segments a request carries at most 11", async () => {
  const { back, xs, open } = lab({ maxIndirectSegments: 0 });
  const disk = await open();
  try {
    assert.equal(disk.info.maxSegments, 11);
    const data = pattern(200 * 1024, 6);
    await disk.write(4096, data);
    assert.deepEqual(await disk.read(4096, data.length), data);
    assert.ok(back.served.every((r) => r.segments <= 11));
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: the grants needed are counted first; too few is a clear error, nothing leaked", async () => {
  const { grants, xs, open } = lab({ grantLimit: 100 });
  await assert.rejects(() => open(), /need \d+ grants, only 100 left \(gntalloc limit/);
  assert.equal(grants.live, 0);
  await xs.close();
});

/** Responses a backend must never write: each breaks the ring with a clear error, and close ends every grant. */
for (
  const [what, hostile, re] of [
    ["an id out of range", (b: BlkbackModel) => b.respond(0, 999, BLKIF_OP.READ, 0), /request id 999/],
    ["an id not in flight", (b: BlkbackModel) => b.respond(0, 5, BLKIF_OP.READ, 0), /answered request 5/],
    [
      "the wrong operation",
      (b: BlkbackModel) => (b.opFor = () => BLKIF_OP.WRITE, b.process(0)),
      /as operation 1, sent 0/,
    ],
    ["a status outside blkif.h", (b: BlkbackModel) => (b.statusFor = () => 7, b.process(0)), /status 7/],
    ["rsp_prod past what is outstanding", (b: BlkbackModel) => b.jumpRsp(0, 40), /rsp_prod/],
  ] as [string, (b: BlkbackModel) => void, RegExp][]
) {
  Deno.test(`blkfront hostile: ${what} breaks the ring; close still ends every grant`, async () => {
    const { back, grants, xs, open } = lab();
    const disk = await open();
    back.autoProcess = false;
    try {
      postRead(disk, 0, 4096);
      hostile(back);
      const done = new Completions(4);
      assert.throws(() => disk.poll(done, 4), (e: Error) => e instanceof RingError && re.test(e.message));
      assert.throws(() => disk.poll(done, 4), RingError, "the ring stays broken");
      assert.throws(() => postRead(disk, 0, 512), RingError);
    } finally {
      await disk.close();
      await xs.close();
    }
    assert.equal(grants.live, 0);
  });
}

Deno.test("blkfront: an answer completed twice breaks the ring, never completes twice", async () => {
  const { back, xs, open } = lab();
  const disk = await open();
  back.autoProcess = false;
  try {
    const a = postRead(disk, 0, 4096, 77);
    postRead(disk, 8192, 4096, 78);
    // Two in flight (slots 0 and 1): slot 0 answered twice, so rsp_prod stays within what is outstanding.
    back.respond(0, 0, BLKIF_OP.READ, BLKIF_RSP.OKAY);
    back.respond(0, 0, BLKIF_OP.READ, BLKIF_RSP.OKAY);
    const done = new Completions(1);
    assert.equal(disk.poll(done, 1), 1);
    assert.equal(done.tags[0], 77);
    assert.equal(done.status[0], BlockStatus.Ok);
    disk.release(a, a.length);
    assert.throws(() => disk.poll(done, 1), /request 0, which is not in flight/);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: EOPNOTSUPP and ERROR reach the caller as statuses, the ring lives on", async () => {
  const { back, xs, open } = lab();
  const disk = await open();
  try {
    back.statusFor = (op) => op === BLKIF_OP.READ ? BLKIF_RSP.ERROR : undefined;
    await assert.rejects(
      () => disk.read(0, 4096),
      (e: Error) => isPvdrvError(e) && /I\/O error/.test(e.message),
    );
    back.statusFor = null;
    const data = pattern(4096, 3);
    await disk.write(0, data);
    assert.deepEqual(await disk.read(0, 4096), data);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: garbage in the backend's keys is refused by name; nothing stays granted", async () => {
  for (
    const [k, v, re] of [
      ["feature-max-indirect-segments", "-1", /feature-max-indirect-segments is '-1'/],
      ["max-ring-page-order", "4x", /max-ring-page-order is '4x'/],
      ["multi-queue-max-queues", "0", /multi-queue-max-queues is '0'/],
    ] as [string, string, RegExp][]
  ) {
    const { back, server, grants, xs, open } = lab();
    server.set(`${back.back}/${k}`, v);
    await assert.rejects(() => open(), re);
    assert.equal(grants.live, 0, k);
    await xs.close();
  }
});

Deno.test("blkfront: a disk key the backend gets wrong on connecting fails the open cleanly", async () => {
  const { back, server, grants, xs, open } = lab();
  const hook = server.onWrite!;
  server.onWrite = (p, v) => {
    hook(p, v);
    if (p === `${back.front}/state` && v === "3") {
      queueMicrotask(() => server.set(`${back.back}/sector-size`, "1000"));
    }
  };
  await assert.rejects(() => open(), /sector-size is '1000'/);
  assert.equal(grants.live, 0);
  await xs.close();
});

Deno.test("blkfront: interrupts — a completion wakes the waiter (event channel)", async () => {
  const { back, xs, open } = lab();
  const disk = await open();
  back.autoProcess = false;
  try {
    postRead(disk, 0, 4096, 5);
    const woke = disk.waitCompletion(0);
    setTimeout(() => back.process(0), 5);
    await woke;
    const done = new Completions(2);
    assert.equal(disk.poll(done, 2), 1);
    assert.equal(done.tags[0], 5);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: a resize the backend announces (Connected again) reaches info; the new space works", async () => {
  const { back, xs, open } = lab({ sectors: 2048 });
  const disk = await open();
  try {
    assert.equal(disk.info.capacity, 2048 * 512);
    assert.equal(disk.configChanged(), false);
    back.resize(4096);
    for (let i = 0; i < 100 && !disk.configChanged(); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(disk.info.capacity, 4096 * 512);
    assert.equal(disk.resizes, 1);
    const data = pattern(4096, 8);
    await disk.write(3000 * 512, data);
    assert.deepEqual(back.disk.subarray(3000 * 512, 3000 * 512 + 4096), data);
    await assert.rejects(() => disk.write(4096 * 512, data), /end past the disk/);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: reconnects after the backend restarts; data written before is read after", async () => {
  const { back, grants, xs, open } = lab();
  const disk = await open();
  try {
    const data = pattern(8192, 11);
    await disk.write(4096, data);
    const before = grants.live;
    await back.restart();
    const deadline = Date.now() + 2000;
    while (disk.reconnects === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.equal(disk.reconnects, 1);
    assert.equal(back.state, 4, "the backend is Connected again");
    assert.equal(grants.live, before, "the old rings' grants ended, the new ones made: no more, no fewer");
    assert.deepEqual(await disk.read(4096, 8192), data);
  } finally {
    await disk.close();
    await xs.close();
  }
});

Deno.test("blkfront: a backend whose state flaps (garbage too) never crashes it; a restart after brings it back", async () => {
  const { back, grants, xs, open } = lab();
  const disk = await open();
  try {
    const data = pattern(4096, 12);
    await disk.write(0, data);
    back.flap([6, 4, "x", 5, 99, 2, 4, 1, "", 3, 4, 6]);
    await new Promise((r) => setTimeout(r, 50));
    // Whatever it made of that, I/O either works or fails with a clear error: never a crash or a hang.
    await disk.read(0, 4096).catch((e) => assert.ok(isPvdrvError(e), String(e)));
    await back.restart();
    const deadline = Date.now() + 2000;
    while (back.state !== 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.equal(back.state, 4, "reconnected once the backend settled");
    assert.deepEqual(await disk.read(0, 4096), data);
  } finally {
    await disk.close();
    await xs.close();
  }
  assert.equal(grants.live, 0, "close ended every grant");
});

Deno.test("blkfront: a backend without persistent grants gets the same dedicated pages, direct and indirect", async () => {
  // pvdrv's buffers hold nothing but the disk's data (never the application's memory), so whether blkback keeps
  // them mapped or maps them per request changes nothing on this side: no copy path is needed (XSA-403).
  const { back, xs, open } = lab({ persistent: false });
  const disk = await open();
  try {
    assert.equal(disk.backendDisk!.persistent, false);
    const small = pattern(8192, 13), big = pattern(96 * 1024, 14); // 2 segments, then 24 (indirect)
    await disk.write(0, small);
    await disk.write(65536, big);
    assert.deepEqual(back.disk.subarray(65536, 65536 + big.length), big);
    assert.deepEqual(await disk.read(0, small.length), small);
    assert.deepEqual(await disk.read(65536, big.length), big);
  } finally {
    await disk.close();
    await xs.close();
  }
});
