/** The virtio targets: `virtio` and `virtio-config` (hostile rings and config), `virtio-race` (a Worker flipping ring bytes). */
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { MIN_TEST_FRAME } from "../../apps/frames.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import type { PacketPool } from "../../drivers/net/packet_pool.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { PacketBatch } from "../../drivers/net/packet_batch.ts";
import { bounded, classify, finishIteration, Leak, type Result, type Rng, Silent } from "./oracle.ts";
import { frameBytes, Held, same } from "./held.ts";

// ---------------------------------------------------------------- virtio: rings made hostile

const DEFAULT_FEATURES = F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | NET_F.MAC | NET_F.STATUS |
  NET_F.MRG_RXBUF | NET_F.CSUM | NET_F.GUEST_CSUM | NET_F.CTRL_VQ | NET_F.CTRL_RX | NET_F.MQ | NET_F.MTU |
  NET_F.CTRL_MAC_ADDR;
const OPTIONAL = [F.RING_EVENT_IDX, NET_F.MRG_RXBUF, NET_F.CSUM, NET_F.GUEST_CSUM, NET_F.CTRL_VQ, NET_F.MQ];

/** The bytes a device writes on queue `qi`: the used ring (split), the descriptor ring (packed). */
function deviceWritten(m: VirtioNetModel, qi: number): Uint8Array {
  const q = m.queue(qi);
  return m.packed ? m.dma.resolve(q.desc, 16 * q.size) : m.dma.resolve(q.device, 4 + 8 * q.size);
}

/** Write a random used-ring (or packed descriptor) byte, index or entry of queue `qi`. */
function corruptUsed(m: VirtioNetModel, rng: Rng, qi: number): void {
  const q = m.queue(qi);
  const u = deviceWritten(m, qi);
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

/** One virtio iteration: a fresh model and driver, `steps` hostile and valid events (config mutated too with `mutateConfig`). */
export async function virtioIteration(rng: Rng, steps: number, mutateConfig: boolean): Promise<Result> {
  const mtu = rng.pick([1500, 68, 1400, 9000, 576]);
  let features = DEFAULT_FEATURES | (rng.bool(0.5) ? F.RING_PACKED : 0n);
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
      ring: rng.pick(["split", "packed"] as const),
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
  const batches = [
    new PacketBatch(1),
    new PacketBatch(2),
    new PacketBatch(rng.int(3, 64)),
    new PacketBatch(256),
  ];
  const out: PacketBuffer[] = [];
  let hostileRx = false, hostileTx = false, seq = 0, received = 0, delivered = 0;
  // How hostile this device is: from an occasional lie in long valid traffic to mostly lies.
  const rate = rng.pick([0.002, 0.01, 0.05, 0.15]);
  let result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  let step = 0;
  // One receive, by buffer object or by index (a PacketBatch, released whole now or kept as objects for later),
  // at most `limit` frames when given; every frame checked and held.
  const receive = (limit?: number): number => {
    const byIndex = rng.bool(0.5);
    const batch = byIndex
      ? (limit !== undefined ? new PacketBatch(limit) : batches[rng.int(0, batches.length - 1)])
      : null;
    const n = batch
      ? nic.receiveInto(batch)
      : nic.receiveBatch(out, limit ?? rng.pick([1, 2, 3, rng.int(1, 64)]));
    for (let i = 0; i < n; i++) {
      const b = batch ? batch.buffer(i) : out[i];
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
    if (batch && rng.bool(0.5)) held.releaseBatch(nic, batch);
    else if (batch) batch.count = 0; // its frames stay held as objects
    return n;
  };
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
        else if (k === 1 && rng.bool(0.3)) {
          // A dropped multi-buffer frame that a receive's limit cuts, its buffers beyond the limit ending in a bad
          // entry: the ring emptied first, so the limit falls inside the frame (each buffer freed once).
          for (let got; (got = receive(256)) > 0;) events += got;
          const nb = rng.int(2, 4), cut = rng.int(1, nb - 1);
          model.deliver(frameBytes(60, seq++), 0, { numBuffers: nb });
          for (let e = 1; e < nb - 1; e++) model.deliver(frameBytes(60, seq++), 0);
          corruptUsed(model, rng, 0);
          events += receive(cut);
        } else if (k === 1) {
          model.deliver(frameBytes(60, seq++), 0, { numBuffers: rng.pick([0, 2, 3, 255, 65535]) });
          // Sometimes the frame's other buffers are good entries followed by a bad one (a dropped frame whose
          // last buffers break the ring: each buffer must still be freed once).
          if (rng.bool(0.3)) {
            for (let e = rng.int(0, 2); e > 0; e--) model.deliver(frameBytes(60, seq++), 0);
            corruptUsed(model, rng, 0);
          }
        } else if (k === 2) {
          model.deliver(frameBytes(60, seq++), 0, { usedLen: rng.pick([0, 11, 13, 4096, 65536]) });
        } else model.deliver(frameBytes(rng.int(MIN_TEST_FRAME, 2000), seq++), 0, { flags: rng.int(0, 255) });
      } else if (a < 40) {
        hostileTx = true;
        corruptUsed(model, rng, 1);
      } else if (a < 62) {
        events += receive();
      } else if (a < 75) {
        held.release(nic, rng.int(0, held.list.length));
      } else if (a < 92) {
        const bufs: PacketBuffer[] = [];
        if (rng.bool(0.5)) {
          // By index: what sendFrom does not take stays in the batch and goes back with releaseBatch.
          const b = batches[rng.int(0, batches.length - 1)];
          const n = nic.allocInto(b, rng.int(1, 32));
          const frames: Uint8Array[] = [];
          for (let i = 0; i < n; i++) {
            const len = rng.int(MIN_TEST_FRAME, nic.maxFrame), at = b.offset(i);
            b.bytes.set(frameBytes(len, seq + i), at);
            b.lengths[i] = len;
            frames.push(b.bytes.slice(at, at + len));
          }
          seq += n;
          try {
            const sent = nic.sendFrom(b);
            events += sent;
            for (let i = 0; i < sent; i++) sentByUs.push(frames[i]);
          } finally {
            nic.releaseBatch(b);
          }
        } else {
          const n = held.fillTx(nic, bufs, rng.int(1, 32), rng, seq);
          seq += n;
          const sent = held.send(n, () => nic.sendBatch(bufs, n));
          events += sent;
          for (let i = 0; i < sent; i++) sentByUs.push(bufs[i].data.slice(0, bufs[i].length));
        }
      } else if (a < 97) {
        model.process(1);
        events += nic.reclaimTx();
      } else {
        nic.checkHealth();
      }
    }
    // The oracle's end-of-run checks for a device that never misbehaved on that side. The device looks at its TX
    // ring once more first: a mutated capability can point the driver's doorbell at bytes the model does not
    // decode as a notification, and the driver cannot know (what matters is that the ring holds every frame).
    model.process(1);
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
  const pools = poolsOf(nic); // before close, which lets go of them
  return await finishIteration(result, events, step, model.dma, () => {
    nic.close();
    held.release(nic, held.list.length);
    auditPools(pools);
  });
}

// ---------------------------------------------------------------- virtio-race: a Worker flips ring bytes

/** The driver polls while a Worker rewrites the RX used ring underneath it: values change between two reads. */
/** One virtio-race iteration: a Worker flips ring bytes while the driver runs. */
export async function raceIteration(rng: Rng, steps: number): Promise<Result> {
  const model = new VirtioNetModel({ sharedDma: true, queueMax: rng.pick([16, 256]) });
  const nic = VirtioNet.openPci(model.pci(), { ring: rng.pick(["split", "packed"] as const) });
  const used = deviceWritten(model, 0);
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

/** The buffer pools `nic` uses now. */
function poolsOf(nic: VirtioNet): PacketPool[] {
  const pairs = (nic as unknown as { pairs: { rxPool: PacketPool; txPool: PacketPool }[] }).pairs;
  return pairs.flatMap((p) => [p.rxPool, p.txPool]);
}

/** Every pool consistent (no buffer free twice, none lost from the free list), or a silent finding. */
function auditPools(pools: PacketPool[]): void {
  for (const pool of pools) {
    const bad = pool.audit();
    if (bad) throw new Silent(bad);
  }
}
