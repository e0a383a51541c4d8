/**
 * The heap stays flat over a million disk requests (virtio-blk on the device model, zero-copy submit and poll at
 * queue depth 32) and over many NBD requests (the export over a Unix socket, pipelined reads and writes). The
 * measurement runs in a child Deno with `--expose-gc`, so that each sample is the heap after a full collection:
 * anything the hot path keeps per request shows as growth, anything it only allocates and drops does not.
 */
import assert from "assert";
import { VirtioBlk } from "../../drivers/virtio/blk.ts";
import { type BlockBuffer, BlockOp, BlockRequest, Completions } from "../../drivers/block/disk.ts";
import { listenNbd, NbdExport } from "../../apps/nbd/server.ts";
import { NBD_CMD, NBD_INFO, NBD_OPT, NBD_REP } from "../../apps/nbd/wire.ts";
import { VirtioBlkModel } from "../models/virtio_blk_device.ts";
import { NbdClient } from "../models/nbd_client.ts";

/** Heap samples (bytes after a full GC), one per `every` requests. */
interface HeapRun {
  requests: number;
  samples: number[];
}

const gc = (globalThis as { gc?: () => void }).gc;

function heapNow(): number {
  gc!();
  return Deno.memoryUsage().heapUsed;
}

/** A million 4 KiB reads and writes at random offsets, QD32, through DiskCore's zero-copy batch API. */
async function diskRun(total: number): Promise<HeapRun> {
  const model = new VirtioBlkModel({ sectors: 16384 });
  const disk = VirtioBlk.openPci(model.pci(), {});
  const QD = 32, reqs: BlockRequest[] = [], bufs: BlockBuffer[][] = [];
  for (let k = 0; k < QD; k++) {
    const b: BlockBuffer[] = [];
    assert.equal(disk.allocBuffers(b, 1), 1);
    b[0].length = 4096;
    bufs.push(b);
    reqs.push(new BlockRequest());
  }
  const done = new Completions(QD), one = [new BlockRequest()];
  let x = 1;
  const post = (k: number) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    reqs[k].io(k & 1 ? BlockOp.Write : BlockOp.Read, (x % 2048) * 4096, bufs[k], 1, k);
    one[0] = reqs[k];
    if (disk.submit(one, 1) !== 1) throw new Error("submit refused a request");
  };
  for (let k = 0; k < QD; k++) post(k);
  const samples: number[] = [];
  let n = 0, mark = 0;
  const every = total / 10;
  while (n < total) {
    const c = disk.poll(done, QD);
    for (let i = 0; i < c; i++) {
      if (done.status[i] !== 0) {
        throw new Error(`request ${done.tags[i]} failed with status ${done.status[i]}`);
      }
      post(done.tags[i]);
    }
    n += c;
    if (n >= mark) {
      model.served.length = 0; // the model's own log of requests, not the driver's
      samples.push(heapNow());
      mark += every;
    }
  }
  await disk.close();
  return { requests: n, samples };
}

/** `total` NBD READs and WRITEs of 4 KiB, 16 in flight, over a Unix socket to an export of the model disk. */
async function nbdRun(total: number): Promise<HeapRun> {
  const model = new VirtioBlkModel({ sectors: 16384 });
  const disk = VirtioBlk.openPci(model.pci(), {});
  const dir = Deno.makeTempDirSync(), path = `${dir}/nbd.sock`;
  const l = listenNbd(new NbdExport(disk, { name: "disk" }), { path });
  const c = await NbdClient.unix(path);
  await c.greet();
  await c.option(NBD_OPT.GO, NbdClient.infoData("disk", [NBD_INFO.BLOCK_SIZE]));
  if ((await c.optionReplies()).at(-1)!.type !== NBD_REP.ACK) throw new Error("GO refused");
  const payload = new Uint8Array(4096).fill(7), QD = 16, samples: number[] = [];
  const send = (h: number) =>
    h & 1
      ? c.request(NBD_CMD.WRITE, h, (h % 2048) * 4096, 4096, { payload })
      : c.request(NBD_CMD.READ, h, (h % 2048) * 4096, 4096);
  let sent = 0, got = 0, mark = 0;
  const every = total / 10;
  for (; sent < QD; sent++) await send(sent);
  while (got < total) {
    const r = await c.reply();
    if (r.error !== 0) throw new Error(`request ${r.handle} failed with ${r.error}`);
    got++;
    if (sent < total) await send(sent++);
    if (got >= mark) {
      model.served.length = 0;
      samples.push(heapNow());
      mark += every;
    }
  }
  c.close();
  l.close();
  await l.done;
  await disk.close();
  Deno.removeSync(dir, { recursive: true });
  return { requests: got, samples };
}

if (import.meta.main) {
  if (!gc) throw new Error("run with --v8-flags=--expose-gc");
  const which = Deno.args[0], n = Number(Deno.args[1]);
  console.log(JSON.stringify(which === "disk" ? await diskRun(n) : await nbdRun(n)));
}

async function measure(which: string, requests: number): Promise<HeapRun> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", new URL(import.meta.url).pathname, which, String(requests)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  assert.equal(out.code, 0, dec.decode(out.stderr));
  return JSON.parse(dec.decode(out.stdout));
}

/**
 * Flat: after the first tenth (compiled code, pools, caches warm), the heap grows by less than `slack` bytes
 * over the rest of the run. A leak of even 4 bytes a request over 900k requests is over 3 MB.
 */
function assertFlat(r: HeapRun, slack: number, what: string): void {
  assert.ok(r.samples.length >= 10, `${what}: ${r.samples.length} samples`);
  const base = r.samples[1], growth = Math.max(...r.samples.slice(2)) - base;
  const mb = r.samples.map((s) => (s / 1e6).toFixed(2)).join(" ");
  assert.ok(growth < slack, `${what}: heap grew ${growth} bytes over ${r.requests} requests (MB: ${mb})`);
}

Deno.test("heap: flat over a million virtio-blk requests (QD32, zero-copy submit and poll)", async () => {
  const r = await measure("disk", 1_000_000);
  assert.ok(r.requests >= 1_000_000);
  assertFlat(r, 1 << 20, "disk");
});

Deno.test("heap: flat over 100,000 NBD requests (4 KiB reads and writes, 16 in flight)", async () => {
  const r = await measure("nbd", 100_000);
  assert.ok(r.requests >= 100_000);
  assertFlat(r, 1 << 20, "nbd");
});
