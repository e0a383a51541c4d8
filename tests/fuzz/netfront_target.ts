/** The netfront and xenbus targets: the frontend against a hostile netback, rings and xenstore. */
import { Netfront } from "../../drivers/xen/netfront.ts";
import { XenStore } from "../../drivers/xen/xenstore.ts";
import { MIN_TEST_FRAME } from "../../apps/frames.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import type { PacketPool } from "../../drivers/net/packet_pool.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { PacketBatch } from "../../drivers/net/packet_batch.ts";
import { ModelEvtchns, ModelGrants, NetbackModel } from "../models/xen.ts";
import { bounded, classify, Leak, type Result, type Rng, Silent } from "./oracle.ts";
import { frameBytes, Held, same } from "./held.ts";

// ---------------------------------------------------------------- netfront and xenbus

function xenLab(rng: Rng) {
  const server = new XenStoreServer();
  const grants = new ModelGrants(4096), evtchns = new ModelEvtchns();
  const back = new NetbackModel(server, grants, evtchns, {
    split: rng.bool(0.7),
    sg: rng.bool(0.8),
    maxQueues: rng.pick([1, 1, 2, 4]),
  });
  const { transport, conn } = server.connect(back.frontDomid);
  const xs = new XenStore(transport, { requestTimeoutMs: 300, maxQueuedEvents: 64 });
  return { server, grants, evtchns, back, xs, conn };
}

function ringPage(l: ReturnType<typeof xenLab>, which: "tx" | "rx"): DataView | null {
  const ref = Number(
    l.server.get(`${l.back.front}/${which}-ring-ref`) ??
      l.server.get(`${l.back.front}/queue-0/${which}-ring-ref`),
  );
  try {
    const p = l.grants.map(ref, l.back.backDomid);
    return new DataView(p.buffer, p.byteOffset, 4096);
  } catch {
    return null;
  }
}

/** One netfront (or, with `xenbus`, XenBus handshake) iteration against a hostile netback and xenstore. */
export async function netfrontIteration(rng: Rng, steps: number, xenbus: boolean): Promise<Result> {
  const l = xenLab(rng);
  const { server, back, xs, conn, grants, evtchns } = l;
  let events = 0;
  if (xenbus) {
    // XenBus keys the backend (and toolstack) control: garbage in, clean refusal out.
    for (let k = rng.int(0, 3); k > 0; k--) {
      events++;
      const key = rng.pick([
        `${back.back}/multi-queue-max-queues`,
        `${back.back}/feature-rx-copy`,
        `${back.back}/feature-sg`,
        `${back.back}/state`,
        `${back.front}/backend-id`,
        `${back.front}/mac`,
        `${back.front}/backend`,
      ]);
      server.set(
        key,
        rng.pick(["0", "1", "2", "4", "9", "-1", "65536", "x", "", "00:16:3e:zz:00:00", "/etc"]),
      );
    }
  }
  const mtu = rng.pick([1500, 1500, 9000]);
  let nf: Netfront;
  try {
    nf = await bounded(
      Netfront.open(xs, grants, evtchns, { timeoutMs: 300, queues: rng.int(1, 2), mtu }),
      5000,
      "open",
    );
  } catch (e) {
    await xs.close();
    if (grants.live !== 0 || evtchns.ports.size !== 0) {
      return classify(
        new Leak(`failed open left ${grants.live} grants, ${evtchns.ports.size} ports`),
        events,
        0,
      );
    }
    return classify(e, events + 1, 0);
  }
  const held = new Held();
  const batches = [new PacketBatch(1), new PacketBatch(rng.int(2, 64)), new PacketBatch(256)];
  const out: PacketBuffer[] = [];
  const expected: Uint8Array[] = [];
  let hostile = false, seq = 0, result: Result = { outcome: "ok", events: 0, event: 0, detail: "" }, step = 0;
  const rate = rng.pick([0.002, 0.01, 0.05, 0.15]);
  try {
    for (step = 0; step < steps; step++) {
      events++;
      const a = rng.next() < rate ? rng.int(25, 37) : rng.pick([rng.int(0, 24), rng.int(38, 99)]);
      if (a < 25) {
        const len = rng.int(MIN_TEST_FRAME, nf.maxFrame);
        const f = frameBytes(len, seq++);
        let ok = false;
        try {
          ok = back.deliver(f, 0, { offset: rng.bool(0.2) ? rng.int(0, 64) * 2 : 0 });
        } catch (e) {
          if (!hostile) throw e; // a backend fed garbage by the hostile steps may fail itself
        }
        if (ok) expected.push(f);
      } else if (a < 35 && (!xenbus || rng.bool(0.3))) {
        hostile = true;
        const rx = ringPage(l, "rx"), tx = ringPage(l, "tx");
        const k = rng.int(0, 5);
        try {
          if (k === 0) {
            back.rxResponse(
              0,
              rng.pick([0, 1, 255, 256, rng.int(0, 0xffff)]),
              rng.pick([0, 1, 4000, 4095, 0xffff]),
              rng.int(0, 15),
              rng.pick([-1, 0, 1, 14, 60, 4096, 0x7fff]),
            );
          } else if (k === 1) {
            back.txResponse(0, rng.pick([0, 1, 255, 256, rng.int(0, 0xffff)]), rng.pick([0, 1, -1, -2, 2]));
          } else if (k === 2) back.jumpRx(0, rng.pick([1, 2, 100, 0xffffffff, 0x80000000]));
          else if (k === 3) {
            for (let i = 0; i < rng.int(2, 40); i++) {
              back.rxResponse(0, i, 0, 4 | (rng.bool(0.2) ? 8 : 0), 100);
            }
          } else if (k === 4 && rx) rx.setUint8(rng.int(0, 4095), rng.int(0, 255));
          else if (tx) tx.setUint8(rng.int(8, 11), rng.int(0, 255)); // rsp_prod bytes
        } catch { /* the model has no rings right now (between connections) */ }
      } else if (a < 38) {
        hostile = true;
        const k = rng.int(0, 3);
        if (k === 0) conn.event(`${back.back}/state`, `bogus-${rng.int(0, 99)}`);
        else if (k === 1) {
          server.set(`${back.back}/state`, rng.pick(["1", "2", "3", "4", "5", "6", "7", "9", "x"]));
        } else if (k === 2 && rng.bool(0.2)) {
          conn.raw(new Uint8Array(rng.int(1, 40)).map(() => rng.int(0, 255)));
        } else conn.mute = rng.bool(0.3);
      } else if (a < 60) {
        const dropped0 = rxDropped(nf);
        // By buffer object or by index (a PacketBatch: one pool per batch, released whole or kept as objects).
        const batch = rng.bool(0.5) ? batches[rng.int(0, batches.length - 1)] : null;
        const n = batch ? nf.receiveInto(batch) : nf.receiveBatch(out, rng.int(1, 64));
        events += n;
        // A frame of more than one page needs a gather buffer; while the application holds every one, the frame
        // waits in the ring. An honest backend's frames all arrive, in order: a drop or any other difference is a
        // lost frame or silent corruption.
        const dropped = rxDropped(nf) - dropped0;
        if (dropped && !hostile) {
          throw new Silent(`the NIC dropped ${dropped} frame(s) an honest backend delivered`);
        }
        for (let i = 0; i < n; i++) {
          const b = batch ? batch.buffer(i) : out[i];
          if (batch && b.pool !== batch.pool) {
            throw new Silent("a batch's frames come from more than one pool");
          }
          held.accept(b, nf.maxFrame);
          if (hostile) continue; // bytes a hostile backend wrote are its own business
          const want = expected.shift();
          if (!want || !matches(b, want)) {
            throw new Silent("received frame differs from what the backend delivered");
          }
        }
        if (batch && rng.bool(0.5)) held.releaseBatch(nf, batch);
        else if (batch) batch.count = 0; // its frames stay held as objects
      } else if (a < 72) {
        held.release(nf, rng.int(0, held.list.length));
      } else if (a < 92) {
        const bufs: PacketBuffer[] = [];
        const n = held.fillTx(nf, bufs, rng.int(1, 32), rng, seq);
        seq += n;
        events += held.send(n, () => nf.sendBatch(bufs, n));
      } else if (a < 96) {
        events += nf.reclaimTx();
      } else {
        await bounded(new Promise((r) => setTimeout(r, 0)), 1000, "event loop");
      }
    }
  } catch (e) {
    if (!(e instanceof Error && /not connected|is closed/.test(e.message) && hostile)) {
      result = classify(e, events, step);
    } else result = { outcome: "clean-break", events, event: step, detail: (e as Error).message };
  }
  try {
    // The last connection's pools, taken before close lets go of them.
    type Pools = { txPool: PacketPool; rxPool: PacketPool; rxGather: PacketPool };
    const pools = (nf as unknown as { pairs: Pools[] }).pairs.flatMap((
      q,
    ) => [q.txPool, q.rxPool, q.rxGather]);
    await bounded(nf.close(), 5000, "shutdown");
    held.release(nf, held.list.length);
    for (const pool of pools) { // no buffer free twice, none lost from a free list
      const bad = pool.audit();
      if (bad) throw new Silent(bad);
    }
    await bounded(xs.close(), 2000, "xenstore close");
    if (grants.live !== 0 || evtchns.ports.size !== 0) {
      throw new Leak(`after shutdown: ${grants.live} grants, ${evtchns.ports.size} ports`);
    }
  } catch (e) {
    if (result.outcome === "ok" || result.outcome === "clean-break") result = classify(e, events, step);
  }
  result.events = events;
  return result;
}

/** Frames the NIC dropped (all queues). */
function rxDropped(nf: Netfront): number {
  return nf.stats().reduce((n, q) => n + q.rxDropped, 0);
}

function matches(b: PacketBuffer, want: Uint8Array): boolean {
  return b.length === want.length && same(b.data, want, want.length);
}
