/**
 * The blkfront target: Xen blkfront against a blkback model that lies now and then in long valid traffic —
 * forged responses (ids out of range or not in flight, wrong operations, statuses outside blkif.h), rsp_prod
 * jumps, event storms, garbage in its xenstore keys at the handshake, restarts. The oracle: with an honest
 * backend every read returns what was written and the backend's disk holds it; with a hostile one the ring
 * breaks with a clear error; either way close ends every grant.
 */
import { Blkfront } from "../../drivers/xen/blkfront.ts";
import { BLKIF_OP } from "../../drivers/xen/blkif.ts";
import { XenStore } from "../../drivers/xen/xenstore.ts";
import {
  type BlockBuffer,
  BlockOp,
  BlockRequest,
  BlockStatus,
  Completions,
} from "../../drivers/block/disk.ts";
import { isPvdrvError } from "../../hal/errors.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { ModelEvtchns, ModelGrants } from "../models/xen.ts";
import { BlkbackModel } from "../models/blkback.ts";
import { classify, Leak, type Result, type Rng, Silent } from "./oracle.ts";

interface Pending {
  op: number;
  off: number;
  len: number;
  bufs: BlockBuffer[];
}

/** One blkfront iteration: a fresh xenstore, blkback model and frontend, `steps` events. */
export async function blkfrontIteration(rng: Rng, steps: number): Promise<Result> {
  const server = new XenStoreServer();
  const grants = new ModelGrants(4096), evtchns = new ModelEvtchns();
  const back = new BlkbackModel(server, grants, evtchns, {
    sectors: rng.pick([64, 1024, 8192]),
    sectorSize: rng.pick([512, 512, 4096]),
    discard: rng.bool(0.5),
    barrier: rng.bool(0.3),
    flush: rng.bool(0.8),
    maxIndirectSegments: rng.pick([0, 32, 256]),
    maxRingPageOrder: rng.pick([0, 1, 4]),
  });
  const xs = new XenStore(server.connect(back.frontDomid).transport, { requestTimeoutMs: 300 });
  let events = 0;
  let hostile = false;
  if (rng.bool(0.2)) {
    // Keys the backend controls, garbage at the handshake: a clean refusal, nothing granted.
    hostile = true;
    events++;
    server.set(
      `${back.back}/${
        rng.pick(["feature-max-indirect-segments", "max-ring-page-order", "multi-queue-max-queues"])
      }`,
      rng.pick(["-1", "x", "", "99999999999999999", "0", "65536"]),
    );
  }
  let disk: Blkfront;
  try {
    disk = await Blkfront.open(xs, grants, evtchns, {
      vbd: 51712,
      timeoutMs: 500,
      queueDepth: rng.pick([1, 8, 32, 64]),
      maxSegments: rng.pick([1, 11, 32]),
    });
  } catch (e) {
    await xs.close();
    if (grants.live !== 0) return classify(new Leak(`a failed open left ${grants.live} grants`), events, 0);
    if (hostile && (isPvdrvError(e) || e instanceof RangeError)) {
      return { outcome: "clean-break", events: events + 1, event: 0, detail: (e as Error).message };
    }
    return classify(e, events + 1, 0);
  }
  back.autoProcess = rng.bool(0.7);
  const shadow = new Uint8Array(back.disk.length);
  const pending = new Map<number, Pending>();
  const done = new Completions(64);
  let tag = 0, step = 0;
  const rate = rng.pick([0, 0.001, 0.005, 0.02]);
  let result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  const overlaps = (off: number, len: number) =>
    [...pending.values()].some((p) => off < p.off + p.len && p.off < off + len);
  const complete = () => {
    const n = disk.poll(done, done.n);
    events += n;
    for (let i = 0; i < n; i++) {
      const p = pending.get(done.tags[i]);
      if (!p) throw new Silent(`completion for tag ${done.tags[i]}, never submitted`);
      pending.delete(done.tags[i]);
      const st = done.status[i];
      if (!hostile && st !== BlockStatus.Ok) throw new Silent(`an honest backend's request ended with ${st}`);
      if (st === BlockStatus.Ok && p.op === BlockOp.Read && !hostile) {
        let o = 0;
        for (const b of p.bufs) {
          for (let k = 0; k < b.length; k++) {
            if (b.data[k] !== shadow[p.off + o + k]) {
              throw new Silent(`read at ${p.off} returned a wrong byte`);
            }
          }
          o += b.length;
        }
      }
      disk.release(p.bufs, p.bufs.length);
    }
  };
  try {
    for (step = 0; step < steps; step++) {
      events++;
      const info = disk.info, lbs = info.logicalBlockSize;
      const a = rng.next() < rate ? rng.int(85, 99) : rng.int(0, 84);
      if (a < 50) {
        const blocks = Math.floor(info.capacity / lbs);
        const n = rng.int(1, Math.max(1, Math.min(blocks, info.maxTransferBytes / lbs, 64)));
        const off = rng.int(0, blocks - n) * lbs, len = n * lbs;
        if (overlaps(off, len)) continue;
        const need = Math.ceil(len / info.maxSegmentBytes), bufs: BlockBuffer[] = [];
        if (disk.allocBuffers(bufs, need) < need) {
          disk.release(bufs, bufs.length);
          if (!back.autoProcess) back.process(0);
          complete();
          continue;
        }
        for (let k = 0; k < need; k++) {
          bufs[k].length = Math.min(info.maxSegmentBytes, len - k * info.maxSegmentBytes);
        }
        const write = rng.bool(0.5) && !info.readOnly;
        const data = write ? new Uint8Array(len) : null;
        if (data) {
          for (let k = 0; k < len; k++) data[k] = rng.int(0, 255);
          let o = 0;
          for (const b of bufs) b.data.set(data.subarray(o, o + b.length)), o += b.length;
        }
        const r = new BlockRequest().io(write ? BlockOp.Write : BlockOp.Read, off, bufs, need, ++tag);
        r.fua = rng.bool(0.1);
        if (disk.submit([r], 1) === 0) {
          disk.release(bufs, need);
          continue;
        }
        if (data) shadow.set(data, off);
        pending.set(tag, { op: r.op, off, len, bufs });
      } else if (a < 58) {
        const r = new BlockRequest();
        r.op = rng.bool(0.5) || !info.discard ? BlockOp.Flush : BlockOp.Discard;
        r.tag = ++tag;
        if (r.op === BlockOp.Discard) {
          const blocks = Math.floor(info.capacity / info.discardAlignment);
          if (blocks < 1) continue;
          const n = rng.int(1, Math.min(blocks, 8));
          r.offset = rng.int(0, blocks - n) * info.discardAlignment;
          r.length = n * info.discardAlignment;
          if (overlaps(r.offset, r.length)) continue;
        }
        if (disk.submit([r], 1) === 0) continue;
        if (r.op === BlockOp.Discard) shadow.fill(0, r.offset, r.offset + r.length);
        pending.set(tag, { op: r.op, off: r.offset, len: r.op === BlockOp.Flush ? 0 : r.length, bufs: [] });
      } else if (a < 80) {
        if (!back.autoProcess) back.process(0);
        complete();
      } else if (a < 85) {
        disk.checkHealth();
      } else {
        hostile = true;
        const k = rng.int(0, 5);
        if (k === 0) back.statusFor = rng.bool(0.5) ? () => rng.pick([-3, 1, 7, 0x7fff, -0x8000]) : null;
        else if (k === 1) {
          back.opFor = rng.bool(0.5) ? () => rng.pick([BLKIF_OP.READ, BLKIF_OP.WRITE, 9, 255]) : null;
        } else if (k === 2) back.respond(0, rng.pick([0, 1, 5, 63, 64, 512, 2 ** 40]), rng.int(0, 6), 0);
        else if (k === 3) back.jumpRsp(0, rng.pick([1, 2, 100, 0x7fffffff]));
        else if (k === 4) back.storm(0, rng.int(1, 50));
        else back.autoProcess = !back.autoProcess;
      }
    }
    if (!hostile) {
      for (let round = 0; round < 4 && pending.size > 0; round++) {
        if (!back.autoProcess) back.process(0);
        complete();
      }
      if (pending.size !== 0) {
        throw new Silent(`${pending.size} requests never completed on an honest backend`);
      }
      for (let i = 0; i < shadow.length; i++) {
        if (back.disk[i] !== shadow[i]) throw new Silent(`the backend holds a wrong byte at ${i}`);
      }
    }
  } catch (e) {
    result = classify(e, events, step);
    if (result.outcome === "other-exception" && (isPvdrvError(e, "ring") || isPvdrvError(e, "disk"))) {
      result = { outcome: "clean-break", events, event: step, detail: (e as Error).message };
    }
  }
  for (const p of pending.values()) {
    const own = p.bufs.filter((b) => b.pool.owner(b) === "app");
    if (own.length) disk.release(own, own.length);
  }
  await disk.close();
  await xs.close();
  if (grants.live !== 0 && result.outcome !== "other-exception") {
    return classify(new Leak(`${grants.live} grants still live after close`), events, step);
  }
  return result;
}
