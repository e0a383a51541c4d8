/**
 * An in-process virtio-net device: the device side of the modern virtio-PCI transport and of split virtqueues
 * (virtio 1.2 §4.1.4, §2.7, §5.1), reached through a model IOMMU ({@link ModelDmaAllocator.resolve}). The driver
 * under test runs unchanged against it. Tests can also make it misbehave.
 */
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { ModelIrq } from "./irq.ts";
import { ModelDmaAllocator } from "../../hal/dma.ts";
import { type MmioRegion, ModelRegion, SubRegion } from "../../hal/mmio.ts";
import {
  NO_VECTOR,
  type QueueAddresses,
  type VirtioBus,
  type VirtioTransport,
} from "../../drivers/virtio/transport.ts";
import type { IrqSource } from "../../hal/irq.ts";
import type { IrqKind, PciFunction } from "../../hal/pci.ts";

const COMMON = 0x0000, ISR = 0x1000, DEVCFG = 0x2000, NOTIFY = 0x3000, MULT = 4;

/** Model configuration. */
export interface ModelOptions {
  /** Offered features (default: everything pvdrv wants). */
  features?: bigint;
  /** max_virtqueue_pairs. */
  maxPairs?: number;
  /** Maximum queue size. */
  queueMax?: number;
  /** MAC. */
  mac?: number[];
  /** MTU in config (with NET_F.MTU). */
  mtu?: number;
  /** Process queues when notified (default true). */
  autoProcess?: boolean;
  /** Refuse FEATURES_OK whatever the driver picks. */
  rejectFeatures?: boolean;
  /** max_virtqueue_pairs as the config reports it (default: maxPairs). */
  configMaxPairs?: number;
  /** num_queues as common config reports it (default: the queues the model has). */
  numQueues?: number;
  /** queue_size reported per queue (default: queueMax). */
  queueSizeOf?: (q: number) => number;
  /** notify_off_multiplier in the notify capability (default 4). */
  notifyMultiplier?: number;
  /** Control commands get this ack (default 0, VIRTIO_NET_OK). */
  ctrlAck?: number;
  /** DMA memory in SharedArrayBuffers (a Worker may race the driver). */
  sharedDma?: boolean;
}

interface Q {
  size: number;
  max: number;
  desc: number;
  driver: number;
  device: number;
  enabled: boolean;
  vector: number;
  lastAvail: number;
  used: number;
}

/** What the device did with a control command. */
export interface CtrlRecord {
  cls: number;
  cmd: number;
  data: Uint8Array;
}

/** The virtio-net device model. */
export class VirtioNetModel {
  readonly dma: ModelDmaAllocator;
  readonly config: ModelRegion;
  readonly bar0: ModelRegion;
  readonly offered: bigint;
  readonly maxPairs: number;
  /** Frames the driver sent, per TX queue (headers stripped). */
  readonly sent: Uint8Array[][] = [];
  /** Headers of sent frames, per TX queue. */
  readonly sentHeaders: Uint8Array[][] = [];
  /** Control commands received. */
  readonly ctrl: CtrlRecord[] = [];
  /** Notifications received, per queue. */
  readonly notifies: number[] = [];
  /** Interrupts raised, per queue. */
  readonly interrupts: number[] = [];
  /** MSI-X vectors (vector index → source). */
  readonly vectors: ModelIrq[] = [];
  readonly intx = new ModelIrq();
  autoProcess: boolean;
  /** Device-level events in order ("reset", "bus master"). */
  readonly order: string[] = [];
  /** Make doorbell writes throw (a device that went away). */
  failNotify = false;
  /** Queues the driver enabled a second time (it must never program one queue twice). */
  readonly enabledTwice: number[] = [];
  promiscuous = false;
  linkUp = true;
  driverFeatures = 0n;
  #dfSelect = 0;
  #gfSelect = 0;
  #status = 0;
  #qsel = 0;
  #isr = 0;
  #msixConfig = 0xffff;
  #queues: Q[];
  readonly #opts: ModelOptions;
  #irqKind: IrqKind | null = null;

  constructor(opts: ModelOptions = {}) {
    this.#opts = opts;
    this.dma = new ModelDmaAllocator(opts.sharedDma ?? false);
    this.offered = opts.features ??
      (F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | NET_F.MAC | NET_F.STATUS |
        NET_F.MRG_RXBUF | NET_F.CSUM | NET_F.GUEST_CSUM | NET_F.CTRL_VQ | NET_F.CTRL_RX | NET_F.MQ |
        NET_F.MTU |
        NET_F.CTRL_MAC_ADDR);
    this.maxPairs = opts.maxPairs ?? 4;
    this.autoProcess = opts.autoProcess ?? true;
    const nq = 2 * this.maxPairs + 1;
    this.#queues = Array.from({ length: nq }, () => this.#newQ(opts.queueMax ?? 256));
    for (let i = 0; i < nq; i++) {
      this.notifies.push(0);
      this.interrupts.push(0);
    }
    for (let i = 0; i < this.maxPairs; i++) {
      this.sent.push([]);
      this.sentHeaders.push([]);
    }
    this.config = this.#buildConfig();
    this.bar0 = new ModelRegion("model BAR0", 0x4000, {
      read: (off, w) => this.#read(off, w),
      write: (off, w, v) => this.#write(off, w, v),
    });
    const mac = opts.mac ?? [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
    mac.forEach((b, i) => this.bar0.view.setUint8(DEVCFG + i, b));
    this.bar0.view.setUint16(DEVCFG + 8, opts.configMaxPairs ?? this.maxPairs, true);
    this.bar0.view.setUint16(DEVCFG + 10, opts.mtu ?? 1500, true);
  }

  #newQ(max: number): Q {
    return {
      size: max,
      max,
      desc: 0,
      driver: 0,
      device: 0,
      enabled: false,
      vector: 0xffff,
      lastAvail: 0,
      used: 0,
    };
  }

  #buildConfig(): ModelRegion {
    const c = new ModelRegion("model config", 256);
    const v = c.view;
    v.setUint16(0, 0x1af4, true);
    v.setUint16(2, 0x1041, true);
    v.setUint16(6, 0x10, true); // capability list
    v.setUint32(8, 0x02000001, true);
    v.setUint16(0x2c, 0x1af4, true);
    v.setUint16(0x2e, 0x1100, true);
    v.setUint8(0x34, 0x40);
    // virtio_pci_cap: vndr, next, len, type, bar, id, pad[2], offset, length (virtio 1.2 §4.1.4)
    const cap = (at: number, next: number, len: number, type: number, off: number, length: number) => {
      v.setUint8(at, 0x09);
      v.setUint8(at + 1, next);
      v.setUint8(at + 2, len);
      v.setUint8(at + 3, type);
      v.setUint8(at + 4, 0);
      v.setUint32(at + 8, off, true);
      v.setUint32(at + 12, length, true);
    };
    cap(0x40, 0x50, 16, 1, COMMON, 0x38);
    cap(0x50, 0x64, 20, 2, NOTIFY, 0x1000);
    v.setUint32(0x60, this.#opts.notifyMultiplier ?? MULT, true);
    cap(0x64, 0x74, 16, 3, ISR, 4);
    cap(0x74, 0x00, 16, 4, DEVCFG, 0x100);
    return c;
  }

  /** The PCI function a driver opens. */
  pci(): PciFunction {
    return {
      address: "model:00.0",
      iommu: false,
      via: "model",
      config: this.config,
      dma: this.dma,
      barSize: (i: number) => (i === 0 ? 0x4000 : 0),
      bar: (i: number): MmioRegion => {
        if (i !== 0) throw new Error(`model has no BAR${i}`);
        return this.bar0;
      },
      enableBusMaster: () => void this.order.push("bus master"),
      irqs: (kind: IrqKind, n: number): IrqSource[] => {
        this.#irqKind = kind;
        if (kind === "intx") return [this.intx];
        this.vectors.length = 0;
        for (let k = 0; k < n; k++) this.vectors.push(new ModelIrq());
        return this.vectors;
      },
      irqKinds: () => ["msix", "intx"] as IrqKind[],
      unmaskIntx: () => {},
      disableIrqs: () => {
        this.#irqKind = null;
      },
      close: () => {},
    };
  }

  /**
   * The same device behind a fake legacy transport (a {@link VirtioTransport} on the model's state, no registers):
   * 32 feature bits, fixed queue sizes, no FEATURES_OK step (virtio 1.2 §4.1.4.10 semantics). Drivers take it as
   * any other {@link VirtioBus}.
   */
  legacyBus(): VirtioBus {
    const fixed = (q: number) => this.#queues[q]?.max ?? 0;
    const transport: VirtioTransport = {
      kind: "legacy",
      legacy: true,
      deviceConfig: new SubRegion(this.bar0, DEVCFG, 0x100, "fake legacy device config"),
      reset: () => this.#setStatus(0),
      status: () => this.#status,
      setStatus: (v: number) => this.#setStatus(v & ~8), // no FEATURES_OK in legacy
      deviceFeatures: () => this.offered & 0xffffffffn,
      setDriverFeatures: (f: bigint) => {
        if (f >> 32n) throw new Error("legacy devices have 32 feature bits");
        this.driverFeatures = f;
      },
      numQueues: () => 0,
      queueMaxSize: fixed,
      setupQueue: (q: number, size: number, a: QueueAddresses) => {
        const Q = this.#queues[q];
        if (!Q || size !== Q.max) {
          throw new Error(`legacy queue ${q} has fixed size ${fixed(q)}, asked ${size}`);
        }
        if (a.desc % 4096 !== 0) throw new Error("legacy queue address must be page aligned");
        Object.assign(Q, { size, desc: a.desc, driver: a.driver, device: a.device, enabled: true });
      },
      notifier: (q: number) => () => {
        this.notifies[q]++;
        if (this.autoProcess || q === this.#ctrlQueue()) this.process(q);
      },
      setConfigVector: () => NO_VECTOR,
      readIsr: () => {
        const v = this.#isr;
        this.#isr = 0;
        return v;
      },
      configGeneration: () => 0,
      close: () => {},
    };
    return {
      name: "model-legacy",
      deviceType: 1,
      transport,
      dma: this.dma,
      iommu: false,
      irqs: (mode) => (mode === "intx" ? [this.intx] : []),
      ackIntx: () => void transport.readIsr(),
      enableBusMaster: () => void this.order.push("bus master"),
      disableIrqs: () => {},
      close: () => {},
    };
  }

  get status(): number {
    return this.#status;
  }

  queue(q: number): Q {
    return this.#queues[q];
  }

  // ---- registers (virtio 1.2 §4.1.4.3) ----
  #read(off: number, _w: number): number | undefined {
    if (off >= COMMON && off < COMMON + 0x38) {
      const q = this.#queues[this.#qsel];
      switch (off - COMMON) {
        case 0x04:
          return this.#dfSelect === 0
            ? Number(this.offered & 0xffffffffn)
            : this.#dfSelect === 1
            ? Number(this.offered >> 32n)
            : 0;
        case 0x10:
          return this.#msixConfig;
        case 0x12:
          return this.#opts.numQueues ?? this.#queues.length;
        case 0x14:
          return this.#status;
        case 0x15:
          return 0;
        case 0x18:
          return q ? (this.#opts.queueSizeOf?.(this.#qsel) ?? q.size) : 0;
        case 0x1a:
          return q ? q.vector : 0xffff;
        case 0x1c:
          return q?.enabled ? 1 : 0;
        case 0x1e:
          return this.#qsel;
      }
      return undefined;
    }
    if (off === ISR) {
      const v = this.#isr;
      this.#isr = 0;
      return v;
    }
    if (off === DEVCFG + 6) return this.linkUp ? 1 : 0;
    return undefined;
  }

  #write(off: number, _w: number, v: number): void {
    if (off >= NOTIFY && off < NOTIFY + 0x1000) {
      if (this.failNotify) throw new Error("doorbell write failed (device gone)");
      const q = (off - NOTIFY) / (this.#opts.notifyMultiplier || MULT);
      if (v !== q) throw new Error(`notify for queue ${q} wrote ${v}`);
      this.notifies[q]++;
      if (this.autoProcess || q === this.#ctrlQueue()) this.process(q); // control commands are answered at once
      return;
    }
    if (off < COMMON || off >= COMMON + 0x38) return;
    const q = this.#queues[this.#qsel];
    const r = off - COMMON;
    switch (r) {
      case 0x00:
        this.#dfSelect = v;
        break;
      case 0x08:
        this.#gfSelect = v;
        break;
      case 0x0c:
        if (this.#gfSelect === 0) this.driverFeatures = (this.driverFeatures & ~0xffffffffn) | BigInt(v);
        else if (this.#gfSelect === 1) {
          this.driverFeatures = (this.driverFeatures & 0xffffffffn) | (BigInt(v) << 32n);
        }
        break;
      case 0x10:
        this.#msixConfig = v;
        break;
      case 0x14:
        this.#setStatus(v);
        break;
      case 0x16:
        this.#qsel = v;
        break;
      case 0x18:
        if (q) {
          const max = this.#opts.queueSizeOf?.(this.#qsel) ?? q.max;
          if (v === 0 || v > max || (v & (v - 1))) throw new Error(`bad queue size ${v}`);
          q.size = v;
        }
        break;
      case 0x1a:
        if (q) q.vector = v < this.vectors.length || this.#irqKind !== "msix" ? v : 0xffff;
        break;
      case 0x1c:
        if (q) {
          if (v === 1 && q.enabled) this.enabledTwice.push(this.#qsel);
          q.enabled = v === 1;
        }
        break;
      case 0x20:
      case 0x24:
      case 0x28:
      case 0x2c:
      case 0x30:
      case 0x34: {
        if (!q) break;
        const field = r < 0x28 ? "desc" : r < 0x30 ? "driver" : "device";
        const hi = (r & 4) !== 0;
        const cur = q[field];
        q[field] = hi
          ? (cur % 0x1_0000_0000) + v * 0x1_0000_0000
          : Math.floor(cur / 0x1_0000_0000) * 0x1_0000_0000 + v;
        break;
      }
    }
  }

  #setStatus(v: number): void {
    if (v === 0) {
      this.order.push("reset");
      this.#status = 0;
      this.driverFeatures = 0n;
      this.#queues = this.#queues.map((q) => this.#newQ(q.max));
      return;
    }
    if ((v & 8) && !(this.#status & 8)) {
      const extra = this.driverFeatures & ~this.offered;
      if (extra || this.#opts.rejectFeatures) v &= ~8; // refuse FEATURES_OK
    }
    this.#status = v;
  }

  // ---- rings (virtio 1.2 §2.7) ----
  #mem(addr: number, len: number): Uint8Array {
    return this.dma.resolve(addr, len);
  }
  #dv(addr: number, len: number): DataView {
    const b = this.#mem(addr, len);
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  #availIdx(q: Q): number {
    return this.#dv(q.driver + 2, 2).getUint16(0, true);
  }
  #desc(q: Q, i: number) {
    if (i >= q.size) throw new Error(`descriptor index ${i} out of range`);
    const d = this.#dv(q.desc + 16 * i, 16);
    return {
      addr: d.getUint32(0, true) + d.getUint32(4, true) * 0x1_0000_0000,
      len: d.getUint32(8, true),
      flags: d.getUint16(12, true),
      next: d.getUint16(14, true),
    };
  }
  #chain(q: Q, head: number) {
    const out = [];
    let i = head;
    for (let n = 0; n <= q.size; n++) {
      const d = this.#desc(q, i);
      out.push(d);
      if (!(d.flags & 1)) return out;
      i = d.next;
    }
    throw new Error("descriptor chain loops");
  }
  #pushUsed(qi: number, id: number, len: number): void {
    const q = this.#queues[qi];
    const d = this.#dv(q.device, 4 + 8 * q.size + 2);
    const slot = q.used % q.size;
    d.setUint32(4 + 8 * slot, id, true);
    d.setUint32(8 + 8 * slot, len, true);
    const old = q.used;
    q.used = (q.used + 1) & 0xffff;
    d.setUint16(2, q.used, true);
    this.#maybeInterrupt(qi, old);
  }
  #maybeInterrupt(qi: number, old: number): void {
    const q = this.#queues[qi];
    const eventIdx = (this.driverFeatures & F.RING_EVENT_IDX) !== 0n;
    let fire: boolean;
    if (eventIdx) {
      const ev = this.#dv(q.driver + 4 + 2 * q.size, 2).getUint16(0, true);
      fire = ((q.used - ev - 1) & 0xffff) < ((q.used - old) & 0xffff);
    } else {
      fire = (this.#dv(q.driver, 2).getUint16(0, true) & 1) === 0;
    }
    if (!fire) return;
    this.interrupts[qi]++;
    this.#isr |= 1;
    if (this.#irqKind === "msix" && q.vector !== 0xffff) this.vectors[q.vector]?.signal();
    else if (this.#irqKind === "intx") this.intx.signal();
  }
  #setAvailEvent(q: Q): void {
    if (this.driverFeatures & F.RING_EVENT_IDX) {
      this.#dv(q.device + 4 + 8 * q.size, 2).setUint16(0, q.lastAvail, true);
    }
  }
  get #hdrLen(): number {
    return this.driverFeatures & (F.VERSION_1 | NET_F.MRG_RXBUF) ? 12 : 10;
  }
  #ctrlQueue(): number {
    // §5.1.2: the control queue is 2 without MQ, else 2 * max_virtqueue_pairs.
    return this.driverFeatures & NET_F.MQ ? 2 * this.maxPairs : 2;
  }

  /** Consume what the driver made available on queue `qi` (TX and control queues). */
  process(qi: number): number {
    const q = this.#queues[qi];
    if (!q.enabled || !(this.#status & 4)) return 0;
    let n = 0;
    while (q.lastAvail !== this.#availIdx(q)) {
      const head = this.#dv(q.driver + 4 + 2 * (q.lastAvail % q.size), 2).getUint16(0, true);
      q.lastAvail = (q.lastAvail + 1) & 0xffff;
      const chain = this.#chain(q, head);
      if (qi === this.#ctrlQueue()) {
        const out = chain.filter((d) => !(d.flags & 2)), inn = chain.filter((d) => d.flags & 2);
        const cmd = this.#mem(out[0].addr, out[0].len);
        const rec = { cls: cmd[0], cmd: cmd[1], data: cmd.slice(2) };
        this.ctrl.push(rec);
        if (rec.cls === 0 && rec.cmd === 0) this.promiscuous = rec.data[0] === 1;
        this.#mem(inn[0].addr, 1)[0] = this.#opts.ctrlAck ?? 0;
        this.#pushUsed(qi, head, 1);
      } else if (qi % 2 === 1) {
        const bytes = new Uint8Array(chain.reduce((s, d) => s + d.len, 0));
        let o = 0;
        for (const d of chain) {
          bytes.set(this.#mem(d.addr, d.len), o);
          o += d.len;
        }
        const h = this.#hdrLen;
        this.sentHeaders[(qi - 1) / 2].push(bytes.slice(0, h));
        this.sent[(qi - 1) / 2].push(bytes.slice(h));
        this.#pushUsed(qi, head, 0);
      } else {
        q.lastAvail = (q.lastAvail - 1) & 0xffff; // RX buffers wait for deliver()
        break;
      }
      n++;
    }
    this.#setAvailEvent(q);
    return n;
  }

  /** RX buffers the driver has made available on pair `pair`. */
  rxAvailable(pair = 0): number {
    const q = this.#queues[2 * pair];
    return (this.#availIdx(q) - q.lastAvail) & 0xffff;
  }

  /**
   * Deliver a frame to RX queue `pair` as the device would (header + frame, num_buffers); frames larger than one
   * buffer are spread over several with MRG_RXBUF. Returns false when no buffer is available (dropped).
   */
  deliver(
    frame: Uint8Array,
    pair = 0,
    opts: { flags?: number; usedLen?: number; numBuffers?: number } = {},
  ): boolean {
    const qi = 2 * pair, q = this.#queues[qi];
    if (!q.enabled || !(this.#status & 4)) return false;
    const h = this.#hdrLen;
    const total = new Uint8Array(h + frame.length);
    total[0] = opts.flags ?? 0;
    total.set(frame, h);
    const bufs: { head: number; cap: number; addr: number }[] = [];
    let need = total.length, avail = this.rxAvailable(pair), la = q.lastAvail;
    while (need > 0) {
      if (avail-- <= 0) return false;
      const head = this.#dv(q.driver + 4 + 2 * (la % q.size), 2).getUint16(0, true);
      la = (la + 1) & 0xffff;
      const d = this.#chain(q, head)[0];
      bufs.push({ head, cap: d.len, addr: d.addr });
      need -= d.len;
      if (need > 0 && !(this.driverFeatures & NET_F.MRG_RXBUF)) return false;
    }
    if (h === 12) new DataView(total.buffer).setUint16(10, opts.numBuffers ?? bufs.length, true);
    q.lastAvail = la;
    let o = 0;
    for (const b of bufs) {
      const n = Math.min(b.cap, total.length - o);
      this.#mem(b.addr, n).set(total.subarray(o, o + n));
      o += n;
      this.#pushUsed(qi, b.head, opts.usedLen ?? n);
    }
    this.#setAvailEvent(q);
    return true;
  }

  // ---- fast paths for benchmarks: ring work only, no copies, no checks ----
  #fast = new Map<number, { avail: Uint16Array; used32: Uint32Array; used16: Uint16Array; q: Q }>();
  #fastViews(qi: number) {
    let v = this.#fast.get(qi);
    if (!v) {
      const q = this.#queues[qi];
      const a = this.#mem(q.driver, 6 + 2 * q.size), u = this.#mem(q.device, 6 + 8 * q.size);
      v = {
        q,
        avail: new Uint16Array(a.buffer, a.byteOffset, 3 + q.size),
        used32: new Uint32Array(u.buffer, u.byteOffset, 1 + 2 * q.size),
        used16: new Uint16Array(u.buffer, u.byteOffset, 2),
      };
      this.#fast.set(qi, v);
    }
    return v;
  }
  /** Complete every available buffer of queue `qi` with length `len` (TX: 0). Returns how many. */
  fastComplete(qi: number, len: number): number {
    const { q, avail, used32, used16 } = this.#fastViews(qi);
    const end = avail[1], mask = q.size - 1;
    let n = 0;
    while (q.lastAvail !== end) {
      const slot = q.used & mask;
      used32[1 + 2 * slot] = avail[2 + (q.lastAvail & mask)];
      used32[2 + 2 * slot] = len;
      q.lastAvail = (q.lastAvail + 1) & 0xffff;
      q.used = (q.used + 1) & 0xffff;
      n++;
    }
    used16[1] = q.used;
    return n;
  }

  // ---- misbehaviour ----
  /** Write a used entry the driver did not expect (hostile device). */
  forgeUsed(qi: number, id: number, len: number): void {
    this.#pushUsed(qi, id, len);
  }
  /** Move used.idx forward by `n` without entries. */
  jumpUsedIdx(qi: number, n: number): void {
    const q = this.#queues[qi];
    q.used = (q.used + n) & 0xffff;
    this.#dv(q.device + 2, 2).setUint16(0, q.used, true);
  }
  /** Signal DEVICE_NEEDS_RESET. */
  needsReset(): void {
    this.#status |= 64;
  }
}
