/**
 * An in-process virtio-net device: the device side of the modern virtio-PCI transport and of split virtqueues
 * (virtio 1.2 §4.1.4, §2.7, §5.1), reached through a model IOMMU ({@link ModelDmaAllocator.resolve}). The driver
 * under test runs unchanged against it. Tests can also make it misbehave.
 */
import { F, NET_F, STATUS } from "../../drivers/virtio/features.ts";
import { Chain, DeviceQueue, DeviceQueueError } from "../../drivers/virtio/device_queue.ts";
import {
  availEntry,
  availEventOffset,
  RING,
  usedElem,
  usedEventOffset,
} from "../../drivers/virtio/split_ring.ts";
import { COMMON_CFG as C, COMMON_CFG_LEN } from "../../drivers/virtio/pci.ts";
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
  /** The device side of the ring, made at first use after DRIVER_OK (null while the driver sets it up). */
  dq: DeviceQueue | null;
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
  /** Rules the driver broke on a queue (the device then set DEVICE_NEEDS_RESET). */
  readonly driverErrors: string[] = [];
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
      dq: null,
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
    if (off >= COMMON && off < COMMON + COMMON_CFG_LEN) {
      const q = this.#queues[this.#qsel];
      switch (off - COMMON) {
        case C.DF:
          return this.#dfSelect === 0
            ? Number(this.offered & 0xffffffffn)
            : this.#dfSelect === 1
            ? Number(this.offered >> 32n)
            : 0;
        case C.MSIX_CONFIG:
          return this.#msixConfig;
        case C.NUM_QUEUES:
          return this.#opts.numQueues ?? this.#queues.length;
        case C.STATUS:
          return this.#status;
        case C.CFG_GENERATION:
          return 0;
        case C.Q_SIZE:
          return q ? (this.#opts.queueSizeOf?.(this.#qsel) ?? q.size) : 0;
        case C.Q_MSIX:
          return q ? q.vector : 0xffff;
        case C.Q_ENABLE:
          return q?.enabled ? 1 : 0;
        case C.Q_NOFF:
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
    if (off < COMMON || off >= COMMON + COMMON_CFG_LEN) return;
    const q = this.#queues[this.#qsel];
    const r = off - COMMON;
    switch (r) {
      case C.DFSELECT:
        this.#dfSelect = v;
        break;
      case C.GFSELECT:
        this.#gfSelect = v;
        break;
      case C.GF:
        if (this.#gfSelect === 0) this.driverFeatures = (this.driverFeatures & ~0xffffffffn) | BigInt(v);
        else if (this.#gfSelect === 1) {
          this.driverFeatures = (this.driverFeatures & 0xffffffffn) | (BigInt(v) << 32n);
        }
        break;
      case C.MSIX_CONFIG:
        this.#msixConfig = v;
        break;
      case C.STATUS:
        this.#setStatus(v);
        break;
      case C.Q_SELECT:
        this.#qsel = v;
        break;
      case C.Q_SIZE:
        if (q) {
          const max = this.#opts.queueSizeOf?.(this.#qsel) ?? q.max;
          if (v === 0 || v > max || (v & (v - 1))) throw new Error(`bad queue size ${v}`);
          q.size = v;
          q.dq = null;
        }
        break;
      case C.Q_MSIX:
        if (q) q.vector = v < this.vectors.length || this.#irqKind !== "msix" ? v : 0xffff;
        break;
      case C.Q_ENABLE:
        if (q) {
          if (v === 1 && q.enabled) this.enabledTwice.push(this.#qsel);
          q.enabled = v === 1;
          q.dq = null;
        }
        break;
      case C.Q_DESC:
      case C.Q_DESC + 4:
      case C.Q_DRIVER:
      case C.Q_DRIVER + 4:
      case C.Q_DEVICE:
      case C.Q_DEVICE + 4: {
        if (!q) break;
        const field = r < C.Q_DRIVER ? "desc" : r < C.Q_DEVICE ? "driver" : "device";
        const hi = (r & 4) !== 0;
        const cur = q[field];
        q[field] = hi
          ? (cur % 0x1_0000_0000) + v * 0x1_0000_0000
          : Math.floor(cur / 0x1_0000_0000) * 0x1_0000_0000 + v;
        q.dq = null;
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
    if ((v & STATUS.FEATURES_OK) && !(this.#status & STATUS.FEATURES_OK)) {
      const extra = this.driverFeatures & ~this.offered;
      if (extra || this.#opts.rejectFeatures) v &= ~STATUS.FEATURES_OK; // refuse FEATURES_OK
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
  /** Queue `qi`'s device side (its ring areas resolved once, after the driver set them up). */
  #dq(qi: number): DeviceQueue {
    const q = this.#queues[qi];
    q.dq ??= new DeviceQueue(
      qi,
      q.size,
      (addr, len) => this.#mem(addr, len),
      q,
      (this.driverFeatures & F.RING_EVENT_IDX) !== 0n,
    );
    return q.dq;
  }
  #pushUsed(qi: number, id: number, len: number): void {
    if (this.#dq(qi).putUsed(id, len)) this.#interrupt(qi);
  }
  #interrupt(qi: number): void {
    const q = this.#queues[qi];
    this.interrupts[qi]++;
    this.#isr |= 1;
    if (this.#irqKind === "msix" && q.vector !== 0xffff) this.vectors[q.vector]?.signal();
    else if (this.#irqKind === "intx") this.intx.signal();
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
    try {
      return this.#process(qi);
    } catch (e) {
      return this.#driverBroke(e, 0);
    }
  }

  /**
   * The driver broke a queue's rules (a real device calls virtio_error: DEVICE_NEEDS_RESET, §2.1.2): recorded in
   * {@link VirtioNetModel.driverErrors}, and the device stops using the queue.
   */
  #driverBroke<T>(e: unknown, result: T): T {
    if (!(e instanceof DeviceQueueError)) throw e;
    this.driverErrors.push(e.message);
    this.#status |= STATUS.DEVICE_NEEDS_RESET;
    return result;
  }

  #process(qi: number): number {
    const q = this.#queues[qi];
    if (!q.enabled || !(this.#status & STATUS.DRIVER_OK)) return 0;
    const dq = this.#dq(qi), c = this.#chain;
    const ctrl = qi === this.#ctrlQueue();
    let n = 0;
    // RX buffers (even queues but the control queue) wait for deliver().
    while ((ctrl || qi % 2 === 1) && dq.take(c)) {
      if (ctrl) {
        const out = c.write.indexOf(false), inn = c.write.indexOf(true);
        const cmd = this.#mem(c.addr[out], c.len[out]);
        const rec = { cls: cmd[0], cmd: cmd[1], data: cmd.slice(2) };
        this.ctrl.push(rec);
        if (rec.cls === 0 && rec.cmd === 0) this.promiscuous = rec.data[0] === 1;
        this.#mem(c.addr[inn], 1)[0] = this.#opts.ctrlAck ?? 0;
        this.#pushUsed(qi, c.head, 1);
      } else {
        const bytes = new Uint8Array(c.readable + c.writable);
        let o = 0;
        for (let i = 0; i < c.count; i++) {
          bytes.set(this.#mem(c.addr[i], c.len[i]), o);
          o += c.len[i];
        }
        const h = this.#hdrLen;
        this.sentHeaders[(qi - 1) / 2].push(bytes.slice(0, h));
        this.sent[(qi - 1) / 2].push(bytes.slice(h));
        this.#pushUsed(qi, c.head, 0);
      }
      n++;
    }
    dq.publishAvailEvent();
    return n;
  }

  /** RX buffers the driver has made available on pair `pair`. */
  rxAvailable(pair = 0): number {
    return this.#dq(2 * pair).available();
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
    try {
      return this.#deliver(frame, pair, opts);
    } catch (e) {
      return this.#driverBroke(e, false);
    }
  }

  #deliver(
    frame: Uint8Array,
    pair: number,
    opts: { flags?: number; usedLen?: number; numBuffers?: number },
  ): boolean {
    const qi = 2 * pair, q = this.#queues[qi];
    if (!q.enabled || !(this.#status & STATUS.DRIVER_OK)) return false;
    const dq = this.#dq(qi), c = this.#chain;
    const h = this.#hdrLen;
    const total = new Uint8Array(h + frame.length);
    total[0] = opts.flags ?? 0;
    total.set(frame, h);
    // Only the first descriptor of each RX chain is used (pvdrv posts one buffer per chain).
    const bufs: { head: number; cap: number; addr: number }[] = [];
    let need = total.length;
    while (need > 0) {
      if (!dq.peek(c, bufs.length)) return false;
      bufs.push({ head: c.head, cap: c.len[0], addr: c.addr[0] });
      need -= c.len[0];
      if (need > 0 && !(this.driverFeatures & NET_F.MRG_RXBUF)) return false;
    }
    if (h === 12) new DataView(total.buffer).setUint16(10, opts.numBuffers ?? bufs.length, true);
    dq.skip(bufs.length);
    let o = 0;
    for (const b of bufs) {
      const n = Math.min(b.cap, total.length - o);
      this.#mem(b.addr, n).set(total.subarray(o, o + n));
      o += n;
      this.#pushUsed(qi, b.head, opts.usedLen ?? n);
    }
    dq.publishAvailEvent();
    return true;
  }

  // ---- fast paths for benchmarks: ring work only, no copies, no checks ----
  readonly #chain = new Chain();
  #fast = new Map<
    number,
    { avail: Uint16Array; used32: Uint32Array; used16: Uint16Array; dq: DeviceQueue }
  >();
  #fastViews(qi: number) {
    let v = this.#fast.get(qi);
    if (!v) {
      const q = this.#queues[qi], dq = this.#dq(qi);
      const a = this.#mem(q.driver, usedEventOffset(q.size) + 2),
        u = this.#mem(q.device, availEventOffset(q.size) + 2);
      v = {
        dq,
        avail: new Uint16Array(a.buffer, a.byteOffset, a.byteLength >> 1),
        used32: new Uint32Array(u.buffer, u.byteOffset, u.byteLength >> 2),
        used16: new Uint16Array(u.buffer, u.byteOffset, 2),
      };
      this.#fast.set(qi, v);
    }
    return v;
  }
  /** Complete every available buffer of queue `qi` with length `len` (TX: 0). Returns how many. */
  fastComplete(qi: number, len: number): number {
    const { dq, avail, used32, used16 } = this.#fastViews(qi);
    const end = avail[RING.IDX >> 1], mask = dq.size - 1;
    let n = 0;
    while (dq.lastAvail !== end) {
      const e = usedElem(dq.usedIdx & mask) >> 2;
      used32[e] = avail[availEntry(dq.lastAvail & mask) >> 1];
      used32[e + 1] = len;
      dq.lastAvail = (dq.lastAvail + 1) & 0xffff;
      dq.usedIdx = (dq.usedIdx + 1) & 0xffff;
      n++;
    }
    used16[RING.IDX >> 1] = dq.usedIdx;
    return n;
  }

  // ---- misbehaviour ----
  /** Write a used entry the driver did not expect (hostile device). */
  forgeUsed(qi: number, id: number, len: number): void {
    this.#pushUsed(qi, id, len);
  }
  /** Move used.idx forward by `n` without entries. */
  jumpUsedIdx(qi: number, n: number): void {
    this.#dq(qi).jumpUsed(n);
  }
  /** Signal DEVICE_NEEDS_RESET. */
  needsReset(): void {
    this.#status |= STATUS.DEVICE_NEEDS_RESET;
  }
}
