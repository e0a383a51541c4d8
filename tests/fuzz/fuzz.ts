/**
 * `deno task fuzz [--target virtio|virtio-config|virtio-race|netfront|xenbus|xenstore|net|all] [--seconds N] [--seed S]
 * [--iteration I] [--json FILE]`: the real driver code against the in-process models made hostile.
 *
 * Each iteration builds a fresh model and driver from a seeded PRNG, then interleaves valid traffic with hostile
 * events (forged used/response entries, index jumps both ways, random ring bytes, bogus num_buffers, lengths,
 * offsets and statuses, endless more_data chains, config-space and capability mutations, queue counts and sizes,
 * malformed or silent xenstore replies, wrong req_id, unknown watch tokens, backend state flapping). An oracle
 * knows what was valid, so every outcome is classified:
 *
 * - ok / clean-break: no error, or the driver refused with one of its own error classes and a message;
 * - other-exception: anything else thrown (a TypeError, a model fault from a bad address the driver gave);
 * - hang: an operation that did not finish within its bound;
 * - silent: the driver accepted what it should not (a frame that differs from what a well-behaved device sent,
 *   a buffer handed out twice, a valid frame dropped uncounted, a length outside the negotiated bounds);
 * - leak: after close (and the application's release of every buffer), DMA regions, grants or ports remain;
 * - memory: the heap grew by more than 25% between the first and last tenth of the run (after GC).
 *
 * Anything but ok and clean-break prints the target, seed and iteration (and the event index) that reproduce it,
 * and the task exits 1.
 * @module
 */
import { parseArgs } from "parse-args";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { Netfront } from "../../drivers/xen/netfront.ts";
import { XenStore, XenStoreError, XS } from "../../drivers/xen/xenstore.ts";
import { MIN_TEST_FRAME, writeFrame } from "../../apps/frames.ts";
import type { Nic, PacketBuffer } from "../../drivers/net/nic.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { ModelEvtchns, ModelGrants, NetbackModel } from "../models/xen.ts";
import { netIteration } from "./net_target.ts";
import {
  BAD,
  bounded,
  classify,
  Leak,
  type Outcome,
  type Result,
  Rng,
  Silent,
  type TargetReport,
} from "./oracle.ts";

export { type Outcome, Rng, type TargetReport } from "./oracle.ts";

const DST = new Uint8Array([0x52, 0x54, 0, 0, 0, 2]);
const SRC = new Uint8Array([0x52, 0x54, 0, 0, 0, 3]);

function frameBytes(len: number, seq: number): Uint8Array {
  const f = new Uint8Array(len);
  writeFrame(f, len, seq, DST, SRC);
  return f;
}

function same(a: Uint8Array, b: Uint8Array, len: number): boolean {
  if (a.length < len || b.length < len) return false;
  for (let i = 0; i < len; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Buffers the fuzzed application holds, in order; received ones are checked as they are handed out. */
class Held {
  /** Every held buffer (received and allocated for TX). */
  readonly list: PacketBuffer[] = [];
  readonly #received = new Set<PacketBuffer>();
  /** A frame `receiveBatch` handed out: never one already held, never a length outside 14..maxFrame. */
  accept(b: PacketBuffer, maxFrame: number): void {
    if (this.#received.has(b)) throw new Silent(`buffer ${b.pool.name}/${b.index} handed out twice`);
    if (b.length < 14 || b.length > maxFrame) throw new Silent(`frame length ${b.length} handed out`);
    this.#received.add(b);
    this.list.push(b);
  }
  /** Give the first `k` held buffers back to `nic`. */
  release(nic: Nic, k: number): void {
    const give = this.list.splice(0, k);
    for (const b of give) this.#received.delete(b);
    nic.release(give, give.length);
  }
  /** Allocate up to `max` TX buffers from `nic` and fill them with frames numbered from `seq`; returns how many. */
  fillTx(nic: Nic, bufs: PacketBuffer[], max: number, rng: Rng, seq: number): number {
    const n = nic.allocTx(bufs, max);
    for (let i = 0; i < n; i++) {
      const len = rng.int(MIN_TEST_FRAME, nic.maxFrame);
      writeFrame(bufs[i].data, len, seq + i, DST, nic.mac);
      bufs[i].length = len;
      this.list.push(bufs[i]); // the application's until the driver takes it
    }
    return n;
  }
  /**
   * Send the last `n` held buffers: those the driver took leave the list. A send that throws (a queue that broke
   * under it) may have taken some: the pool says which are still the application's.
   */
  send(n: number, send: () => number): number {
    const batch = this.list.splice(this.list.length - n, n);
    try {
      const sent = send();
      for (let i = sent; i < n; i++) this.list.push(batch[i]);
      return sent;
    } catch (e) {
      for (const b of batch) if (b.pool.owner(b) === "app") this.list.push(b);
      throw e;
    }
  }
}

// ---------------------------------------------------------------- virtio: rings made hostile

const DEFAULT_FEATURES = F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | NET_F.MAC | NET_F.STATUS |
  NET_F.MRG_RXBUF | NET_F.CSUM | NET_F.GUEST_CSUM | NET_F.CTRL_VQ | NET_F.CTRL_RX | NET_F.MQ | NET_F.MTU |
  NET_F.CTRL_MAC_ADDR;
const OPTIONAL = [F.RING_EVENT_IDX, NET_F.MRG_RXBUF, NET_F.CSUM, NET_F.GUEST_CSUM, NET_F.CTRL_VQ, NET_F.MQ];

/** Write a random used-ring byte, index or entry of queue `qi`. */
function corruptUsed(m: VirtioNetModel, rng: Rng, qi: number): void {
  const q = m.queue(qi);
  const u = m.dma.resolve(q.device, 4 + 8 * q.size);
  const what = rng.int(0, 3);
  if (what === 0) u[rng.int(0, u.length - 1)] = rng.int(0, 255);
  else if (what === 1) m.jumpUsedIdx(qi, rng.pick([1, 2, rng.int(3, 70000), 0xffff, 0x8000]));
  else if (what === 2) {
    m.forgeUsed(qi, rng.pick([0, 1, q.size - 1, q.size, q.size + 1, rng.int(0, 0xffff)]), rng.int(0, 5000));
  } else {m.forgeUsed(
      qi,
      rng.int(0, q.size - 1),
      rng.pick([0, 1, 13, 14, 60, 1514, 2036, 2048, 2049, 0xffffffff]),
    );}
}

function virtioIteration(rng: Rng, steps: number, mutateConfig: boolean): Result {
  const mtu = rng.pick([1500, 68, 1400, 9000, 576]);
  let features = DEFAULT_FEATURES;
  for (const f of OPTIONAL) if (rng.bool(0.2)) features &= ~f;
  const maxPairs = rng.int(1, 4);
  const model = new VirtioNetModel({
    features,
    maxPairs,
    mtu,
    autoProcess: rng.bool(0.7),
    queueMax: rng.pick([8, 64, 256]),
    ...(mutateConfig
      ? {
        configMaxPairs: rng.pick([maxPairs, 0, 1, maxPairs + 1, 0x7fff, 0x8000, 0xffff]),
        numQueues: rng.bool(0.5) ? undefined : rng.pick([0, 1, 2, 3, 2 * maxPairs, 2 * maxPairs + 1, 0xffff]),
        queueSizeOf: rng.bool(0.6) ? undefined : (() => {
          const bad = rng.int(0, 2 * maxPairs), v = rng.pick([0, 1, 3, 100, 0xffff, 32768]);
          return (q: number) => (q === bad ? v : 256);
        })(),
        notifyMultiplier: rng.pick([4, 0, 2, 1, 3, 6, 0x10000, 0xffffffff]),
      }
      : {}),
  });
  let events = 0;
  if (mutateConfig) {
    // Capability and header bytes: pointers, lengths, BAR numbers, offsets.
    const v = model.config.view;
    for (let k = rng.int(0, 4); k > 0; k--) {
      events++;
      const at = rng.bool(0.8) ? rng.int(0x34, 0x83) : rng.int(0, 0x3f);
      v.setUint8(at, rng.pick([0, 0xff, 0x40, 0x44, 0xfc, rng.int(0, 255)]));
    }
  }
  let nic: VirtioNet;
  try {
    nic = VirtioNet.openPci(model.pci(), {
      queues: rng.int(1, 2),
      disable: rng.bool(0.2) ? rng.pick(OPTIONAL) : 0n,
      promiscuous: rng.bool(0.2),
      queueSize: rng.pick([undefined, 2, 16, 4096]),
    });
  } catch (e) {
    if (model.dma.live !== 0) {
      return classify(new Leak(`failed open left ${model.dma.live} DMA regions`), events, 0);
    }
    return classify(e, events + 1, 0);
  }
  const expectedRx: Uint8Array[] = [];
  const sentByUs: Uint8Array[] = [];
  const held = new Held();
  const out: PacketBuffer[] = [];
  let hostileRx = false, hostileTx = false, seq = 0, received = 0, delivered = 0;
  // How hostile this device is: from an occasional lie in long valid traffic to mostly lies.
  const rate = rng.pick([0.002, 0.01, 0.05, 0.15]);
  let result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  let step = 0;
  try {
    for (step = 0; step < steps; step++) {
      events++;
      const hostile = rng.next() < rate;
      const a = hostile ? rng.int(25, 39) : rng.pick([rng.int(0, 24), rng.int(40, 99)]);
      if (a < 25) {
        const len = rng.int(MIN_TEST_FRAME, Math.min(nic.maxFrame, 2036));
        const f = frameBytes(len, seq++);
        if (model.deliver(f, 0)) {
          delivered++;
          if (len >= 14 && len <= nic.maxFrame) expectedRx.push(f);
        }
      } else if (a < 33) {
        hostileRx = true;
        const k = rng.int(0, 3);
        if (k === 0) corruptUsed(model, rng, 0);
        else if (k === 1) {
          model.deliver(frameBytes(60, seq++), 0, { numBuffers: rng.pick([0, 2, 3, 255, 65535]) });
        } else if (k === 2) {
          model.deliver(frameBytes(60, seq++), 0, { usedLen: rng.pick([0, 11, 13, 4096, 65536]) });
        } else model.deliver(frameBytes(rng.int(MIN_TEST_FRAME, 2000), seq++), 0, { flags: rng.int(0, 255) });
      } else if (a < 40) {
        hostileTx = true;
        corruptUsed(model, rng, 1);
      } else if (a < 62) {
        const n = nic.receiveBatch(out, rng.int(1, 64));
        events += n;
        for (let i = 0; i < n; i++) {
          const b = out[i];
          held.accept(b, nic.maxFrame);
          if ((b.flags & ~3) !== 0) throw new Silent(`undefined flags 0x${b.flags.toString(16)} handed out`);
          received++;
          if (!hostileRx) {
            const want = expectedRx.shift();
            if (!want || b.length !== want.length || !same(b.data, want, want.length)) {
              throw new Silent(`received frame ${received} differs from what the device delivered`);
            }
          }
        }
      } else if (a < 75) {
        held.release(nic, rng.int(0, held.list.length));
      } else if (a < 92) {
        const bufs: PacketBuffer[] = [];
        const n = held.fillTx(nic, bufs, rng.int(1, 32), rng, seq);
        seq += n;
        const sent = held.send(n, () => nic.sendBatch(bufs, n));
        events += sent;
        for (let i = 0; i < sent; i++) sentByUs.push(bufs[i].data.slice(0, bufs[i].length));
      } else if (a < 97) {
        model.process(1);
        events += nic.reclaimTx();
      } else {
        nic.checkHealth();
      }
    }
    // The oracle's end-of-run checks for a device that never misbehaved on that side.
    nic.reclaimTx();
    if (!hostileTx && model.autoProcess) {
      const got = model.sent.flat();
      if (got.length !== sentByUs.length) {
        throw new Silent(`the device got ${got.length} frames, the driver accepted ${sentByUs.length}`);
      }
      for (let i = 0; i < got.length; i++) {
        if (!same(got[i], sentByUs[i], sentByUs[i].length)) {
          throw new Silent(`TX frame ${i} differs on the device`);
        }
      }
    }
    if (!hostileRx) {
      const st = nic.stats()[0];
      if (delivered !== received + st.rxDropped + expectedRx.length) {
        throw new Silent(
          `delivered ${delivered}, received ${received}, dropped ${st.rxDropped}, pending ${expectedRx.length}`,
        );
      }
    }
  } catch (e) {
    result = classify(e, events, step);
  }
  try {
    nic.close();
    held.release(nic, held.list.length);
    if (model.dma.live !== 0 || model.dma.kept !== 0) {
      throw new Leak(`after close: ${model.dma.live} DMA regions live, ${model.dma.kept} kept`);
    }
  } catch (e) {
    if (result.outcome === "ok" || result.outcome === "clean-break") result = classify(e, events, step);
  }
  result.events = events;
  return result;
}

// ---------------------------------------------------------------- virtio-race: a Worker flips ring bytes

/** The driver polls while a Worker rewrites the RX used ring underneath it: values change between two reads. */
async function raceIteration(rng: Rng, steps: number): Promise<Result> {
  const model = new VirtioNetModel({ sharedDma: true, queueMax: rng.pick([16, 256]) });
  const nic = VirtioNet.openPci(model.pci());
  const q = model.queue(0);
  const used = model.dma.resolve(q.device, 4 + 8 * q.size);
  const w = new Worker(new URL("./flipper.ts", import.meta.url).href, { type: "module" });
  const msgs: unknown[] = [];
  let wake: (() => void) | null = null;
  w.onmessage = (e) => {
    msgs.push(e.data);
    wake?.();
  };
  const next = () =>
    msgs.length ? Promise.resolve(msgs.shift()) : new Promise((r) => wake = () => r(msgs.shift()));
  w.postMessage({
    buf: used.buffer,
    offset: used.byteOffset,
    length: used.length,
    seed: rng.int(1, 2 ** 31),
  });
  let events = 0, step = 0, result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  const held = new Held(), out: PacketBuffer[] = [];
  try {
    await bounded(next(), 5000, "worker start");
    for (step = 0; step < steps; step++) {
      events++;
      if (rng.bool(0.5)) model.deliver(frameBytes(rng.int(MIN_TEST_FRAME, 1514), step));
      const n = nic.receiveBatch(out, 64);
      events += n;
      for (let i = 0; i < n; i++) held.accept(out[i], nic.maxFrame);
      if (held.list.length > 32) held.release(nic, held.list.length);
    }
  } catch (e) {
    result = classify(e, events, step);
  }
  try {
    w.postMessage("stop");
    const flips = await bounded(next(), 5000, "worker stop");
    events += typeof flips === "number" ? flips : 0;
  } catch (e) {
    if (result.outcome === "ok" || result.outcome === "clean-break") result = classify(e, events, step);
  } finally {
    w.terminate();
  }
  try {
    nic.close();
    held.release(nic, held.list.length);
    if (model.dma.live !== 0 || model.dma.kept !== 0) {
      throw new Leak(`after close: ${model.dma.live} live, ${model.dma.kept} kept`);
    }
  } catch (e) {
    if (result.outcome === "ok" || result.outcome === "clean-break") result = classify(e, events, step);
  }
  result.events = events;
  return result;
}

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

async function netfrontIteration(rng: Rng, steps: number, xenbus: boolean): Promise<Result> {
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
        const n = nf.receiveBatch(out, rng.int(1, 64));
        events += n;
        for (let i = 0; i < n; i++) {
          const b = out[i];
          held.accept(b, nf.maxFrame);
          if (hostile) continue; // bytes a hostile backend wrote are its own business
          const want = expected.shift();
          if (!want || b.length !== want.length || !same(b.data, want, want.length)) {
            throw new Silent("received frame differs from what the backend delivered");
          }
        }
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
    await bounded(nf.close(), 5000, "shutdown");
    held.release(nf, held.list.length);
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

// ---------------------------------------------------------------- xenstore client

async function xenstoreIteration(rng: Rng, steps: number): Promise<Result> {
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

// ---------------------------------------------------------------- driver

const TARGETS: Record<string, { steps: number; run: (rng: Rng, steps: number) => Result | Promise<Result> }> =
  {
    virtio: { steps: 3000, run: (r, s) => virtioIteration(r, s, false) },
    "virtio-config": { steps: 40, run: (r, s) => virtioIteration(r, s, true) },
    "virtio-race": { steps: 20000, run: (r, s) => raceIteration(r, s) },
    netfront: { steps: 2000, run: (r, s) => netfrontIteration(r, s, false) },
    xenbus: { steps: 60, run: (r, s) => netfrontIteration(r, s, true) },
    xenstore: { steps: 60, run: (r, s) => xenstoreIteration(r, s) },
    net: { steps: 300, run: netIteration },
  };

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** Run `target` for `seconds` (or the one `iteration`) from `seed`. */
export async function fuzzTarget(
  target: string,
  seconds: number,
  seed: number,
  iteration?: number,
): Promise<TargetReport> {
  const t = TARGETS[target];
  const counts: Record<Outcome, number> = {
    ok: 0,
    "clean-break": 0,
    "other-exception": 0,
    hang: 0,
    silent: 0,
    leak: 0,
    memory: 0,
  };
  const failures: TargetReport["failures"] = [];
  const t0 = performance.now(), end = t0 + seconds * 1000;
  let it = iteration ?? 0, events = 0, heapEarly = 0, heapLate = 0;
  while (iteration !== undefined ? it === iteration : performance.now() < end) {
    const r = await t.run(new Rng((seed * 0x9e3779b1 + it) >>> 0), t.steps);
    counts[r.outcome]++;
    events += r.events;
    if (BAD.includes(r.outcome) && failures.length < 5) {
      failures.push({ outcome: r.outcome, seed, iteration: it, event: r.event, detail: r.detail });
    }
    it++;
    const frac = (performance.now() - t0) / (seconds * 1000);
    if (iteration === undefined && it % 50 === 0) {
      if (!heapEarly && frac > 0.1) {
        gc();
        heapEarly = Deno.memoryUsage().heapUsed;
      } else if (frac > 0.9 && !heapLate) {
        gc();
        heapLate = Deno.memoryUsage().heapUsed;
      }
    }
  }
  const growth = heapEarly && heapLate ? heapLate / heapEarly - 1 : 0;
  if (growth > 0.25) {
    counts.memory++;
    failures.push({
      outcome: "memory",
      seed,
      iteration: it,
      event: 0,
      detail: `heap grew ${(growth * 100).toFixed(0)}%`,
    });
  }
  return {
    target,
    iterations: iteration !== undefined ? 1 : it,
    events,
    counts,
    failures,
    heapGrowth: growth,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Every target name. */
export const FUZZ_TARGETS: string[] = Object.keys(TARGETS);

const USAGE =
  `usage: deno task fuzz [--target virtio|virtio-config|virtio-race|netfront|xenbus|xenstore|net|all] [--seconds N]
                       [--seed S] [--iteration I] [--json FILE]
  --seconds N    per target (default 10)
  --seed S       PRNG seed (default 1); with --iteration I, replay that one iteration`;

if (import.meta.main) {
  let values;
  try {
    values = parseArgs({
      args: Deno.args,
      options: {
        target: { type: "string" },
        seconds: { type: "string" },
        seed: { type: "string" },
        iteration: { type: "string" },
        json: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }).values;
  } catch (e) {
    console.error(`error: ${(e as Error).message.split(". ")[0]}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const num = (name: string, v: string | undefined, def: number) => {
    if (v === undefined) return def;
    if (!/^\d+$/.test(v)) {
      console.error(`error: --${name} must be a whole number, got '${v}'\n\n${USAGE}`);
      Deno.exit(2);
    }
    return Number(v);
  };
  const target = values.target ?? "all";
  if (target !== "all" && !TARGETS[target]) {
    console.error(`error: unknown target '${target}' (${FUZZ_TARGETS.join(", ")} or all)\n\n${USAGE}`);
    Deno.exit(2);
  }
  const seconds = num("seconds", values.seconds, 10), seed = num("seed", values.seed, 1);
  const iteration = values.iteration === undefined ? undefined : num("iteration", values.iteration, 0);
  const reports: TargetReport[] = [];
  for (const t of target === "all" ? FUZZ_TARGETS : [target]) {
    const r = await fuzzTarget(t, seconds, seed, iteration);
    reports.push(r);
    const c = r.counts;
    console.log(
      `${t.padEnd(14)} ${String(r.iterations).padStart(6)} iterations ${
        String(r.events).padStart(10)
      } events  ` +
        `ok ${c.ok}  clean-break ${c["clean-break"]}  other-exception ${
          c["other-exception"]
        }  hang ${c.hang}  ` +
        `silent ${c.silent}  leak ${c.leak}  memory ${c.memory}  heap ${(r.heapGrowth * 100).toFixed(1)}%`,
    );
    const bad = BAD.reduce((k, o) => k + c[o], 0);
    console.log(`fuzz ${t} (${r.events} events, seed ${seed}) ... ${bad ? "FAILED" : "ok"}`);
    for (const f of r.failures) {
      console.log(
        `  ${f.outcome}: reproduce with --target ${t} --seed ${f.seed} --iteration ${f.iteration} (event ${f.event})\n` +
          `    ${f.detail.split("\n").slice(0, 6).join("\n    ")}`,
      );
    }
  }
  const total = reports.reduce((s, r) => s + r.events, 0);
  const bad = reports.reduce((s, r) => s + BAD.reduce((k, o) => k + r.counts[o], 0), 0);
  console.log(`fuzz: ${total} hostile-run events, ${bad} bad outcomes`);
  if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify({ seed, reports }, null, 2));
  Deno.exit(bad ? 1 : 0);
}
