/**
 * The virtio-blk targets: `blk` (a device that lies now and then in long valid traffic: wrong or unwritten status
 * bytes, bad used ids and lengths, requests completed twice, used.idx jumps, resizes and blk_size changes under
 * the driver) and `blk-config` (hostile device configs at open). The caller's own bad requests are mixed in: each
 * must be refused before anything reaches the device. The oracle: what an honest device holds is what was
 * written, every read returns it, and nothing stays allocated after close.
 */
import { VirtioBlk } from "../../drivers/virtio/blk.ts";
import { type BlockBuffer, BlockOp, BlockRequest } from "../../drivers/block/disk.ts";
import { isPvdrvError } from "../../hal/errors.ts";
import { VirtioBlkModel } from "../models/virtio_blk_device.ts";
import { classify, finishIteration, Leak, type Result, type Rng, Silent } from "./oracle.ts";
import { DiskTraffic } from "./disk_traffic.ts";

/** One blk iteration: a fresh model and driver, `steps` events. */
export async function blkIteration(rng: Rng, steps: number, mutateConfig: boolean): Promise<Result> {
  const sectors = rng.pick([64, 1024, 8192]);
  const model = new VirtioBlkModel({
    sectors,
    blkSize: mutateConfig ? rng.pick([0, 100, 512, 4096, 1 << 20, 0xffffffff]) : rng.pick([512, 512, 4096]),
    segMax: mutateConfig ? rng.pick([0, 1, 2, 0xffffffff]) : rng.pick([1, 2, 8, 32]),
    queues: rng.int(1, 3),
    writeback: rng.pick([0, 1]),
    queueMax: rng.pick([4, 16, 256]),
    autoProcess: rng.bool(0.8),
    ...(mutateConfig
      ? {
        configQueues: rng.pick([0, 1, 2, 0xffff]),
        maxDiscardSectors: rng.pick([0, 1, 8, 0xffffffff]),
        discardAlignment: rng.pick([0, 1, 7, 8, 0xffffffff]),
        physExp: rng.pick([0, 3, 15, 16, 255]),
        sizeMax: rng.pick([0, 1, 511, 512, 4096, 0xffffffff]),
        queueSizeOf: rng.bool(0.5) ? undefined : ((v: number) => () => v)(rng.pick([0, 1, 2, 3, 100, 32768])),
      }
      : {}),
  });
  let events = 0;
  if (mutateConfig) {
    const dc = model.deviceConfig;
    for (let k = rng.int(0, 6); k > 0; k--, events++) dc.setUint8(rng.int(0, 71), rng.int(0, 255));
    if (rng.bool(0.2)) model.config.view.setUint8(rng.int(0x34, 0x83), rng.int(0, 255));
  }
  let disk: VirtioBlk;
  try {
    disk = VirtioBlk.openPci(model.pci(), {
      queues: rng.int(1, 3),
      queueDepth: rng.pick([1, 4, 32]),
      bufferBytes: rng.pick([4096, 65536]),
      maxSegments: rng.pick([1, 4, 8]),
      queueSize: rng.pick([undefined, 2, 4, 16]),
    });
  } catch (e) {
    if (model.dma.live !== 0) {
      return classify(new Leak(`failed open left ${model.dma.live} DMA regions`), events, 0);
    }
    if (e instanceof RangeError) {
      return { outcome: "clean-break", events: events + 1, event: 0, detail: e.message };
    }
    return classify(e, events + 1, 0);
  }
  // A device whose config lies about its size (or a resize) makes the run hostile: the shadow covers the real disk.
  const t = new DiskTraffic(disk, model.disk.length, rng);
  t.hostile = disk.info.capacity !== model.disk.length;
  const serve = () => {
    if (!model.autoProcess) { for (let k = 0; k < disk.queues; k++) model.process(k); }
  };
  let step = 0;
  const rate = rng.pick([0, 0.0005, 0.002, 0.01, 0.05]);
  let result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  try {
    for (step = 0; step < steps; step++) {
      events++;
      const q = rng.int(0, disk.queues - 1), info = disk.info, lbs = info.logicalBlockSize;
      const a = rng.next() < rate ? rng.int(80, 99) : rng.int(0, 79);
      if (a < 45) t.readWrite(q, serve);
      else if (a < 55) t.other(q, [BlockOp.Flush, BlockOp.Discard, BlockOp.WriteZeroes]);
      else if (a < 65) {
        serve();
        t.complete(q);
      } else if (a < 75) {
        // The caller's own mistakes: refused before anything reaches the device.
        const before = model.served.length, bufs: BlockBuffer[] = [];
        disk.allocBuffers(bufs, 1, q);
        if (bufs.length === 0) continue;
        bufs[0].length = lbs;
        const r = new BlockRequest().io(
          BlockOp.Read,
          rng.pick([1, lbs / 2, info.capacity, -lbs, 2 ** 60]),
          bufs,
          1,
        );
        if (rng.bool(0.3)) r.length += 1;
        try {
          disk.submit([r], 1, q);
          throw new Silent(`a bad request (offset ${r.offset}, length ${r.length}) was accepted`);
        } catch (e) {
          if (e instanceof Silent) throw e;
          if (
            !(e instanceof RangeError) && !isPvdrvError(e, "disk") && !(e as Error).name.includes("Virtqueue")
          ) throw e;
        } finally {
          if (bufs[0].pool.owner(bufs[0]) === "app") disk.release(bufs, 1);
        }
        if (model.served.length !== before) throw new Silent("a refused request reached the device");
      } else if (a < 80) {
        disk.checkHealth();
      } else {
        t.hostile = true;
        const k = rng.int(0, 8);
        if (k === 0) model.statusFor = rng.bool(0.5) ? () => rng.pick([1, 2, 3, 7, 0x80, 0xff]) : null;
        else if (k === 1) model.skipStatus = rng.bool(0.5);
        else if (k === 2) model.usedLen = rng.pick([null, 0, 1, 0xffffffff, 1 << 20]);
        else if (k === 3) model.completeTwice = rng.bool(0.5);
        else if (k === 4) model.forgeUsed(q, rng.int(0, 300), rng.int(0, 70000));
        else if (k === 5) model.jumpUsedIdx(q, rng.pick([1, 2, 0x8000, 0xffff]));
        else if (k === 6) model.resize(rng.pick([8, sectors / 2, sectors * 2]));
        else if (k === 7) model.changeBlockSize(rng.pick([512, 4096, 100, 0]));
        else events += disk.configChanged() ? 1 : 0;
      }
    }
    if (!t.hostile) t.drain(serve, model.disk);
  } catch (e) {
    result = classify(e, events + t.events, step);
    if (result.outcome === "other-exception" && isPvdrvError(e, "disk")) {
      result = {
        outcome: "clean-break",
        events: events + t.events,
        event: step,
        detail: (e as Error).message,
      };
    }
  }
  return await finishIteration(result, events + t.events, step, model.dma, () => {
    void disk.close();
    t.releaseHeld();
  });
}
