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
import { BlockOp } from "../../drivers/block/disk.ts";
import { isPvdrvError } from "../../hal/errors.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { ModelEvtchns, ModelGrants } from "../models/xen.ts";
import { BlkbackModel } from "../models/blkback.ts";
import { classify, Leak, type Result, type Rng } from "./oracle.ts";
import { DiskTraffic } from "./disk_traffic.ts";

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
  const t = new DiskTraffic(disk, back.disk.length, rng);
  t.hostile = hostile;
  const serve = () => {
    if (!back.autoProcess) back.process(0);
  };
  let step = 0;
  const rate = rng.pick([0, 0.001, 0.005, 0.02]);
  let result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  try {
    for (step = 0; step < steps; step++) {
      events++;
      const a = rng.next() < rate ? rng.int(85, 99) : rng.int(0, 84);
      if (a < 50) t.readWrite(0, serve);
      else if (a < 58) t.other(0, [BlockOp.Flush, BlockOp.Discard]);
      else if (a < 80) {
        serve();
        t.complete(0);
      } else if (a < 85) {
        disk.checkHealth();
      } else {
        t.hostile = true;
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
    if (!t.hostile) t.drain(serve, back.disk);
  } catch (e) {
    result = classify(e, events + t.events, step);
    if (result.outcome === "other-exception" && (isPvdrvError(e, "ring") || isPvdrvError(e, "disk"))) {
      result = {
        outcome: "clean-break",
        events: events + t.events,
        event: step,
        detail: (e as Error).message,
      };
    }
  }
  t.releaseHeld();
  await disk.close();
  await xs.close();
  if (grants.live !== 0 && (result.outcome === "ok" || result.outcome === "clean-break")) {
    return classify(new Leak(`${grants.live} grants still live after close`), events + t.events, step);
  }
  return result;
}
