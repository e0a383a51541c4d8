/**
 * The NBD export (apps/nbd/server.ts) over a real Unix socket, against a virtio-blk disk on its model: the fixed
 * newstyle handshake, every command byte-exact on the device, durability of FLUSH and FUA, and a hostile client.
 */
import assert from "assert";
import { VirtioBlk } from "../../drivers/virtio/blk.ts";
import { BLK_F, F } from "../../drivers/virtio/features.ts";
import { listenNbd, NbdExport, type NbdSessionStats } from "../../apps/nbd/server.ts";
import {
  dv,
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_E,
  NBD_FLAG,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_TFLAG,
} from "../../apps/nbd/wire.ts";
import { type BlkModelOptions, VirtioBlkModel } from "../models/virtio_blk_device.ts";
import { NbdClient } from "../models/nbd_client.ts";

async function withExport(
  t: (c: () => Promise<NbdClient>, model: VirtioBlkModel, sessions: NbdSessionStats[]) => Promise<void>,
  o: { model?: BlkModelOptions; name?: string; readOnly?: boolean; bufferBytes?: number } = {},
): Promise<void> {
  const model = new VirtioBlkModel({ sectors: 16384, ...o.model });
  const disk = VirtioBlk.openPci(model.pci(), {
    bufferBytes: o.bufferBytes,
    buffers: o.bufferBytes ? 8 : undefined,
  });
  const dir = Deno.makeTempDirSync(), path = `${dir}/nbd.sock`;
  const sessions: NbdSessionStats[] = [];
  const l = listenNbd(
    new NbdExport(disk, { name: o.name ?? "disk", readOnly: o.readOnly }),
    { path },
    (s) => sessions.push(s),
  );
  const clients: NbdClient[] = [];
  try {
    await t(
      async () => {
        const c = await NbdClient.unix(path);
        clients.push(c);
        return c;
      },
      model,
      sessions,
    );
  } finally {
    for (const c of clients) c.close();
    l.close();
    await l.done;
    await disk.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

async function go(c: NbdClient, name = "disk"): Promise<void> {
  await c.greet();
  await c.option(NBD_OPT.GO, NbdClient.infoData(name, [NBD_INFO.BLOCK_SIZE]));
  const r = await c.optionReplies();
  assert.equal(r.at(-1)!.type, NBD_REP.ACK, `GO: ${r.map((x) => x.type)}`);
}

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);

Deno.test("nbd: handshake — LIST, INFO with sizes and flags, unknown export and options refused, GO", async () => {
  await withExport(async (connect) => {
    const c = await connect();
    await c.greet();
    assert.equal(c.serverFlags, NBD_FLAG.FIXED_NEWSTYLE | NBD_FLAG.NO_ZEROES);
    await c.option(NBD_OPT.LIST);
    const list = await c.optionReplies();
    assert.equal(list[0].type, NBD_REP.SERVER);
    assert.equal(new TextDecoder().decode(list[0].data.subarray(4)), "disk");
    assert.equal(list[1].type, NBD_REP.ACK);
    await c.option(NBD_OPT.INFO, NbdClient.infoData("disk", [NBD_INFO.NAME, NBD_INFO.BLOCK_SIZE]));
    const info = await c.optionReplies();
    const ex = info.find((r) => dv(r.data).getUint16(0) === NBD_INFO.EXPORT)!;
    assert.equal(Number(dv(ex.data).getBigUint64(2)), 16384 * 512);
    const flags = dv(ex.data).getUint16(10);
    for (const f of [NBD_TFLAG.HAS_FLAGS, NBD_TFLAG.SEND_FLUSH, NBD_TFLAG.SEND_FUA, NBD_TFLAG.SEND_TRIM]) {
      assert.ok(flags & f, `flag ${f}`);
    }
    assert.equal(flags & NBD_TFLAG.READ_ONLY, 0);
    const bs = info.find((r) => dv(r.data).getUint16(0) === NBD_INFO.BLOCK_SIZE)!;
    assert.deepEqual([dv(bs.data).getUint32(2), dv(bs.data).getUint32(10)], [512, 32 << 20]);
    assert.ok(info.some((r) => dv(r.data).getUint16(0) === NBD_INFO.NAME));
    await c.option(NBD_OPT.INFO, NbdClient.infoData("other", []));
    assert.equal((await c.optionReply()).type, NBD_REP.ERR_UNKNOWN);
    const bad = NbdClient.infoData("disk", [1]);
    dv(bad).setUint32(0, 1000); // a name length past the data
    await c.option(NBD_OPT.GO, bad);
    assert.equal((await c.optionReply()).type, NBD_REP.ERR_INVALID);
    for (const opt of [NBD_OPT.STARTTLS, NBD_OPT.STRUCTURED_REPLY, 99]) {
      await c.option(opt);
      assert.equal((await c.optionReply()).type, NBD_REP.ERR_UNSUP, `option ${opt}`);
    }
    await c.option(NBD_OPT.LIST, new Uint8Array(5000));
    assert.equal((await c.optionReply()).type, NBD_REP.ERR_TOO_BIG);
    await c.option(NBD_OPT.GO, NbdClient.infoData("disk", []));
    assert.equal((await c.optionReplies()).at(-1)!.type, NBD_REP.ACK);
    await c.request(NBD_CMD.READ, 1, 0, 4096);
    const r = await c.reply();
    assert.equal(r.error, 0);
    assert.equal(r.data!.length, 4096);
  });
});

Deno.test("nbd: every command lands on the device byte-exact; FLUSH and FUA make writes durable", async () => {
  await withExport(async (connect, model) => {
    const c = await connect();
    await go(c);
    await c.request(NBD_CMD.WRITE, 1, 4096, 65536, { payload: bytes(65536, 1) });
    assert.deepEqual(await c.reply(), { error: 0, handle: 1, data: null });
    assert.deepEqual(model.disk.subarray(4096, 4096 + 65536), bytes(65536, 1));
    assert.deepEqual(model.durable.subarray(4096, 8192), new Uint8Array(4096), "not yet durable");
    await c.request(NBD_CMD.FLUSH, 2, 0, 0);
    assert.equal((await c.reply()).error, 0);
    assert.deepEqual(model.durable.subarray(4096, 4096 + 65536), bytes(65536, 1));
    await c.request(NBD_CMD.WRITE, 3, 1 << 20, 8192, { payload: bytes(8192, 2), flags: NBD_CMD_FLAG.FUA });
    assert.equal((await c.reply()).error, 0);
    assert.deepEqual(model.durable.subarray(1 << 20, (1 << 20) + 8192), bytes(8192, 2), "FUA: durable");
    await c.request(NBD_CMD.READ, 4, 4096, 65536);
    assert.deepEqual((await c.reply()).data, bytes(65536, 1));
    await c.request(NBD_CMD.WRITE_ZEROES, 5, 8192, 4096);
    await c.request(NBD_CMD.TRIM, 6, 16384, 8192);
    assert.deepEqual([(await c.reply()).error, (await c.reply()).error], [0, 0]);
    const want = bytes(65536, 1);
    want.fill(0, 4096, 8192);
    want.fill(0, 12288, 20480);
    assert.deepEqual(model.disk.subarray(4096, 4096 + 65536), want);
    // Pipelined: 32 reads in flight, each answered once with its own data.
    for (let k = 0; k < 32; k++) await c.request(NBD_CMD.READ, 100 + k, k * 4096, 4096);
    const got = new Map<number, Uint8Array>();
    for (let k = 0; k < 32; k++) {
      const r = await c.reply();
      assert.equal(r.error, 0);
      assert.ok(!got.has(r.handle), "answered once");
      got.set(r.handle, r.data!);
    }
    for (let k = 0; k < 32; k++) {
      assert.deepEqual(got.get(100 + k), model.disk.subarray(k * 4096, k * 4096 + 4096));
    }
    await c.request(NBD_CMD.DISC, 7, 0, 0);
    assert.ok(await c.closed());
  });
});

Deno.test("nbd: requests larger than the DMA buffers take the copying path and stay exact", async () => {
  await withExport(async (connect, model) => {
    const c = await connect();
    await go(c);
    const big = bytes(1 << 20, 9);
    await c.request(NBD_CMD.WRITE, 1, 0, big.length, { payload: big });
    assert.equal((await c.reply()).error, 0);
    assert.deepEqual(model.disk.subarray(0, big.length), big);
    await c.request(NBD_CMD.READ, 2, 0, big.length);
    assert.deepEqual((await c.reply()).data, big);
  }, { bufferBytes: 4096 });
});

Deno.test("nbd: a hostile client gets the protocol's errors; the session goes on, or ends cleanly", async () => {
  await withExport(async (connect, model, sessions) => {
    const c = await connect();
    await go(c);
    const size = 16384 * 512;
    const cases: [string, () => Promise<void>, number][] = [
      ["read past the end", () => c.request(NBD_CMD.READ, 1, size - 512, 1024), NBD_E.EINVAL],
      [
        "write past the end",
        () => c.request(NBD_CMD.WRITE, 2, size, 512, { payload: bytes(512, 0) }),
        NBD_E.ENOSPC,
      ],
      ["an offset past 2^53", () => c.request(NBD_CMD.READ, 3, 2 ** 60, 512), NBD_E.EINVAL],
      ["unaligned offset", () => c.request(NBD_CMD.READ, 4, 100, 512), NBD_E.EINVAL],
      [
        "unaligned write",
        () => c.request(NBD_CMD.WRITE, 5, 0, 100, { payload: bytes(100, 0) }),
        NBD_E.EINVAL,
      ],
      ["zero length", () => c.request(NBD_CMD.READ, 6, 0, 0), NBD_E.EINVAL],
      ["read of 64 MiB", () => c.request(NBD_CMD.READ, 7, 0, 64 << 20), NBD_E.EINVAL],
      ["unknown command", () => c.request(77, 8, 0, 512), NBD_E.EINVAL],
      ["CACHE (not advertised)", () => c.request(NBD_CMD.CACHE, 9, 0, 512), NBD_E.EINVAL],
      ["FUA on a read", () => c.request(NBD_CMD.READ, 10, 0, 512, { flags: NBD_CMD_FLAG.FUA }), NBD_E.EINVAL],
      [
        "unknown flags",
        () => c.request(NBD_CMD.WRITE, 11, 0, 512, { flags: 0x80, payload: bytes(512, 0) }),
        NBD_E.EINVAL,
      ],
      ["flush with a length", () => c.request(NBD_CMD.FLUSH, 12, 0, 512), NBD_E.EINVAL],
    ];
    for (const [what, send, err] of cases) {
      await send();
      const r = await c.reply();
      assert.equal(r.error, err, what);
    }
    // Still in step: a good write and read after all of that.
    await c.request(NBD_CMD.WRITE, 20, 0, 512, { payload: bytes(512, 5) });
    assert.equal((await c.reply()).error, 0);
    assert.deepEqual(model.disk.subarray(0, 512), bytes(512, 5));
    // A request with the wrong magic ends the session (the stream cannot be trusted), not the process.
    const b = new Uint8Array(28);
    dv(b).setUint32(0, 0xdeadbeef);
    await c.write(b);
    assert.ok(await c.closed());
    const d = await connect();
    await go(d);
    await d.request(NBD_CMD.READ, 1, 0, 512);
    assert.deepEqual((await d.reply()).data, bytes(512, 5), "the next session is served");
    d.close();
    await new Promise((r) => setTimeout(r, 20));
    assert.match(sessions[0].ended, /request magic 0xdeadbeef/);
    assert.equal(sessions[0].errors, 12);
  });
});

Deno.test("nbd: handshake abuse — bad magic, unknown client flags, a wrong EXPORT_NAME, ABORT — ends only that session", async () => {
  await withExport(async (connect, _model, sessions) => {
    const a = await connect();
    await a.greet();
    await a.option(NBD_OPT.LIST, new Uint8Array(0), 0x1234n);
    assert.ok(await a.closed(), "bad option magic");
    const b = await connect();
    await b.greet(0x80);
    assert.ok(await b.closed(), "unknown client flags");
    const c = await connect();
    await c.greet();
    await c.option(NBD_OPT.EXPORT_NAME, new TextEncoder().encode("nope"));
    assert.ok(await c.closed(), "EXPORT_NAME of no export");
    const d = await connect();
    await d.greet();
    await d.option(NBD_OPT.ABORT);
    assert.equal((await d.optionReply()).type, NBD_REP.ACK);
    assert.ok(await d.closed());
    // EXPORT_NAME of the export: size, flags, and (without NO_ZEROES) 124 zero bytes.
    const e = await connect();
    await e.greet(1);
    await e.option(NBD_OPT.EXPORT_NAME, new TextEncoder().encode("disk"));
    const ans = await e.read(10 + 124);
    assert.equal(Number(dv(ans).getBigUint64(0)), 16384 * 512);
    await e.request(NBD_CMD.READ, 1, 0, 512);
    assert.equal((await e.reply()).error, 0);
    e.close();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(sessions.length, 5);
    assert.match(sessions[0].ended, /IHAVEOPT/);
    assert.match(sessions[1].ended, /client flags 0x80/);
    assert.match(sessions[2].ended, /names no export/);
  });
});

Deno.test("nbd: read-only exports refuse writes with EPERM; FAST_ZERO without native zeroing is ENOTSUP", async () => {
  await withExport(async (connect) => {
    const c = await connect();
    await c.greet();
    await c.option(NBD_OPT.INFO, NbdClient.infoData("disk", []));
    const ex = (await c.optionReplies())[0];
    assert.ok(dv(ex.data).getUint16(10) & NBD_TFLAG.READ_ONLY);
    await c.option(NBD_OPT.GO, NbdClient.infoData("disk", []));
    await c.optionReplies();
    await c.request(NBD_CMD.WRITE, 1, 0, 512, { payload: bytes(512, 0) });
    await c.request(NBD_CMD.TRIM, 2, 0, 4096);
    assert.deepEqual([(await c.reply()).error, (await c.reply()).error], [NBD_E.EPERM, NBD_E.EPERM]);
  }, { readOnly: true });
  await withExport(async (connect, model) => {
    const c = await connect();
    await go(c);
    await c.request(NBD_CMD.WRITE_ZEROES, 1, 0, 4096, { flags: NBD_CMD_FLAG.FAST_ZERO });
    assert.equal((await c.reply()).error, NBD_E.ENOTSUP);
    model.disk.fill(7, 0, 4096);
    await c.request(NBD_CMD.WRITE_ZEROES, 2, 0, 4096);
    assert.equal((await c.reply()).error, 0);
    assert.deepEqual(model.disk.subarray(0, 4096), new Uint8Array(4096), "emulated with writes");
  }, { model: { features: F.VERSION_1 | BLK_F.SEG_MAX | BLK_F.FLUSH } });
});

Deno.test("nbd: a client that vanishes with requests in flight; the export drains them and serves the next", async () => {
  await withExport(async (connect, model, sessions) => {
    const c = await connect();
    await go(c);
    for (let k = 0; k < 16; k++) await c.request(NBD_CMD.READ, k, k * 65536, 65536);
    await c.request(NBD_CMD.WRITE, 99, 0, 4096, { payload: bytes(4096, 3) });
    c.close();
    const d = await connect();
    await go(d);
    await d.request(NBD_CMD.READ, 1, 0, 4096);
    const r = await d.reply();
    assert.equal(r.error, 0);
    assert.deepEqual(r.data, model.disk.subarray(0, 4096));
    d.close();
    await new Promise((res) => setTimeout(res, 20));
    assert.equal(sessions.length, 2);
  });
});

Deno.test("nbd: a listener without a session callback still serves (greets a client)", async () => {
  const model = new VirtioBlkModel({ sectors: 16384 });
  const disk = VirtioBlk.openPci(model.pci(), {});
  const dir = Deno.makeTempDirSync(), path = `${dir}/nbd.sock`;
  const l = listenNbd(new NbdExport(disk, { name: "disk" }), { path });
  const c = await NbdClient.unix(path);
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const greeted = await Promise.race([
      c.greet().then(() => true),
      new Promise<boolean>((r) => timer = setTimeout(() => r(false), 5000)),
    ]);
    assert.ok(greeted, "no greeting within 5 s");
  } finally {
    clearTimeout(timer);
    c.close();
    l.close();
    await l.done;
    await disk.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
