/**
 * virtio-net (virtio 1.2 §5.1) over any {@link VirtioTransport}: feature negotiation, RX/TX queue pairs with
 * zero-copy buffer pools, the control queue (promiscuous, all-multicast, MAC filter, queue pairs), link status,
 * polling and interrupt modes.
 *
 * Every frame is one descriptor: the virtio_net_hdr and the frame share a 2 KiB slot (VERSION_1 / ANY_LAYOUT),
 * so chains and indirect descriptors would only add work on this path (indirect tables are not used).
 * @module
 */
import type { PciFunction } from "../pci/device.ts";
import type { IrqSource } from "../../ffi/irq.ts";
import type { DmaRegion } from "../../ffi/dma.ts";
import {
  emptyStats,
  macToString,
  type Nic,
  type PacketBuffer,
  PacketPool,
  type QueueStats,
  releaseTo,
} from "../nic.ts";
import { releaseOwned } from "../packet_pool.ts";
import { F, featureNames, NET_F, STATUS } from "./features.ts";
import { negotiate, NO_VECTOR, openTransport, VirtioError, type VirtioTransport } from "./transport.ts";
import { SplitQueue } from "./virtqueue.ts";

const SLOT = 2048;
const HDR_F_NEEDS_CSUM = 1;
const CTRL_RX = 0, CTRL_RX_PROMISC = 0, CTRL_RX_ALLMULTI = 1;
const CTRL_MAC = 1, CTRL_MAC_TABLE_SET = 0, CTRL_MAC_ADDR_SET = 1;
const CTRL_MQ = 4, CTRL_MQ_VQ_PAIRS_SET = 0;
const CTRL_OK = 0;
const LINK_UP = 1;
/** virtio_net_hdr flags an application sees: NEEDS_CSUM (1) and DATA_VALID (2), §5.1.6; the same values as RX_CSUM_*. */
const RX_FLAGS = 3;

/** Interrupt delivery for a virtio-net device. */
export type IrqMode = "poll" | "msix" | "intx";

/** Options for {@link VirtioNet.open}. */
export interface VirtioNetOptions {
  /** Queue pairs wanted (capped by the device's max_virtqueue_pairs; 1 without MQ). */
  queuePairs?: number;
  /** Ring size wanted (power of two; capped by the device; legacy devices impose theirs). */
  queueSize?: number;
  /** "poll" (default), "msix" (VFIO) or "intx" (VFIO or UIO). */
  irq?: IrqMode;
  /** Transport choice for transitional devices. */
  transport?: "auto" | "modern" | "legacy";
  /** Feature bits to refuse even if offered (tests, workarounds). */
  disable?: bigint;
  /** Enable promiscuous mode (needs CTRL_VQ + CTRL_RX). */
  promiscuous?: boolean;
  /** Close the PCI function with the NIC. */
  ownsPci?: boolean;
}

/** The features pvdrv asks for. */
export const WANTED_FEATURES = F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | F.ANY_LAYOUT | NET_F.MAC |
  NET_F.STATUS | NET_F.MRG_RXBUF | NET_F.CSUM | NET_F.GUEST_CSUM | NET_F.CTRL_VQ | NET_F.CTRL_RX | NET_F.MQ |
  NET_F.CTRL_MAC_ADDR | NET_F.MTU;

interface Pair {
  rx: SplitQueue;
  tx: SplitQueue;
  rxPool: PacketPool;
  txPool: PacketPool;
  rxByHead: (PacketBuffer | null)[];
  txByHead: (PacketBuffer | null)[];
  irq: IrqSource | null;
  stats: QueueStats;
}

/** A virtio-net device driven from userspace. */
export class VirtioNet implements Nic {
  readonly name: string;
  readonly mac: Uint8Array;
  readonly mtu: number;
  readonly queues: number;
  readonly maxFrame: number;
  /** Negotiated features. */
  readonly features: bigint;
  /** virtio_net_hdr length: 12 with VERSION_1 or MRG_RXBUF, else 10. */
  readonly hdrLen: number;
  readonly #t: VirtioTransport;
  readonly #pci: PciFunction;
  readonly #pairs: Pair[] = [];
  readonly #irqMode: IrqMode;
  #ctrl: SplitQueue | null = null;
  #ctrlMem: DmaRegion | null = null;
  /** Every DMA region this NIC allocated, so a failed open or a close frees each one. */
  readonly #regions: DmaRegion[] = [];
  /** Every buffer pool this NIC made (buffers from them may be released even after close). */
  readonly #pools = new WeakSet<PacketPool>();
  #closed = false;
  #live = false; // DRIVER_OK was set: queues may be in use by the device
  readonly #ownsPci: boolean;

  /** Bring up the device behind `pci` (virtio 1.2 §3.1.1, §5.1.5). */
  static open(pci: PciFunction, opts: VirtioNetOptions = {}): VirtioNet {
    return new VirtioNet(pci, opts);
  }

  private constructor(pci: PciFunction, opts: VirtioNetOptions) {
    this.#pci = pci;
    this.#ownsPci = opts.ownsPci ?? false;
    this.#irqMode = opts.irq ?? "poll";
    const cfg = pci.parseConfig();
    const isNet = (cfg.deviceId === 0x1041) || (cfg.deviceId === 0x1000 && cfg.subsystemId === 1);
    if (cfg.vendorId !== 0x1af4 || !isNet) {
      throw new VirtioError(
        `${pci.address} (${cfg.vendorId.toString(16)}:${
          cfg.deviceId.toString(16)
        }) is not a virtio-net device`,
      );
    }
    const wantPairs = opts.queuePairs ?? 1;
    const t = openTransport(pci, opts.transport ?? "auto", this.#irqMode === "msix");
    this.#t = t;
    try {
      // Reset before anything else, bus mastering included: a device left running by a process that died (SIGKILL)
      // may still DMA into memory that process freed, and with UIO no IOMMU stops it (virtio 1.2 §3.1.1 step 1).
      t.reset();
      pci.enableBusMaster();
      let irqs: IrqSource[] = [];
      if (this.#irqMode === "msix") irqs = pci.irqs("msix", 1 + wantPairs);
      else if (this.#irqMode === "intx") irqs = pci.irqs("intx", 1);
      if (t.legacy && pci.access === "vfio") {
        throw new VirtioError(
          `${pci.address}: the legacy interface cannot use an IOMMU (no ACCESS_PLATFORM): use the modern transport or UIO`,
        );
      }
      // VFIO hands the device IOVAs: it must translate them (ACCESS_PLATFORM), or it would DMA to the wrong place.
      const required = t.legacy ? 0n : F.VERSION_1 | (pci.access === "vfio" ? F.ACCESS_PLATFORM : 0n);
      let wanted = WANTED_FEATURES & ~(opts.disable ?? 0n);
      if (t.legacy) wanted &= 0xffffffffn;
      try {
        this.features = negotiate(t, wanted, required);
      } catch (e) {
        if (
          pci.access === "vfio" && /required/.test((e as Error).message) &&
          !(t.deviceFeatures() & F.ACCESS_PLATFORM)
        ) {
          throw new VirtioError(
            `${pci.address} does not offer VIRTIO_F_ACCESS_PLATFORM, so it would bypass the IOMMU: ` +
              `give QEMU iommu_platform=on for this device, or use UIO`,
          );
        }
        throw e;
      }
      const f = this.features;
      this.hdrLen = (f & (F.VERSION_1 | NET_F.MRG_RXBUF)) ? 12 : 10;
      const dc = t.deviceConfig;
      // virtio_net_config (virtio 1.2 §5.1.4): mac[6], status u16, max_virtqueue_pairs u16, mtu u16.
      this.mac = new Uint8Array(6);
      if (f & NET_F.MAC) { for (let i = 0; i < 6; i++) this.mac[i] = dc.read8(i); }
      else {
        crypto.getRandomValues(this.mac);
        this.mac[0] = (this.mac[0] & 0xfe) | 0x02; // locally administered unicast
      }
      const maxPairs = f & NET_F.MQ ? dc.read16(8) : 1;
      // §5.1.4: 1..0x8000 pairs; the control queue follows them (index 2 * pairs), and queue indices are 16 bits.
      if (maxPairs < 1 || maxPairs > 0x8000 || 2 * maxPairs > 0xfffe) {
        throw new VirtioError(
          `device reports max_virtqueue_pairs ${maxPairs}: its queues (and the control queue after them) ` +
            `cannot be addressed with 16-bit queue indices`,
        );
      }
      const mtu = f & NET_F.MTU ? dc.read16(10) : 1500;
      if (mtu < 68) throw new VirtioError(`device reports MTU ${mtu}`);
      this.maxFrame = Math.min(SLOT - this.hdrLen, mtu + 18);
      this.mtu = Math.min(mtu, this.maxFrame - 18);
      const pairs = Math.min(wantPairs, maxPairs);
      this.queues = pairs;
      this.name = `virtio-net ${pci.address}`;
      if (this.#irqMode === "msix" && t.setConfigVector(0) !== 0) {
        throw new VirtioError("device refused MSI-X vector 0 for config");
      }

      const eventIdx = (f & F.RING_EVENT_IDX) !== 0n;
      const numQueues = t.numQueues();
      // The control queue sits after all max_virtqueue_pairs pairs (§5.1.2), so with one the device has them all.
      const ctrl = (f & NET_F.CTRL_VQ) !== 0n;
      const needQueues = ctrl ? 2 * maxPairs + 1 : 2 * pairs;
      if (!t.legacy && numQueues < needQueues) {
        throw new VirtioError(
          `device reports num_queues ${numQueues} but ${ctrl ? maxPairs : pairs} queue pair(s)` +
            `${ctrl ? " and a control queue" : ""} need ${needQueues}`,
        );
      }
      // Every DMA region goes through here, so a failed open or close frees it.
      const dma = {
        kind: pci.dma.kind,
        alloc: (n: number) => {
          const r = pci.dma.alloc(n);
          this.#regions.push(r);
          return r;
        },
        close: () => {},
      };
      const programmed = new Set<number>();
      const setup = (q: number, vector: number): SplitQueue => {
        if (q > 0xffff || (!t.legacy && q >= numQueues)) {
          throw new VirtioError(`device has ${numQueues} queues, needs queue ${q}`);
        }
        if (programmed.has(q)) throw new VirtioError(`queue ${q} would be programmed twice`);
        programmed.add(q);
        const max = t.queueMaxSize(q);
        if (max === 0) throw new VirtioError(`queue ${q} is not available (queue_size 0)`);
        let size = t.legacy ? max : Math.min(max, opts.queueSize ?? 256);
        if (!t.legacy) { while (size & (size - 1)) size &= size - 1; // largest power of two not above
         }
        const vq = new SplitQueue(dma, q, size, eventIdx, t.notifier(q));
        t.setupQueue(q, size, vq.addresses, vector);
        return vq;
      };
      for (let i = 0; i < pairs; i++) {
        const rxVector = this.#irqMode === "msix" ? 1 + i : NO_VECTOR;
        const rx = setup(2 * i, rxVector), tx = setup(2 * i + 1, NO_VECTOR);
        const rxPool = new PacketPool(
          `rx${i}`,
          dma.alloc(2 * rx.size * SLOT),
          2 * rx.size,
          SLOT,
          this.hdrLen,
        );
        const txPool = new PacketPool(
          `tx${i}`,
          dma.alloc(2 * tx.size * SLOT),
          2 * tx.size,
          SLOT,
          this.hdrLen,
        );
        this.#pools.add(rxPool);
        this.#pools.add(txPool);
        this.#pairs.push({
          rx,
          tx,
          rxPool,
          txPool,
          rxByHead: new Array(rx.size).fill(null),
          txByHead: new Array(tx.size).fill(null),
          irq: this.#irqMode === "msix" ? irqs[1 + i] : this.#irqMode === "intx" ? irqs[0] : null,
          stats: emptyStats(),
        });
        tx.disableInterrupts(); // TX completions are reclaimed by polling
        rx.disableInterrupts();
      }
      if (ctrl) {
        this.#ctrl = setup(2 * maxPairs, NO_VECTOR);
        this.#ctrl.disableInterrupts();
        this.#ctrlMem = dma.alloc(4096);
      }
      t.setStatus(
        STATUS.ACKNOWLEDGE | STATUS.DRIVER | (t.legacy ? 0 : STATUS.FEATURES_OK) | STATUS.DRIVER_OK,
      );
      this.#live = true;
      if (t.status() & STATUS.DEVICE_NEEDS_RESET) {
        throw new VirtioError("device needs reset right after DRIVER_OK");
      }
      for (let i = 0; i < pairs; i++) this.#refill(this.#pairs[i]);
      if (pairs > 1) this.#command(CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, new Uint8Array([pairs & 0xff, pairs >> 8]));
      if (opts.promiscuous) this.setPromiscuous(true);
    } catch (e) {
      this.#teardown();
      throw e;
    }
  }

  /** Names of the negotiated features. */
  featureNames(): string[] {
    return featureNames(this.features);
  }

  /** The transport in use. */
  get transport(): "modern" | "legacy" {
    return this.#t.kind;
  }

  /** MAC as text. */
  get macString(): string {
    return macToString(this.mac);
  }

  linkUp(): boolean {
    if (!(this.features & NET_F.STATUS)) return true;
    return (this.#t.deviceConfig.read16(6) & LINK_UP) !== 0;
  }

  /** Throws when the device signalled DEVICE_NEEDS_RESET or a queue broke. */
  checkHealth(): void {
    const st = this.#t.status();
    if (st & STATUS.DEVICE_NEEDS_RESET) {
      throw new VirtioError(`${this.name}: device needs reset (status 0x${st.toString(16)})`);
    }
    for (const p of this.#pairs) {
      if (p.rx.broken) throw p.rx.broken;
      if (p.tx.broken) throw p.tx.broken;
    }
  }

  #pair(q: number): Pair {
    if (this.#closed) throw new Error(`${this.name} is closed`);
    const p = this.#pairs[q];
    if (!p) throw new RangeError(`${this.name}: queue ${q} out of range (0..${this.queues - 1})`);
    return p;
  }

  #refill(p: Pair): void {
    const vq = p.rx, pool = p.rxPool;
    let added = 0;
    while (vq.freeCount > 0) {
      const b = pool.takeForDevice();
      if (!b) break;
      const head = vq.add(b.deviceAddress, SLOT, true);
      p.rxByHead[head] = b;
      added++;
    }
    if (added && vq.kick()) p.stats.notifications++;
  }

  receiveBatch(out: PacketBuffer[], max: number, queue = 0): number {
    const p = this.#pair(queue);
    const vq = p.rx, hdr = this.hdrLen, mrg = (this.features & NET_F.MRG_RXBUF) !== 0n;
    const u16 = p.rxPool.u16, bytes = p.rxPool.bytes, maxLen = hdr + this.maxFrame;
    const flagMask = this.features & NET_F.GUEST_CSUM ? RX_FLAGS : 0;
    let n = vq.pending(), k = 0;
    try {
      while (n > 0 && k < max) {
        n--;
        const head = vq.popUsed();
        const b = p.rxByHead[head]!;
        p.rxByHead[head] = null;
        const len = vq.lastLen;
        // num_buffers (§5.1.6.4): the device publishes all buffers of a frame together, so the rest must already be
        // in the used ring; a count of 0 or beyond what is there is a protocol violation.
        const nb = mrg ? u16[(b.slotOffset >> 1) + 5] : 1;
        if (nb === 0 || nb - 1 > n) {
          p.rxPool.put(b, "device");
          vq.fail(`device says a frame spans ${nb} buffers, ${n} more are in the used ring`);
        }
        if (len < hdr + 14 || len > maxLen || nb !== 1) {
          // Runts, frames longer than the negotiated maximum, and frames spread over several buffers (they never fit
          // one 2 KiB slot) are dropped with every buffer they used.
          p.rxPool.put(b, "device");
          for (let extra = nb - 1; extra > 0; extra--, n--) {
            const h = vq.popUsed();
            p.rxPool.put(p.rxByHead[h]!, "device");
            p.rxByHead[h] = null;
          }
          p.stats.rxDropped++;
          p.stats.rxDroppedBuffers += nb;
          continue;
        }
        b.length = len - hdr;
        b.flags = bytes[b.slotOffset] & flagMask;
        p.rxPool.toApp(b);
        out[k++] = b;
        p.stats.rxPackets++;
        p.stats.rxBytes += b.length;
      }
    } catch (e) {
      // The queue broke part-way: frames already moved to `out` go back, so the caller holds nothing it was not told of.
      for (let i = 0; i < k; i++) p.rxPool.put(out[i], "app");
      throw e;
    }
    try {
      this.#refill(p);
    } catch (e) {
      // The ring broke while refilling: the frames in `out` are good and go to the caller; the next call throws.
      if (k === 0) throw e;
    }
    return k;
  }

  release(pkts: PacketBuffer[], n: number, queue = 0): void {
    // Buffers held across close go back to their retired pools, which free the memory with the last one.
    if (this.#closed) return releaseOwned(pkts, n, this.#pools, this.name);
    const p = this.#pair(queue);
    releaseTo(pkts, n, p.rxPool, p.txPool);
    if (!p.rx.broken) this.#refill(p);
  }

  reclaimTx(queue = 0): number {
    const p = this.#pair(queue);
    const vq = p.tx;
    const n = vq.pending();
    for (let i = 0; i < n; i++) {
      const head = vq.popUsed();
      const b = p.txByHead[head]!;
      p.txByHead[head] = null;
      p.stats.txPackets++;
      p.stats.txBytes += b.length;
      p.txPool.put(b, "device");
    }
    return n;
  }

  allocTx(out: PacketBuffer[], n: number, queue = 0): number {
    const p = this.#pair(queue);
    if (p.txPool.available < n) this.reclaimTx(queue);
    return p.txPool.takeMany(out, n);
  }

  sendBatch(pkts: PacketBuffer[], n: number, queue = 0): number {
    const p = this.#pair(queue);
    const vq = p.tx, hdr = this.hdrLen, u16 = p.txPool.u16, csum = (this.features & NET_F.CSUM) !== 0n;
    vq.verify(); // a broken or lying queue refuses before it takes any buffer
    if (vq.freeCount < n) this.reclaimTx(queue);
    let k = 0;
    for (; k < n; k++) {
      if (vq.freeCount === 0) break;
      const b = pkts[k];
      if (!(b.length >= 14 && b.length <= this.maxFrame)) {
        throw new RangeError(`${this.name}: frame length ${b.length} outside 14..${this.maxFrame}`);
      }
      p.txPool.toDevice(b);
      // virtio_net_hdr (§5.1.6): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
      const h = b.slotOffset >> 1;
      if (csum && b.csumOffset) {
        u16[h] = HDR_F_NEEDS_CSUM;
        u16[h + 3] = b.csumStart;
        u16[h + 4] = b.csumOffset;
      } else {
        u16[h] = 0;
        u16[h + 3] = 0;
        u16[h + 4] = 0;
      }
      u16[h + 1] = 0;
      u16[h + 2] = 0;
      if (hdr === 12) u16[h + 5] = 0;
      const head = vq.add(b.deviceAddress, hdr + b.length, false);
      p.txByHead[head] = b;
    }
    if (k && vq.kick()) p.stats.notifications++;
    return k;
  }

  async waitRx(queue = 0): Promise<void> {
    const p = this.#pair(queue);
    if (!p.irq) {
      throw new Error(`${this.name} was opened in polling mode: open it with irq "msix" or "intx" to wait`);
    }
    if (p.rx.enableInterrupts()) {
      p.rx.disableInterrupts();
      return;
    }
    await p.irq.wait();
    p.stats.interrupts++;
    if (this.#irqMode === "intx") {
      this.#t.readIsr(); // reading acknowledges (§4.1.4.5)
      this.#pci.unmaskIntx();
    }
    p.rx.disableInterrupts();
  }

  stats(): QueueStats[] {
    return this.#pairs.map((p) => ({ ...p.stats }));
  }

  /** Send a control command (§5.1.6.5) and wait for the device's answer. */
  #command(cls: number, cmd: number, data: Uint8Array): void {
    const vq = this.#ctrl, mem = this.#ctrlMem;
    if (!vq || !mem) throw new VirtioError(`${this.name}: the device has no control queue (CTRL_VQ)`);
    if (data.length > 2000) throw new RangeError("control command too long");
    mem.bytes[0] = cls;
    mem.bytes[1] = cmd;
    mem.bytes.set(data, 2);
    mem.bytes[2048] = 0xff;
    const a = mem.deviceAddress;
    const head = vq.addChain([{ addr: a, len: 2 + data.length, write: false }, {
      addr: a + 2048,
      len: 1,
      write: true,
    }]);
    if (head < 0) throw new VirtioError("control queue full");
    vq.kick();
    const deadline = performance.now() + 2000;
    while (vq.pending() === 0) {
      if (performance.now() > deadline) {
        throw new VirtioError(`${this.name}: control command ${cls}/${cmd} timed out`);
      }
    }
    vq.popUsed();
    const ack = mem.bytes[2048];
    if (ack !== CTRL_OK) {
      throw new VirtioError(`${this.name}: device rejected control command ${cls}/${cmd} (ack ${ack})`);
    }
  }

  /** Promiscuous mode (needs CTRL_RX). */
  setPromiscuous(on: boolean): void {
    if (!(this.features & NET_F.CTRL_RX)) throw new VirtioError(`${this.name}: device has no CTRL_RX`);
    this.#command(CTRL_RX, CTRL_RX_PROMISC, new Uint8Array([on ? 1 : 0]));
  }

  /** All-multicast mode (needs CTRL_RX). */
  setAllMulticast(on: boolean): void {
    if (!(this.features & NET_F.CTRL_RX)) throw new VirtioError(`${this.name}: device has no CTRL_RX`);
    this.#command(CTRL_RX, CTRL_RX_ALLMULTI, new Uint8Array([on ? 1 : 0]));
  }

  /** Replace the unicast and multicast MAC filter tables (§5.1.6.5.2). */
  setMacFilter(unicast: Uint8Array[], multicast: Uint8Array[]): void {
    if (!(this.features & NET_F.CTRL_RX)) throw new VirtioError(`${this.name}: device has no CTRL_RX`);
    const all = [unicast, multicast];
    const data = new Uint8Array(8 + 6 * (unicast.length + multicast.length));
    const dv = new DataView(data.buffer);
    let o = 0;
    for (const t of all) {
      dv.setUint32(o, t.length, true);
      o += 4;
      for (const m of t) {
        if (m.length !== 6) throw new RangeError("MAC addresses are 6 bytes");
        data.set(m, o);
        o += 6;
      }
    }
    this.#command(CTRL_MAC, CTRL_MAC_TABLE_SET, data);
  }

  /** Change the device's MAC (needs CTRL_MAC_ADDR). */
  setMac(mac: Uint8Array): void {
    if (!(this.features & NET_F.CTRL_MAC_ADDR)) {
      throw new VirtioError(`${this.name}: device has no CTRL_MAC_ADDR`);
    }
    this.#command(CTRL_MAC, CTRL_MAC_ADDR_SET, mac);
    this.mac.set(mac);
  }

  #teardown(): void {
    try {
      // A live device is reset, which stops all DMA before its memory goes away; one that never reached
      // DRIVER_OK is told the driver gave up (FAILED, virtio 1.2 §3.1.1).
      if (this.#live) this.#t?.reset();
      else this.#t?.setStatus(this.#t.status() | STATUS.FAILED);
    } catch { /* device gone: memory is still released below */ }
    try {
      this.#pci.disableIrqs();
    } catch { /* ignore */ }
    // The device is stopped: pools keep the memory under buffers the application holds until it releases them;
    // every other region goes back now.
    const pooled = new Set<DmaRegion>();
    for (const p of this.#pairs.splice(0)) {
      for (const pool of [p.rxPool, p.txPool]) {
        pool.retire();
        pooled.add(pool.region);
      }
    }
    for (const r of this.#regions.splice(0)) if (!pooled.has(r)) r.free();
    this.#ctrl = null;
    this.#ctrlMem = null;
    if (this.#ownsPci) this.#pci.close();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#teardown();
  }
}
