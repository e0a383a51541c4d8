/**
 * virtio-blk (virtio 1.2 §5.2) over any {@link VirtioBus}, on the disk class core: feature negotiation, the
 * device config read consistently and checked, request queues (MQ), polling, MSI-X and INTx, and configuration
 * changes (a resize) noticed and re-read.
 *
 * Each request is one chain: header, data buffers (or a DISCARD / WRITE_ZEROES segment), status byte
 * (blk_wire.ts). The header, segment and status of each in-flight slot live in one DMA area per queue, made at
 * open; the status byte is set to a value no device may write before posting, so a device that completes a
 * request without writing its status breaks the queue instead of passing for success. virtio-blk has no FUA: a
 * FUA write on a disk with a volatile cache is followed by a flush on the same slot and completes with it.
 * @module
 */
import type { DmaRegion } from "../../hal/dma.ts";
import type { IrqSource } from "../../hal/irq.ts";
import type { PciFunction } from "../../hal/pci.ts";
import type { IrqMode } from "../core/device.ts";
import { DiskCore, type DiskQueue } from "../block/core.ts";
import {
  BlockOp,
  BlockPool,
  type BlockRequest,
  BlockStatus,
  type Completions,
  type DiskInfo,
  emptyDiskStats,
} from "../block/disk.ts";
import { BLK_F, F, featureNames, STATUS, VIRTIO_ID } from "./features.ts";
import {
  BLK_DWZ_F_UNMAP,
  BLK_DWZ_SEG,
  BLK_REQ_HDR,
  BLK_S,
  BLK_T,
  SECTOR,
  writeBlkHeader,
  writeDwzSegment,
} from "./blk_wire.ts";
import type { VirtioPciOptions } from "./pci.ts";
import { NO_VECTOR, type VirtioBus, VirtioError, type VirtioTransport } from "./transport.ts";
import { SplitQueue } from "./virtqueue.ts";
import { diskInfo, readBlkConfig } from "./blk_config.ts";
import { busOfPci, driverOk, negotiateOn, stopDevice, trackedDma } from "./lifecycle.ts";

/** virtio device type of a block device (virtio 1.2 §5). */
export const VIRTIO_BLK: number = VIRTIO_ID.BLOCK;

/** The features pvdrv asks of a block device. */
export const WANTED_BLK_FEATURES: bigint = F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX |
  BLK_F.SIZE_MAX |
  BLK_F.SEG_MAX | BLK_F.BLK_SIZE | BLK_F.TOPOLOGY | BLK_F.FLUSH | BLK_F.CONFIG_WCE | BLK_F.RO | BLK_F.MQ |
  BLK_F.DISCARD | BLK_F.WRITE_ZEROES;

/** Bytes of DMA memory per in-flight slot: header, DWZ segment, status, and a FUA flush's header. */
const SLOT_BYTES = 64;
const SEG_AT = 16, STATUS_AT = 32, FLUSH_STATUS_AT = 40, FLUSH_HDR_AT = 48;
/** A status byte no device writes: set before posting, so an unwritten status is caught. */
const UNWRITTEN = 0xff;
/** Options for {@link VirtioBlk.open}. */
export interface VirtioBlkOptions {
  /** Request queues wanted (capped by the device's num_queues; 1 without MQ). */
  queues?: number;
  /** Ring size wanted (power of two; capped by the device; legacy devices impose theirs). */
  queueSize?: number;
  /** "poll" (default), "msix" (VFIO) or "intx" (VFIO or UIO). */
  irq?: IrqMode;
  /** Feature bits to refuse even if offered (tests, workarounds). */
  disable?: bigint;
  /** Requests in flight per queue (default 32). */
  queueDepth?: number;
  /** Bytes of one DMA buffer, a multiple of 4096 (default 64 KiB). */
  bufferBytes?: number;
  /** DMA buffers per queue (default: enough for every slot's largest request, at most 256). */
  buffers?: number;
  /** Buffers in one request (default 8; capped by the device's seg_max). */
  maxSegments?: number;
  /** Close the bus (and the PCI function under it, if the bus owns it) with the disk, or when the open fails. */
  ownsBus?: boolean;
}

/** One request queue of a {@link VirtioBlk}. */
export interface VirtioBlkQueue extends DiskQueue {
  /** The virtqueue. */
  vq: SplitQueue;
  /** Per-slot headers, segments and status bytes. */
  area: DmaRegion;
  /** Byte and word views of {@link area}. */
  area8: Uint8Array;
  /** Word view of {@link area}. */
  area32: Uint32Array;
  /** Descriptor head → the slot posted there, -1 when none. */
  headSlot: Int32Array;
  /** Per slot: a FUA write whose flush is still to be posted. */
  fuaPending: Uint8Array;
  /** Per slot: where its status byte is (the write's, or its FUA flush's). */
  statusAt: Uint8Array;
  /** A chain being built: addresses, lengths, directions (made once). */
  addr: Float64Array;
  /** Lengths of the chain being built. */
  len: Uint32Array;
  /** Directions of the chain being built (1: device-writable). */
  write: Uint8Array;
}

/** A virtio-blk device driven from userspace. */
export class VirtioBlk extends DiskCore<VirtioBlkQueue> {
  /** Human name (driver and address). */
  readonly name: string;
  /** Negotiated features. */
  readonly features: bigint;
  /** What the disk says of itself. */
  info: DiskInfo;
  readonly #bus: VirtioBus;
  readonly #t: VirtioTransport;
  readonly #irqMode: IrqMode;
  readonly #opts: VirtioBlkOptions;
  readonly #regions: DmaRegion[] = [];
  #configIrq: IrqSource | null = null;
  #configSeen = false; // an INTx ISR read saw the configuration bit
  #generation = 0;
  #live = false;

  /**
   * Bring up the virtio-blk device of an opened PCI function. With `ownsPci` the disk closes the function when it
   * closes, or at once when the open fails.
   */
  static openPci(
    pci: PciFunction,
    opts: VirtioBlkOptions & Pick<VirtioPciOptions, "transport"> & { ownsPci?: boolean } = {},
  ): VirtioBlk {
    return new VirtioBlk(busOfPci(pci, opts), { ...opts, ownsBus: true });
  }

  /** Bring up the virtio-blk device behind `bus` (virtio 1.2 §3.1.1, §5.2.5). */
  static open(bus: VirtioBus, opts: VirtioBlkOptions = {}): VirtioBlk {
    return new VirtioBlk(bus, opts);
  }

  private constructor(bus: VirtioBus, opts: VirtioBlkOptions) {
    super();
    if (bus.deviceType !== VIRTIO_BLK) {
      if (opts.ownsBus) bus.close();
      throw new VirtioError(`${bus.name} is virtio device type ${bus.deviceType}, not a block device (2)`);
    }
    if (opts.ownsBus) this.own(bus);
    this.#bus = bus;
    this.#t = bus.transport;
    this.#opts = opts;
    this.#irqMode = opts.irq ?? "poll";
    this.name = `virtio-blk ${bus.name}`;
    const t = this.#t;
    try {
      // Reset first: a device left running by a process that died may still DMA (virtio 1.2 §3.1.1 step 1).
      t.reset();
      bus.enableBusMaster();
      const want = opts.queues ?? 1;
      const irqs = bus.irqs(this.#irqMode, this.#irqMode === "msix" ? 1 + want : 1);
      this.features = negotiateOn(bus, WANTED_BLK_FEATURES, opts.disable ?? 0n);
      this.info = this.readInfo();
      const cfg = { numQueues: this.#numQueues() };
      const nq = Math.max(1, Math.min(want, cfg.numQueues));
      if (this.#irqMode === "msix") {
        if (t.setConfigVector(0) !== 0) throw new VirtioError("device refused MSI-X vector 0 for config");
        this.#configIrq = irqs[0];
      }
      this.#setupQueues(nq, irqs);
      this.#live = true; // from here on, close resets the device
      driverOk(t);
      this.#generation = t.configGeneration();
    } catch (e) {
      void this.close();
      throw e;
    }
  }

  /** What the disk says of itself, from the config (read again) and the options. */
  protected readInfo(): DiskInfo {
    return diskInfo(readBlkConfig(this.#t, this.features, this.name), this.features, this.#opts);
  }

  /** The config's num_queues (1 without MQ). */
  #numQueues(): number {
    return readBlkConfig(this.#t, this.features, this.name).numQueues;
  }

  /** Request queues 0..n-1 (§5.2.2), with their slot areas and buffer pools. */
  #setupQueues(n: number, irqs: IrqSource[]): void {
    const t = this.#t, dma = trackedDma(this.#bus.dma, this.#regions), i = this.info;
    const eventIdx = (this.features & F.RING_EVENT_IDX) !== 0n;
    const msix = this.#irqMode === "msix";
    if (!t.legacy && t.numQueues() < n) {
      throw new VirtioError(`device reports num_queues ${t.numQueues()} in common config, needs ${n}`);
    }
    const segs = i.maxSegments + 3;
    const perBuffer = i.maxSegmentBytes;
    // One region per pool: physically contiguous memory (UIO) caps it at one huge page.
    const fit = Math.floor((dma.maxRegion ?? Infinity) / perBuffer);
    const buffers = Math.min(
      fit,
      this.#opts.buffers ?? Math.min(256, i.queueDepth * Math.ceil(i.maxTransferBytes / perBuffer)),
    );
    if (buffers < i.maxSegments) {
      throw new RangeError(`${buffers} buffers cannot hold one ${i.maxSegments}-buffer request`);
    }
    for (let k = 0; k < n; k++) {
      const max = t.queueMaxSize(k);
      if (max === 0) throw new VirtioError(`queue ${k} is not available (queue_size 0)`);
      let size = t.legacy ? max : Math.min(max, this.#opts.queueSize ?? 256);
      if (!t.legacy) { while (size & (size - 1)) size &= size - 1; }
      if (size < 3) throw new VirtioError(`queue ${k} has ${size} descriptors: a request needs 3`);
      const vq = new SplitQueue(dma, k, size, eventIdx, t.notifier(k));
      t.setupQueue(k, size, vq.addresses, msix ? 1 + k : NO_VECTOR);
      const area = dma.alloc(i.queueDepth * SLOT_BYTES);
      const pool = new BlockPool(
        `blk${k}`,
        dma.alloc(buffers * i.maxSegmentBytes),
        buffers,
        i.maxSegmentBytes,
      );
      const q: VirtioBlkQueue = {
        vq,
        area,
        area8: area.bytes,
        area32: new Uint32Array(area.bytes.buffer, area.bytes.byteOffset, area.bytes.byteLength >> 2),
        headSlot: new Int32Array(size).fill(-1),
        fuaPending: new Uint8Array(i.queueDepth),
        statusAt: new Uint8Array(i.queueDepth),
        addr: new Float64Array(segs),
        len: new Uint32Array(segs),
        write: new Uint8Array(segs),
        pool,
        slots: this.slots(i.queueDepth),
        stats: emptyDiskStats(),
        irq: msix ? irqs[1 + k] : irqs[0] ?? null,
      };
      this.adopt(pool);
      this.pairs.push(q);
      vq.disableInterrupts();
    }
  }

  /** Names of the negotiated features. */
  featureNames(): string[] {
    return featureNames(this.features, VIRTIO_BLK);
  }

  /** "modern" or "legacy". */
  get transport(): "modern" | "legacy" {
    return this.#t.legacy ? "legacy" : "modern";
  }

  /**
   * Whether the device changed its configuration (a resize) since the last call — its configuration interrupt
   * (MSI-X vector 0, or the ISR's bit with INTx) or, when polling, config_generation — and if so the limits are
   * read again ({@link refresh}).
   */
  configChanged(): boolean {
    let changed = false;
    if (this.#configIrq) changed = this.#configIrq.poll();
    else if (this.#irqMode === "intx") {
      changed = this.#configSeen || (this.#t.readIsr() & 2) !== 0;
      this.#configSeen = false;
    } else {
      const g = this.#t.configGeneration();
      changed = g !== this.#generation;
      this.#generation = g;
    }
    if (!changed) return false;
    this.refresh();
    return true;
  }

  /** virtio's name for the logical block size (§5.2.4). */
  protected readonly blockSizeName = "blk_size";

  /** Break every queue with `msg`: a config change the driver cannot follow (see {@link refresh}). */
  protected breakQueues(msg: string): Error {
    for (const q of this.pairs) {
      try {
        q.vq.fail(msg);
      } catch { /* each queue is now broken */ }
    }
    return new VirtioError(`${this.name}: ${msg}`);
  }

  /** Throws when the device needs a reset or a queue broke. */
  override checkHealth(): void {
    if (this.#t.status() & STATUS.DEVICE_NEEDS_RESET) {
      throw new VirtioError(`${this.name}: device needs reset (DEVICE_NEEDS_RESET)`);
    }
    super.checkHealth();
  }

  // ---- ring steps (DiskCore) ----

  /** The error that broke queue `q`, or null. */
  protected fault(q: VirtioBlkQueue): Error | null {
    return q.vq.broken;
  }

  /** Whether `r`'s chain (header, data or segment, status) fits in the free descriptors. */
  protected fits(q: VirtioBlkQueue, r: BlockRequest): boolean {
    const data = r.op === BlockOp.Flush
      ? 0
      : r.op === BlockOp.Discard || r.op === BlockOp.WriteZeroes
      ? 1
      : r.count;
    return q.vq.freeCount >= 2 + data;
  }

  /** Write slot `slot`'s header (and segment) and queue its chain (§5.2.6). */
  protected post(q: VirtioBlkQueue, slot: number, r: BlockRequest): void {
    const base = q.area.deviceAddress + slot * SLOT_BYTES, w = (slot * SLOT_BYTES) >> 2;
    const type = r.op === BlockOp.Read
      ? BLK_T.IN
      : r.op === BlockOp.Write
      ? BLK_T.OUT
      : r.op === BlockOp.Flush
      ? BLK_T.FLUSH
      : r.op === BlockOp.Discard
      ? BLK_T.DISCARD
      : r.op === BlockOp.WriteZeroes
      ? BLK_T.WRITE_ZEROES
      : BLK_T.GET_ID;
    // Sector fields are 512-byte units whatever blk_size is (§5.2.6).
    writeBlkHeader(
      q.area32,
      w,
      type,
      r.op === BlockOp.GetId || r.op === BlockOp.Flush ? 0 : r.offset / SECTOR,
    );
    q.area8[slot * SLOT_BYTES + STATUS_AT] = UNWRITTEN;
    q.statusAt[slot] = STATUS_AT;
    q.fuaPending[slot] = r.op === BlockOp.Write && r.fua && this.info.writeCache ? 1 : 0;
    const a = q.addr, l = q.len, wr = q.write;
    let n = 0;
    a[n] = base, l[n] = BLK_REQ_HDR, wr[n++] = 0;
    if (r.op === BlockOp.Discard || r.op === BlockOp.WriteZeroes) {
      const flags = r.op === BlockOp.WriteZeroes && r.unmap ? BLK_DWZ_F_UNMAP : 0;
      writeDwzSegment(q.area32, w + (SEG_AT >> 2), r.offset / SECTOR, r.length / SECTOR, flags);
      a[n] = base + SEG_AT, l[n] = BLK_DWZ_SEG, wr[n++] = 0;
    } else if (r.op !== BlockOp.Flush) {
      const devWrites = r.op === BlockOp.Write ? 0 : 1;
      for (let k = 0; k < r.count; k++) {
        const b = r.buffers[k];
        a[n] = b.deviceAddress, l[n] = b.length, wr[n++] = devWrites;
      }
    }
    a[n] = base + STATUS_AT, l[n] = 1, wr[n++] = 1;
    const head = q.vq.addChainOf(a, l, wr, n);
    q.headSlot[head] = slot;
  }

  /** Publish and notify unless the device suppressed it. */
  protected kick(q: VirtioBlkQueue): void {
    if (q.vq.kick()) q.stats.notifications++;
  }

  /** Pop used chains: each status checked to be one the spec defines, each slot completed once. */
  protected collect(q: VirtioBlkQueue, done: Completions, k: number, max: number): number {
    const vq = q.vq;
    let avail = vq.pending(), flushes = 0;
    while (avail-- > 0 && k < max) {
      const head = vq.popUsed(), slot = q.headSlot[head];
      q.headSlot[head] = -1;
      if (slot < 0) vq.fail(`device completed descriptor ${head}, which carries no request`);
      const st = q.area8[slot * SLOT_BYTES + q.statusAt[slot]];
      if (st !== BLK_S.OK && st !== BLK_S.IOERR && st !== BLK_S.UNSUPP) {
        vq.fail(`device wrote status ${st} for request slot ${slot} (valid: 0, 1, 2)`);
      }
      if (q.fuaPending[slot] && st === BLK_S.OK) {
        // The write is done: now its flush, on the same slot, so FUA completes only once the data is durable.
        q.fuaPending[slot] = 0;
        this.#postFlush(q, slot);
        flushes++;
        continue;
      }
      if (
        !this.finish(
          q,
          slot,
          st === BLK_S.OK
            ? BlockStatus.Ok
            : st === BLK_S.IOERR
            ? BlockStatus.IoError
            : BlockStatus.Unsupported,
          done,
          k,
        )
      ) {
        vq.fail(`device completed request slot ${slot}, which is not in flight`);
      }
      k++;
    }
    if (flushes) this.kick(q);
    return k;
  }

  /** Post slot `slot`'s FUA flush (header and status of their own; the write's descriptors were just freed). */
  #postFlush(q: VirtioBlkQueue, slot: number): void {
    const base = q.area.deviceAddress + slot * SLOT_BYTES;
    writeBlkHeader(q.area32, (slot * SLOT_BYTES + FLUSH_HDR_AT) >> 2, BLK_T.FLUSH, 0);
    q.area8[slot * SLOT_BYTES + FLUSH_STATUS_AT] = UNWRITTEN;
    q.statusAt[slot] = FLUSH_STATUS_AT;
    const a = q.addr, l = q.len, wr = q.write;
    a[0] = base + FLUSH_HDR_AT, l[0] = BLK_REQ_HDR, wr[0] = 0;
    a[1] = base + FLUSH_STATUS_AT, l[1] = 1, wr[1] = 1;
    const head = q.vq.addChainOf(a, l, wr, 2);
    if (head < 0) q.vq.fail("no descriptors for a FUA write's flush"); // cannot happen: the write freed >= 3
    q.headSlot[head] = slot;
  }

  /** Ask for the completion interrupt; true when completions already wait. */
  protected armIrq(q: VirtioBlkQueue): boolean {
    return q.vq.enableInterrupts();
  }

  /** Back to polling. */
  protected disarmIrq(q: VirtioBlkQueue): void {
    q.vq.disableInterrupts();
  }

  /** INTx: reading the ISR acknowledges it; its configuration bit is kept for {@link configChanged}. */
  protected override ackIrq(): void {
    if (this.#t.readIsr() & 2) this.#configSeen = true;
    this.#bus.ackIntx();
  }

  /** Stop the device and release its memory. */
  protected teardown(): void {
    stopDevice(this.#bus, this.#live, this.pairs.splice(0).map((q) => q.pool), this.#regions);
  }
}
