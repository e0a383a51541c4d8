/**
 * virtio-net (virtio 1.2 §5.1) over any {@link VirtioBus}: feature negotiation, RX/TX queue pairs with zero-copy
 * buffer pools, the control queue (promiscuous, MAC filter, queue pairs), link status, polling and interrupts.
 *
 * Bring-up follows the spec's steps (§3.1.1, §5.1.5): reset → negotiate → read config (consistently, looping on
 * config_generation) → queues → control queue → DRIVER_OK → fill RX → control commands.
 *
 * Every frame is one descriptor: the virtio_net_hdr and the frame share a 2 KiB slot (VERSION_1 / ANY_LAYOUT),
 * so chains and indirect descriptors would only add work on this path (indirect tables are not used).
 * @module
 */
import type { DmaRegion } from "../../hal/dma.ts";
import { PvdrvError } from "../../hal/errors.ts";
import type { IrqSource } from "../../hal/irq.ts";
import type { PciFunction } from "../../hal/pci.ts";
import { NicCore } from "../net/core.ts";
import {
  emptyStats,
  FRAME_OVERHEAD,
  type IrqMode,
  macToString,
  maxFrameFor,
  MIN_FRAME,
  type QueueStats,
} from "../net/nic.ts";
import { OWNER } from "../core/buffer_pool.ts";
import { type PacketBuffer, PacketPool } from "../net/packet_pool.ts";
import type { PacketBatch } from "../net/packet_batch.ts";
import { F, featureNames, NET_F, STATUS, VIRTIO_ID } from "./features.ts";
import {
  CTRL,
  HDR_RX_FLAGS,
  macTableData,
  NET_CONFIG,
  NET_S_LINK_UP,
  netHdrLen,
  rxNumBuffers,
  txHeaderTail,
  writePlainTxHeader,
  writeTxHeader,
} from "./net_wire.ts";
import type { VirtioPciOptions } from "./pci.ts";
import { NO_VECTOR, type VirtioBus, VirtioError, type VirtioTransport } from "./transport.ts";
import { SplitQueue } from "./virtqueue.ts";
import type { Virtqueue } from "./queue.ts";
import { PackedQueue } from "./packed_queue.ts";
import { busOfPci, driverOk, negotiateOn, stopDevice, trackedDma } from "./lifecycle.ts";
import { CONTROL_MEM, ControlQueue, readNetConfig } from "./net_control.ts";

export type { IrqMode } from "../net/nic.ts";

/** One buffer slot: the virtio_net_hdr and a frame of up to 2 KiB minus the header. */
const SLOT = 2048;
/** A slot in 32-bit words: buffer i's slot, where its TX header goes, starts at word i * SLOT_WORDS. */
const SLOT_WORDS = SLOT >> 2;
// Module constants: the TX loop compares against them per frame (imported bindings are not folded).
const MIN_LEN = MIN_FRAME;
const { APP, DEVICE } = OWNER;
/** virtio device type of a network card (virtio 1.2 §5). */
export const VIRTIO_NET: number = VIRTIO_ID.NET;

/** Options for {@link VirtioNet.open}. */
export interface VirtioNetOptions {
  /** Queue pairs wanted (capped by the device's max_virtqueue_pairs; 1 without MQ). */
  queues?: number;
  /** Ring size wanted (power of two; capped by the device; legacy devices impose theirs). */
  queueSize?: number;
  /** "poll" (default), "msix" (VFIO) or "intx" (VFIO or UIO). */
  irq?: IrqMode;
  /** Feature bits to refuse even if offered (tests, workarounds). */
  disable?: bigint;
  /**
   * Ring format: "packed" (virtio 1.2 §2.8) when the device offers VIRTIO_F_RING_PACKED, else split; "split"
   * never negotiates packed rings. Default {@link DEFAULT_RING}.
   */
  ring?: RingFormat;
  /** Enable promiscuous mode (needs CTRL_VQ + CTRL_RX). */
  promiscuous?: boolean;
  /** Close the bus (and the PCI function under it, if the bus owns it) with the NIC, or when the open fails. */
  ownsBus?: boolean;
}

/** A virtqueue format a {@link VirtioNet} may use. */
export type RingFormat = "split" | "packed";

/** The ring format used unless {@link VirtioNetOptions.ring} says otherwise. */
export const DEFAULT_RING: RingFormat = "split";

/** The features pvdrv asks for (RING_PACKED only when packed rings are wanted). */
export const WANTED_FEATURES = F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | F.ANY_LAYOUT | NET_F.MAC |
  NET_F.STATUS | NET_F.MRG_RXBUF | NET_F.CSUM | NET_F.GUEST_CSUM | NET_F.CTRL_VQ | NET_F.CTRL_RX | NET_F.MQ |
  NET_F.CTRL_MAC_ADDR | NET_F.MTU;

/** One RX/TX queue pair of a {@link VirtioNet}: its virtqueues, buffer pools, in-flight buffers and counters. */
export interface VirtioQueuePair {
  /** The receive virtqueue (index 2i). */
  rx: Virtqueue;
  /** The transmit virtqueue (index 2i + 1). */
  tx: Virtqueue;
  /** Receive buffers, one per RX descriptor (buffer i is descriptor i). */
  rxPool: PacketPool;
  /** Transmit buffers, one per TX descriptor (buffer i is descriptor i). */
  txPool: PacketPool;
  /** The RX interrupt, or null when polling. */
  irq: IrqSource | null;
  /** Scratch: buffer indices of one batch (refill, reclaim, receive). */
  ids: Uint16Array;
  /** Scratch: the used lengths of one received batch, or the descriptor lengths of one sent batch. */
  lens: Uint32Array;
  /** Per TX buffer: the length of the frame it carries to the device (counted when it completes). */
  txLen: Uint16Array;
  /** Counters. */
  stats: QueueStats;
}

/** A virtio-net device driven from userspace. */
export class VirtioNet extends NicCore<VirtioQueuePair> {
  /** Human name (driver and address). */
  readonly name: string;
  /** The MAC address. */
  readonly mac: Uint8Array;
  /** Largest payload (without the Ethernet header). */
  readonly mtu: number;
  /** Largest frame (mtu + 18, capped by one buffer). */
  readonly maxFrame: number;
  /** Negotiated features. */
  readonly features: bigint;
  /** virtio_net_hdr length: 12 with VERSION_1 or MRG_RXBUF, else 10. */
  readonly hdrLen: number;
  /** Whether the device completes TX checksums (VIRTIO_NET_F_CSUM negotiated). */
  readonly txChecksum: boolean;
  // Feature tests the hot paths need, as plain values (a BigInt `&` allocates).
  readonly #mergeable: boolean;
  readonly #rxFlagMask: number;
  readonly #bus: VirtioBus;
  readonly #t: VirtioTransport;
  readonly #irqMode: IrqMode;
  #ctrl: ControlQueue | null = null;
  /** Every DMA region this NIC allocated, so a failed open or a close frees each one. */
  readonly #regions: DmaRegion[] = [];
  #live = false; // DRIVER_OK was set: queues may be in use by the device

  /** Bring up the virtio-net device behind `bus` (virtio 1.2 §3.1.1, §5.1.5). */
  static open(bus: VirtioBus, opts: VirtioNetOptions = {}): VirtioNet {
    return new VirtioNet(bus, opts);
  }

  /**
   * Bring up the virtio-net device of an opened PCI function. With `ownsPci` the NIC closes the function when it
   * closes, or at once when the open fails.
   */
  static openPci(
    pci: PciFunction,
    opts: VirtioNetOptions & Pick<VirtioPciOptions, "transport"> & { ownsPci?: boolean } = {},
  ): VirtioNet {
    return new VirtioNet(busOfPci(pci, opts), { ...opts, ownsBus: true });
  }

  private constructor(bus: VirtioBus, opts: VirtioNetOptions) {
    super();
    if (bus.deviceType !== VIRTIO_NET) {
      // Not ours to touch: no reset, no FAILED status; only what we were given to own is released.
      if (opts.ownsBus) bus.close();
      throw new VirtioError(`${bus.name} is virtio device type ${bus.deviceType}, not a network card (1)`);
    }
    if (opts.ownsBus) this.own(bus);
    this.#bus = bus;
    this.#t = bus.transport;
    this.#irqMode = opts.irq ?? "poll";
    this.name = `virtio-net ${bus.name}`;
    const t = this.#t;
    try {
      // Reset before anything else, bus mastering included: a device left running by a process that died (SIGKILL)
      // may still DMA into memory that process freed, and with UIO no IOMMU stops it (virtio 1.2 §3.1.1 step 1).
      t.reset();
      bus.enableBusMaster();
      const wantPairs = opts.queues ?? 1;
      const irqs = bus.irqs(this.#irqMode, this.#irqMode === "msix" ? 1 + wantPairs : 1);
      const packed = (opts.ring ?? DEFAULT_RING) === "packed" ? F.RING_PACKED : 0n;
      this.features = negotiateOn(bus, WANTED_FEATURES | packed, opts.disable ?? 0n);
      this.hdrLen = netHdrLen((this.features & (F.VERSION_1 | NET_F.MRG_RXBUF)) !== 0n);
      this.txChecksum = (this.features & NET_F.CSUM) !== 0n;
      this.#mergeable = (this.features & NET_F.MRG_RXBUF) !== 0n;
      this.#rxFlagMask = this.features & NET_F.GUEST_CSUM ? HDR_RX_FLAGS : 0;
      const cfg = readNetConfig(this.#t, this.features, this.name);
      this.mac = cfg.mac;
      this.maxFrame = maxFrameFor(cfg.mtu, SLOT - this.hdrLen);
      this.mtu = Math.min(cfg.mtu, this.maxFrame - FRAME_OVERHEAD);
      const pairs = Math.min(wantPairs, cfg.maxPairs);
      if (this.#irqMode === "msix" && t.setConfigVector(0) !== 0) {
        throw new VirtioError("device refused MSI-X vector 0 for config");
      }
      this.#setupQueues(pairs, cfg.maxPairs, irqs, opts.queueSize ?? 256);
      this.#live = true; // from here on, close resets the device
      driverOk(t);
      for (const p of this.pairs) this.refill(p);
      if (pairs > 1) {
        this.#ctrlCommand(CTRL.MQ, CTRL.MQ_VQ_PAIRS_SET, new Uint8Array([pairs & 0xff, pairs >> 8]));
      }
      if (opts.promiscuous) this.setPromiscuous(true);
    } catch (e) {
      void this.close();
      throw e;
    }
  }

  /** virtio_net_config (§5.1.4), read consistently (§4.1.4.3.1) and checked. */
  /** Queue setup (§4.1.5.1.3, §5.1.2): RX/TX pairs, then the control queue after all max_virtqueue_pairs pairs. */
  #setupQueues(pairs: number, maxPairs: number, irqs: IrqSource[], queueSize: number): void {
    const t = this.#t, f = this.features, dma = trackedDma(this.#bus.dma, this.#regions);
    const eventIdx = (f & F.RING_EVENT_IDX) !== 0n, Queue = f & F.RING_PACKED ? PackedQueue : SplitQueue;
    const numQueues = t.numQueues();
    const ctrl = (f & NET_F.CTRL_VQ) !== 0n;
    const needQueues = ctrl ? 2 * maxPairs + 1 : 2 * pairs;
    if (!t.legacy && numQueues < needQueues) {
      throw new VirtioError(
        `device reports num_queues ${numQueues} but ${ctrl ? maxPairs : pairs} queue pair(s)` +
          `${ctrl ? " and a control queue" : ""} need ${needQueues}`,
      );
    }
    const programmed = new Set<number>();
    const setup = (q: number, vector: number): Virtqueue => {
      if (q > 0xffff || (!t.legacy && q >= numQueues)) {
        throw new VirtioError(`device has ${numQueues} queues, needs queue ${q}`);
      }
      if (programmed.has(q)) throw new VirtioError(`queue ${q} would be programmed twice`);
      programmed.add(q);
      const max = t.queueMaxSize(q);
      if (max === 0) throw new VirtioError(`queue ${q} is not available (queue_size 0)`);
      let size = t.legacy ? max : Math.min(max, queueSize);
      if (!t.legacy) { while (size & (size - 1)) size &= size - 1; // largest power of two not above
       }
      const vq = new Queue(dma, q, size, eventIdx, t.notifier(q));
      t.setupQueue(q, size, vq.addresses, vector);
      return vq;
    };
    const msix = this.#irqMode === "msix";
    for (let i = 0; i < pairs; i++) {
      const rx = setup(2 * i, msix ? 1 + i : NO_VECTOR), tx = setup(2 * i + 1, NO_VECTOR);
      // One buffer per descriptor, bound for good: the pool's owner record is the ring's (virtqueue.ts).
      const pool = (name: string, vq: Virtqueue, write: boolean) => {
        const pp = new PacketPool(name, dma.alloc(vq.size * SLOT), vq.size, SLOT, this.hdrLen);
        vq.bindPool(pp, SLOT, write);
        return pp;
      };
      const p: VirtioQueuePair = {
        rx,
        tx,
        rxPool: pool(`rx${i}`, rx, true),
        txPool: pool(`tx${i}`, tx, false),
        irq: msix ? irqs[1 + i] : irqs[0] ?? null,
        ids: new Uint16Array(Math.max(rx.size, tx.size)),
        lens: new Uint32Array(Math.max(rx.size, tx.size)),
        txLen: new Uint16Array(tx.size),
        stats: emptyStats(),
      };
      this.adopt(p.rxPool, p.txPool);
      this.pairs.push(p);
      tx.disableInterrupts(); // TX completions are reclaimed by polling
      rx.disableInterrupts();
    }
    if (ctrl) {
      this.#ctrl = new ControlQueue(setup(2 * maxPairs, NO_VECTOR), dma.alloc(CONTROL_MEM), this.name);
    }
  }

  /** Names of the negotiated features. */
  featureNames(): string[] {
    return featureNames(this.features, VIRTIO_NET);
  }

  /** The ring format in use: packed when both sides wanted VIRTIO_F_RING_PACKED (virtio 1.2 §2.8). */
  get ring(): RingFormat {
    return this.features & F.RING_PACKED ? "packed" : "split";
  }

  /** The transport in use. */
  get transport(): "modern" | "legacy" {
    return this.#t.kind;
  }

  /** MAC as text. */
  get macString(): string {
    return macToString(this.mac);
  }

  /** Link state as the device reports it. */
  linkUp(): boolean {
    if (!(this.features & NET_F.STATUS)) return true;
    return (this.#t.deviceConfig.read16(NET_CONFIG.STATUS) & NET_S_LINK_UP) !== 0;
  }

  /** Throws when the device signalled DEVICE_NEEDS_RESET or a queue broke. */
  override checkHealth(): void {
    const st = this.#t.status();
    if (st & STATUS.DEVICE_NEEDS_RESET) {
      throw new VirtioError(`${this.name}: device needs reset (status 0x${st.toString(16)})`);
    }
    super.checkHealth();
  }

  // ---- ring steps (NicCore) ----

  /** The error that broke this queue pair, or null. */
  protected fault(p: VirtioQueuePair): Error | null {
    return p.rx.broken ?? p.tx.broken;
  }

  /**
   * Post free RX buffers to the ring (buffer i goes out as descriptor i, already written) and publish them with
   * any {@link repost} queued.
   */
  protected refill(p: VirtioQueuePair): void {
    const n = p.rxPool.takeIndicesForDevice(p.ids, p.rx.size);
    if (n) p.rx.postSlots(p.ids, n);
    if (p.rx.kick()) p.stats.notifications++; // nothing queued: kick returns at once
  }

  /**
   * Receive (§5.1.6.4): pop used buffers a batch at a time, check each frame's length and num_buffers, deliver or
   * drop. A bad used entry ends the batch: the frames before it are delivered and the queue's error is thrown
   * after (receiveBatch gives them back). {@link collectInto} is the same loop by buffer index.
   */
  protected collect(p: VirtioQueuePair, out: PacketBuffer[], max: number): void {
    const vq = p.rx, pool = p.rxPool, hdr = this.hdrLen, mrg = this.#mergeable, ids = p.ids, lens = p.lens;
    const u16 = pool.u16, u8 = pool.bytes, maxLen = hdr + this.maxFrame, flagMask = this.#rxFlagMask;
    const got = vq.popSlots(ids, max, lens);
    let j = 0, d = 0, bytes = 0; // frames delivered into out[0..d), their used lengths (headers included)
    try {
      while (j < got) {
        const i = ids[j], len = lens[j++], slot = i * SLOT;
        if ((mrg && rxNumBuffers(u16, slot >> 1) !== 1) || len < hdr + 14 || len > maxLen) {
          j = this.#rxDrop(p, ids, i, j, got);
          continue;
        }
        const b = pool.buffers[i]; // popSlots made it the application's
        b.length = len - hdr;
        b.flags = u8[slot] & flagMask;
        out[d++] = b;
        bytes += len;
      }
    } catch (e) {
      // The device broke the ring mid-batch: the buffers popped and not yet handled go back to the pool.
      pool.recycleMany(ids.subarray(j, got), got - j);
      throw e;
    } finally {
      this.delivered(d, bytes - d * hdr); // the NIC core counts them, or gives them back if this threw
    }
    if (vq.broken) throw vq.broken; // after the good ones before the bad entry
  }

  /**
   * {@link collect} by buffer index: kept frames move down over dropped ones in the batch's arrays. A bad used
   * entry ends the batch: every frame taken goes back to the pool and the queue's error is thrown.
   */
  protected override collectInto(p: VirtioQueuePair, batch: PacketBatch, max: number): PacketPool {
    const vq = p.rx, pool = p.rxPool, hdr = this.hdrLen, mrg = this.#mergeable;
    const ids = batch.ids, lens = batch.lengths, flags = batch.flags;
    const u16 = pool.u16, u8 = pool.bytes, maxLen = hdr + this.maxFrame, flagMask = this.#rxFlagMask;
    const got = vq.popSlots(ids, max, lens);
    let j = 0, d = 0, bytes = 0; // frames kept in [0, d), their used lengths (headers included)
    try {
      while (j < got) {
        const i = ids[j], len = lens[j++], slot = i * SLOT;
        if ((mrg && rxNumBuffers(u16, slot >> 1) !== 1) || len < hdr + 14 || len > maxLen) {
          j = this.#rxDrop(p, ids, i, j, got);
          continue;
        }
        ids[d] = i; // d < j: the entries still to read are not overwritten
        lens[d] = len - hdr;
        flags[d++] = u8[slot] & flagMask;
        bytes += len;
      }
      if (vq.broken) throw vq.broken; // after the good ones before the bad entry
    } catch (e) {
      // Every buffer popped and not dropped goes back to the pool: the kept ones and those not yet read.
      pool.recycleMany(ids, d);
      pool.recycleMany(ids.subarray(j, got), got - j);
      d = bytes = 0;
      throw e;
    } finally {
      batch.count = d;
      this.delivered(d, bytes - d * hdr); // the NIC core counts them
    }
    return pool;
  }

  /**
   * Drop the frame in buffer `i` (read up to `ids[j]`) with every buffer it used; returns where
   * reading goes on. num_buffers (§5.1.6.4): the device publishes all buffers of a frame together, so the rest
   * must already be in the used ring (a count of 0 or beyond what is there is a protocol violation); a frame over
   * several buffers never fits one 2 KiB slot. Runts and frames over the negotiated maximum go too.
   */
  #rxDrop(p: VirtioQueuePair, ids: Uint16Array, i: number, j: number, got: number): number {
    const vq = p.rx, pool = p.rxPool;
    const nb = this.#mergeable ? rxNumBuffers(pool.u16, (i * SLOT) >> 1) : 1;
    pool.recycle(i);
    if (nb !== 1) {
      const left = got - j, beyond = nb - 1 > left && !vq.broken ? vq.pending() : 0;
      if (nb === 0 || nb - 1 > left + beyond) {
        vq.fail(`device says a frame spans ${nb} buffers, ${left + beyond} more are in the used ring`);
      }
      // Those beyond the batch first: a bad entry there throws while the caller still gives back ids[j..got).
      const inBatch = Math.min(nb - 1, left);
      for (let extra = nb - 1 - inBatch; extra > 0; extra--) pool.recycle(vq.popSlot());
      for (let e = 0; e < inBatch; e++) pool.recycle(ids[j++]);
      p.stats.rxDropped++;
      p.stats.rxDroppedBuffers += nb;
      return j;
    }
    p.stats.rxDropped++;
    p.stats.rxDroppedBuffers++;
    return j;
  }

  /**
   * Released RX buffers of this pair go straight back to the receive ring (descriptor i is buffer i, so each
   * fits): checked as the pool's release would (this pool, the application's), stopping at the first that is not.
   * Queued, not published: {@link refill} publishes them.
   */
  protected override repost(p: VirtioQueuePair, pkts: PacketBuffer[], n: number): number {
    const pool = p.rxPool, owners = pool.owners, ids = p.ids;
    if (pool.retired) return 0;
    let k = 0;
    for (; k < n; k++) {
      const b = pkts[k], i = b.index;
      if (b.pool !== pool || owners[i] !== APP) break;
      owners[i] = DEVICE;
      ids[k] = i;
    }
    if (k) p.rx.postSlots(ids, k); // published by the refill that follows (NicCore.release)
    return k;
  }

  /** {@link repost} by buffer index: the application's `ids[0..n)` of this pair's receive pool. */
  protected override repostIds(p: VirtioQueuePair, ids: Uint16Array, n: number): number {
    const pool = p.rxPool, owners = pool.owners;
    if (pool.retired) return 0;
    let k = 0;
    for (; k < n; k++) {
      const i = ids[k];
      if (owners[i] !== APP) break; // beyond the pool too: undefined
      owners[i] = DEVICE;
    }
    if (k) p.rx.postSlots(ids, k); // published by the refill that follows (NicCore.releaseBatch)
    return k;
  }

  /** Return completed TX buffers to their pool. */
  protected reclaim(p: VirtioQueuePair): number {
    const vq = p.tx, pool = p.txPool, ids = p.ids, sent = p.txLen, n = vq.popSlots(ids, vq.size);
    let bytes = 0;
    for (let k = 0; k < n; k++) bytes += sent[ids[k]];
    pool.recycleMany(ids, n);
    p.stats.txPackets += n;
    p.stats.txBytes += bytes;
    if (vq.broken) throw vq.broken; // after the good ones before it went back
    return n;
  }

  /**
   * Transmit (§5.1.6.2): header in the slot's headroom, one descriptor per frame, one doorbell per batch. One loop
   * per frame checks it (the application holds it, the frame-size rule), hands it to the device and writes its
   * header; the ring loop after it reads typed arrays only. A refused frame refuses the batch whole.
   */
  protected post(p: VirtioQueuePair, pkts: PacketBuffer[], n: number): number {
    const vq = p.tx, pool = p.txPool, hdr = this.hdrLen, u32 = pool.u32, csum = this.txChecksum;
    vq.verify(); // a broken or lying queue refuses before it takes any buffer
    const owners = pool.owners, ids = p.ids, lens = p.lens, sent = p.txLen, max = this.maxFrame;
    const tail = txHeaderTail(hdr);
    let k = 0;
    if (!pool.retired) {
      for (; k < n; k++) {
        const b = pkts[k], i = b.index, len = b.length;
        if (b.pool !== pool || owners[i] !== APP || !(len >= MIN_LEN && len <= max)) break;
        owners[i] = DEVICE;
        const w = i * SLOT_WORDS;
        if (csum && b.csumOffset !== 0) writeTxHeader(u32, w, tail, b.csumStart, b.csumOffset);
        else writePlainTxHeader(u32, w, tail);
        ids[k] = i;
        lens[k] = hdr + len;
        sent[i] = len;
      }
    }
    if (k < n) this.#refuseBatch(pool, pkts, n, k);
    // Every buffer the application holds has its descriptor free (bound queue): the batch always fits.
    vq.postFrames(ids, lens, n);
    if (n && vq.kick()) p.stats.notifications++;
    return n;
  }

  /** {@link post} by buffer index (NicCore.sendFrom): the same checks and ring work, no buffer object read. */
  protected override postIds(p: VirtioQueuePair, ids: Uint16Array, lens: Uint32Array, n: number): number {
    const vq = p.tx, pool = p.txPool, hdr = this.hdrLen, u32 = pool.u32, tail = txHeaderTail(hdr);
    vq.verify(); // a broken or lying queue refuses before it takes any buffer
    const owners = pool.owners, descLens = p.lens, sent = p.txLen, max = this.maxFrame;
    let k = 0;
    if (!pool.retired) {
      for (; k < n; k++) {
        const i = ids[k], len = lens[k];
        if (owners[i] !== APP || !(len >= MIN_LEN && len <= max)) break; // beyond the pool too: undefined
        owners[i] = DEVICE;
        writePlainTxHeader(u32, i * SLOT_WORDS, tail);
        descLens[k] = hdr + len;
        sent[i] = len;
      }
    }
    if (k < n) this.#refuseIds(pool, ids, lens, n, k);
    vq.postFrames(ids, descLens, n); // every buffer the application holds has its descriptor free
    if (vq.kick()) p.stats.notifications++;
    return n;
  }

  /** Give back the `k` frames {@link postIds} handed over, then throw why frame `k` was refused. */
  #refuseIds(pool: PacketPool, ids: Uint16Array, lens: Uint32Array, n: number, k: number): never {
    for (let j = 0; j < k; j++) pool.owners[ids[j]] = APP;
    this.checkLengths(lens, n); // the frame-size rule first, for the whole batch
    const i = ids[k], b = pool.buffers[i];
    if (!b) throw new PvdrvError(this.errorKind, `${pool.name}: ${i} is not a buffer index`);
    if (ids.subarray(0, k).includes(i)) {
      throw new PvdrvError(this.errorKind, `${pool.name}: buffer ${i} is in the batch twice`);
    }
    pool.checkHeld(b); // then who holds it: throws, as the loop above saw
    throw new VirtioError(`${this.name}: TX batch refused at frame ${k}`);
  }

  /** Give back the `k` frames {@link post} handed over, then throw what the NIC core and the pool say is wrong. */
  #refuseBatch(pool: PacketPool, pkts: PacketBuffer[], n: number, k: number): never {
    for (let j = 0; j < k; j++) pool.owners[pkts[j].index] = APP;
    this.checkFrames(pkts, n); // the frame-size rule first, for the whole batch
    pool.toDeviceMany(pkts, n); // then who holds each buffer: throws, as the loop above saw
    for (let j = 0; j < n; j++) pool.owners[pkts[j].index] = APP;
    throw new VirtioError(`${this.name}: TX batch refused at frame ${k}`);
  }

  /** Ask for an RX interrupt; true when frames already wait. */
  protected armIrq(p: VirtioQueuePair): boolean {
    return p.rx.enableInterrupts();
  }

  /** Stop RX interrupts (polling resumes). */
  protected disarmIrq(p: VirtioQueuePair): void {
    p.rx.disableInterrupts();
  }

  /** Acknowledge an INTx interrupt (read the ISR, unmask). */
  protected override ackIrq(): void {
    this.#bus.ackIntx();
  }

  // ---- control queue (§5.1.6.5) ----

  #ctrlCommand(cls: number, cmd: number, data: Uint8Array): void {
    if (!this.#ctrl) throw new VirtioError(`${this.name}: the device has no control queue (CTRL_VQ)`);
    this.#ctrl.command(cls, cmd, data);
  }

  #needs(feature: bigint, name: string): void {
    if (!(this.features & feature)) throw new VirtioError(`${this.name}: device has no ${name}`);
  }

  /** Promiscuous mode (needs CTRL_RX). */
  setPromiscuous(on: boolean): void {
    this.#needs(NET_F.CTRL_RX, "CTRL_RX");
    this.#ctrlCommand(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([on ? 1 : 0]));
  }

  /** Replace the unicast and multicast MAC filter tables (§5.1.6.5.2). */
  setMacFilter(unicast: Uint8Array[], multicast: Uint8Array[]): void {
    this.#needs(NET_F.CTRL_RX, "CTRL_RX");
    this.#ctrlCommand(CTRL.MAC, CTRL.MAC_TABLE_SET, macTableData(unicast, multicast));
  }

  /** Change the device's MAC (needs CTRL_MAC_ADDR). */
  setMac(mac: Uint8Array): void {
    this.#needs(NET_F.CTRL_MAC_ADDR, "CTRL_MAC_ADDR");
    this.#ctrlCommand(CTRL.MAC, CTRL.MAC_ADDR_SET, mac);
    this.mac.set(mac);
  }

  /** Stop the device and release its memory. */
  protected teardown(): void {
    const pools = this.pairs.splice(0).flatMap((p) => [p.rxPool, p.txPool]);
    stopDevice(this.#bus, this.#live, pools, this.#regions);
    this.#ctrl = null;
  }
}
