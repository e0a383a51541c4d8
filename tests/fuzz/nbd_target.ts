/**
 * The `nbd` target: pvdrv's NBD export against a hostile client, over an in-memory connection. Each iteration
 * negotiates (with garbage options, wrong lengths and names mixed in), then sends long valid traffic — reads,
 * writes with and without FUA, flushes, trims, write-zeroes — with hostile requests among it: unknown commands
 * and flags, offsets and lengths past the end or unaligned, zero and huge lengths; sometimes a bad magic or an
 * oversized write, which must end the session and nothing else. The oracle: every valid request is answered
 * once, without error, and reads return what was written; every hostile one gets an error; the server never
 * throws; after the session and the disk's close nothing stays allocated.
 */
import { VirtioBlk } from "../../drivers/virtio/blk.ts";
import { NbdExport } from "../../apps/nbd/server.ts";
import { NBD_CMD, NBD_CMD_FLAG, NBD_INFO, NBD_OPT, NBD_REP } from "../../apps/nbd/wire.ts";
import { VirtioBlkModel } from "../models/virtio_blk_device.ts";
import { NbdClient } from "../models/nbd_client.ts";
import { memoryConnPair } from "../models/memory_conn.ts";
import { bounded, classify, finishIteration, type Result, type Rng, Silent } from "./oracle.ts";

/** One nbd iteration. */
export async function nbdIteration(rng: Rng, steps: number): Promise<Result> {
  const model = new VirtioBlkModel({ sectors: rng.pick([64, 2048]), blkSize: rng.pick([512, 4096]) });
  const disk = VirtioBlk.openPci(model.pci(), {
    bufferBytes: rng.pick([4096, 65536]),
    maxSegments: rng.pick([1, 8]),
    queueDepth: rng.pick([2, 32]),
  });
  const readOnly = rng.bool(0.1);
  const exp = new NbdExport(disk, { name: "x", readOnly });
  const [server, clientEnd] = memoryConnPair();
  const session = exp.serve(server);
  const c = new NbdClient(clientEnd);
  const size = disk.info.capacity, block = disk.info.logicalBlockSize;
  const shadow = new Uint8Array(size);
  // TRIM is advisory (only whole discard units inside its range are discarded): its range reads as anything
  // until written again.
  const known = new Uint8Array(size).fill(1);
  let events = 0, step = 0, ended = false;
  let result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  try {
    await bounded(c.greet(), 2000, "greeting");
    // Negotiation: garbage options first, each must get an error reply and leave the handshake usable.
    for (let k = rng.int(0, 4); k > 0; k--, events++) {
      const opt = rng.pick([0, 4, 5, 8, 9, 10, 11, 0xffff, NBD_OPT.INFO, NBD_OPT.GO, NBD_OPT.LIST]);
      const data = rng.bool(0.5)
        ? NbdClient.infoData(rng.pick(["", "y", "x\u0000"]), [rng.int(0, 9)])
        : new Uint8Array(rng.int(0, 40)).map(() => rng.int(0, 255));
      await c.option(opt, data);
      const replies = await bounded(c.optionReplies(), 2000, `option ${opt}`);
      const last = replies.at(-1)!;
      // A well-formed INFO/GO for "x" succeeds; everything else must be refused.
      const ok = last.type === NBD_REP.ACK;
      if (ok && opt === NBD_OPT.GO) throw new Silent("GO for a wrong export went through");
      if (!ok && last.type < 0x80000000) throw new Silent(`option ${opt} ended with reply ${last.type}`);
    }
    await c.option(NBD_OPT.GO, NbdClient.infoData("x", [NBD_INFO.BLOCK_SIZE]));
    const go = await bounded(c.optionReplies(), 2000, "GO");
    if (go.at(-1)!.type !== NBD_REP.ACK) throw new Silent("GO for the export failed");
    const expect = new Map<number, { read?: [number, number]; hostile: boolean }>();
    let handle = 0;
    const rate = rng.pick([0, 0.02, 0.1, 0.3]);
    for (step = 0; step < steps && !ended; step++) {
      events++;
      const h = ++handle;
      if (rng.next() < rate) {
        const k = rng.int(0, 9);
        if (k === 0 && rng.bool(0.2)) {
          // A bad magic: the session ends.
          await c.write(new Uint8Array(28).map(() => rng.int(0, 255)));
          ended = true;
          break;
        }
        const type = rng.pick([
          NBD_CMD.READ,
          NBD_CMD.WRITE,
          NBD_CMD.TRIM,
          NBD_CMD.WRITE_ZEROES,
          NBD_CMD.FLUSH,
          5,
          7,
          8,
          99,
        ]);
        let off = rng.pick([size, size - block, 1, 2 ** 60, rng.int(0, size)]);
        let len = rng.pick([0, 1, block - 1, 2 * block, 64 << 20, 0xffffffff]);
        let flags = rng.pick([0, 0x80, NBD_CMD_FLAG.DF, NBD_CMD_FLAG.FAST_ZERO, 0xffff]);
        if (type === NBD_CMD.FLUSH) flags = flags || 1, off = 0, len = len || 1;
        if (type === NBD_CMD.WRITE && len > (32 << 20)) {
          await c.request(type, h, off, len);
          ended = true; // an oversized write ends the session
          break;
        }
        // Make sure it really is invalid: flip to a case the protocol forbids if the draw happened to be valid.
        const allowed = type === NBD_CMD.READ
          ? NBD_CMD_FLAG.DF
          : type === NBD_CMD.WRITE || type === NBD_CMD.TRIM
          ? NBD_CMD_FLAG.FUA
          : type === NBD_CMD.WRITE_ZEROES
          ? NBD_CMD_FLAG.FUA | NBD_CMD_FLAG.NO_HOLE | NBD_CMD_FLAG.FAST_ZERO
          : 0;
        const valid = [NBD_CMD.READ, NBD_CMD.WRITE, NBD_CMD.TRIM, NBD_CMD.WRITE_ZEROES].includes(type as 0) &&
          (flags & ~allowed) === 0 && len > 0 && len % block === 0 && off % block === 0 &&
          off + len <= size &&
          !(readOnly && type !== NBD_CMD.READ) && len <= (32 << 20);
        if (valid) off = size, len = block;
        await c.request(type, h, off, len, {
          flags,
          payload: type === NBD_CMD.WRITE ? new Uint8Array(len) : undefined,
        });
        expect.set(h, { hostile: true });
      } else {
        const blocks = size / block,
          n = rng.int(1, Math.min(blocks, 32)),
          off = rng.int(0, blocks - n) * block;
        const len = n * block;
        const k = rng.int(0, 9);
        if (k < 4 || readOnly) {
          await c.request(NBD_CMD.READ, h, off, len);
          expect.set(h, { read: [off, len], hostile: false });
        } else if (k < 8) {
          const data = new Uint8Array(len).map(() => rng.int(0, 255));
          await c.request(NBD_CMD.WRITE, h, off, len, {
            payload: data,
            flags: rng.bool(0.2) ? NBD_CMD_FLAG.FUA : 0,
          });
          shadow.set(data, off);
          known.fill(1, off, off + len);
          expect.set(h, { hostile: false });
        } else {
          const type = rng.pick([NBD_CMD.FLUSH, NBD_CMD.TRIM, NBD_CMD.WRITE_ZEROES]);
          await c.request(type, h, type === NBD_CMD.FLUSH ? 0 : off, type === NBD_CMD.FLUSH ? 0 : len);
          if (type === NBD_CMD.WRITE_ZEROES) shadow.fill(0, off, off + len), known.fill(1, off, off + len);
          else if (type === NBD_CMD.TRIM) known.fill(0, off, off + len);
          expect.set(h, { hostile: false });
        }
      }
      // Answers: before the next request, so reads see every earlier write (requests in flight may reorder).
      while (expect.size > 0) {
        const r = await bounded(c.reply(), 5000, `reply to request ${step}`);
        const e = expect.get(r.handle);
        if (!e) throw new Silent(`a reply for handle ${r.handle}, which is not outstanding`);
        expect.delete(r.handle);
        if (e.hostile && r.error === 0) {
          throw new Silent(`hostile request ${r.handle} was answered without error`);
        }
        if (!e.hostile && r.error !== 0) throw new Silent(`valid request ${r.handle} got error ${r.error}`);
        if (e.read) {
          const [off, len] = e.read;
          for (let i = 0; i < len; i++) {
            if (known[off + i] && r.data![i] !== shadow[off + i]) {
              throw new Silent(`read at ${off} returned a wrong byte`);
            }
          }
        }
      }
    }
    if (!ended) await c.request(NBD_CMD.DISC, ++handle, 0, 0);
    if (!await bounded(c.closed(), 5000, "the session's end")) throw new Silent("the session did not end");
    const st = await bounded(session, 5000, "serve() returning");
    if (ended && !st.ended) throw new Silent("a protocol violation did not end the session with a reason");
  } catch (e) {
    result = classify(e, events, step);
  }
  return await finishIteration(result, events, step, model.dma, async () => {
    c.close();
    await bounded(session, 5000, "serve() after the client closed");
    await disk.close();
  });
}
