/** The xenstore target: the client against a daemon that answers wrongly, late or not at all. */
import { XenStore, XenStoreError, XS } from "../../drivers/xen/xenstore.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { bounded, classify, type Result, type Rng, Silent } from "./oracle.ts";

// ---------------------------------------------------------------- xenstore client

/** One xenstore client iteration against a hostile daemon. */
export async function xenstoreIteration(rng: Rng, steps: number): Promise<Result> {
  const server = new XenStoreServer();
  const { transport, conn } = server.connect(0);
  const xs = new XenStore(transport, { requestTimeoutMs: 100, maxQueuedEvents: 16 });
  let events = 0, broken = false, step = 0;
  let result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  const watches: AsyncIterableIterator<string>[] = [];
  const hdr = (type: number, req: number, len: number) => {
    const m = new Uint8Array(16 + Math.max(0, Math.min(len, 64)));
    const dv = new DataView(m.buffer);
    dv.setUint32(0, type, true);
    dv.setUint32(4, req, true);
    dv.setUint32(12, len, true);
    return m;
  };
  try {
    for (step = 0; step < steps; step++) {
      events++;
      const a = rng.int(0, 99);
      const path = `/local/k${rng.int(0, 9)}`;
      try {
        if (a < 30) {
          const v = String(rng.int(0, 1e6));
          await bounded(xs.write(path, v), 1000, "write");
          if (!broken && !conn.mute && server.get(path) !== v) {
            throw new Silent(`write of ${path} not stored`);
          }
        } else if (a < 55) {
          const v = await bounded(xs.tryRead(path), 1000, "read");
          if (!broken && !conn.mute && v !== (server.get(path) ?? null)) {
            throw new Silent(`read ${path} gave '${v}', the store has '${server.get(path)}'`);
          }
        } else if (a < 62) {
          await bounded(xs.transaction(async (tx) => await xs.write(path, "t", tx), 3), 2000, "transaction");
        } else if (a < 67) {
          watches.push(xs.watch("/local"));
        } else if (a < 70) {
          const w = watches.pop();
          if (w) await bounded(w.return!(), 1000, "unwatch");
        } else if (a < 73) {
          server.forceConflicts = rng.int(0, 5);
        } else if (a < 80) {
          conn.event(path, rng.pick(["bogus", "pvdrv-1", "pvdrv-999"]));
        } else if (a < 85) {
          conn.mute = rng.bool(0.3);
        } else if (a < 88) {
          broken = true;
          const k = rng.int(0, 4);
          if (k === 0) conn.raw(hdr(XS.READ, rng.int(0, 100), 3));
          else if (k === 1) conn.raw(hdr(rng.int(0, 30), 0, rng.pick([5000, 0xffffffff])));
          else if (k === 2) conn.raw(hdr(XS.WATCH_EVENT, 0, 4));
          else if (k === 3) conn.raw(new Uint8Array(rng.int(1, 30)).map(() => rng.int(0, 255)));
          else conn.raw(hdr(XS.ERROR, rng.int(1, 5), 0));
        } else {
          for (let i = 0; i < rng.int(1, 100); i++) server.set(`/local/w${rng.int(0, 300)}`, "v");
        }
      } catch (e) {
        if (e instanceof XenStoreError) {
          if (e.code === "EPROTO" || e.code === "EPIPE") broken = true;
          continue; // a refused or failed request is a clean answer
        }
        throw e;
      }
    }
    if (xs.droppedEvents < 0) throw new Silent("negative drop count");
  } catch (e) {
    result = classify(e, events, step);
  }
  try {
    for (const w of watches) await bounded(w.return!(), 1000, "unwatch");
    await bounded(xs.close(), 1000, "close");
  } catch (e) {
    if (result.outcome === "ok") result = classify(e, events, step);
  }
  result.events = events;
  return result;
}
