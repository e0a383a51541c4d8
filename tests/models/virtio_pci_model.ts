/**
 * The device side of the modern virtio-PCI transport (virtio 1.2 §4.1.4) and of split virtqueues (§2.7), for any
 * device type: config space with the virtio capabilities, BAR0's common config, ISR, notify and device-config
 * registers, a fake legacy transport (§4.1.4.10 semantics), and each queue's {@link DeviceQueue}, reached through
 * a model IOMMU ({@link ModelDmaAllocator.resolve}). A device model (virtio-net, virtio-blk) extends it with its
 * queues' work and its device config. Drivers run unchanged against it; tests can make it misbehave.
 */
import { F, STATUS } from "../../drivers/virtio/features.ts";
import { DeviceQueue, DeviceQueueError, type DeviceRing } from "../../drivers/virtio/device_queue.ts";
import { PackedDeviceQueue } from "../../drivers/virtio/packed_device_queue.ts";
import { PvdrvError } from "../../hal/errors.ts";
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

/** BAR0 layout of the model: common config, ISR, device config, notify (each in its own 4 KiB). */
export const BAR = { COMMON: 0x0000, ISR: 0x1000, DEVCFG: 0x2000, NOTIFY: 0x3000 } as const;
const MULT = 4;
/** ISR bits (virtio 1.2 §4.1.4.5): a queue interrupt, a configuration change. */
export const ISR_QUEUE = 1, ISR_CONFIG = 2;

/** Options every virtio-PCI model takes. */
export interface PciModelOptions {
  /** Maximum queue size. */
  queueMax?: number;
  /** Process queues when notified (default true). */
  autoProcess?: boolean;
  /** Refuse FEATURES_OK whatever the driver picks. */
  rejectFeatures?: boolean;
  /** num_queues as common config reports it (default: the queues the model has). */
  numQueues?: number;
  /** queue_size reported per queue (default: queueMax). */
  queueSizeOf?: (q: number) => number;
  /** notify_off_multiplier in the notify capability (default 4). */
  notifyMultiplier?: number;
  /** DMA memory in SharedArrayBuffers (a Worker may race the driver). */
  sharedDma?: boolean;
}

/** One queue's registers as the driver programmed them. */
export interface ModelQueue {
  size: number;
  max: number;
  desc: number;
  driver: number;
  device: number;
  enabled: boolean;
  vector: number;
  /** The device side of the ring, made at first use after DRIVER_OK (null while the driver sets it up). */
  dq: DeviceRing | null;
}

/** A virtio device model on the PCI transport. */
export abstract class VirtioPciModel {
  readonly dma: ModelDmaAllocator;
  readonly config: ModelRegion;
  readonly bar0: ModelRegion;
  readonly offered: bigint;
  /** Notifications received, per queue. */
  readonly notifies: number[] = [];
  /** Interrupts raised, per queue. */
  readonly interrupts: number[] = [];
  /** Configuration-change interrupts raised. */
  configInterrupts = 0;
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
  driverFeatures = 0n;
  /** config_generation (bumped by {@link configChanged}). */
  generation = 0;
  protected devStatus = 0;
  protected queues: ModelQueue[];
  readonly #popts: PciModelOptions;
  #dfSelect = 0;
  #gfSelect = 0;
  #qsel = 0;
  #isr = 0;
  #msixConfig = 0xffff;
  #irqKind: IrqKind | null = null;

  /** A device of virtio type `deviceType` offering `features`, with `queueCount` queues. */
  constructor(
    readonly deviceType: number,
    features: bigint,
    queueCount: number,
    opts: PciModelOptions,
  ) {
    this.#popts = opts;
    this.dma = new ModelDmaAllocator(opts.sharedDma ?? false);
    this.offered = features;
    this.autoProcess = opts.autoProcess ?? true;
    this.queues = Array.from({ length: queueCount }, () => this.#newQ(opts.queueMax ?? 256));
    for (let i = 0; i < queueCount; i++) {
      this.notifies.push(0);
      this.interrupts.push(0);
    }
    this.config = this.#buildConfig();
    this.bar0 = new ModelRegion("model BAR0", 0x4000, {
      read: (off, w) => this.#read(off, w),
      write: (off, w, v) => this.#write(off, w, v),
    });
  }

  // ---- what a device type supplies ----

  /** Serve what the driver made available on queue `qi`; returns how many chains. May throw DeviceQueueError. */
  protected abstract serve(qi: number): number;

  /**
   * Consume what the driver made available on queue `qi`; returns how many chains. A queue the driver broke
   * stops here, as {@link VirtioPciModel.driverBroke} says.
   */
  process(qi: number): number {
    try {
      return this.serve(qi);
    } catch (e) {
      return this.driverBroke(e, 0);
    }
  }
  /** A device-config register read (offset within device config), or undefined for the stored bytes. */
  protected readDeviceConfig(_off: number): number | undefined {
    return undefined;
  }
  /** Whether a notification on queue `qi` is processed at once even without autoProcess (control queues). */
  protected processAlways(_qi: number): boolean {
    return false;
  }

  /** Device config as bytes (a device type fills its fields here). */
  get deviceConfig(): DataView {
    return new DataView(this.bar0.view.buffer, this.bar0.view.byteOffset + BAR.DEVCFG, 0x100);
  }

  #newQ(max: number): ModelQueue {
    return { size: max, max, desc: 0, driver: 0, device: 0, enabled: false, vector: 0xffff, dq: null };
  }

  #buildConfig(): ModelRegion {
    const c = new ModelRegion("model config", 256);
    const v = c.view;
    v.setUint16(0, 0x1af4, true);
    v.setUint16(2, 0x1040 + this.deviceType, true);
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
    cap(0x40, 0x50, 16, 1, BAR.COMMON, 0x38);
    cap(0x50, 0x64, 20, 2, BAR.NOTIFY, 0x1000);
    v.setUint32(0x60, this.#popts.notifyMultiplier ?? MULT, true);
    cap(0x64, 0x74, 16, 3, BAR.ISR, 4);
    cap(0x74, 0x00, 16, 4, BAR.DEVCFG, 0x100);
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
    const fixed = (q: number) => this.queues[q]?.max ?? 0;
    const transport: VirtioTransport = {
      kind: "legacy",
      legacy: true,
      deviceConfig: new SubRegion(this.bar0, BAR.DEVCFG, 0x100, "fake legacy device config"),
      reset: () => this.#setStatus(0),
      status: () => this.devStatus,
      setStatus: (v: number) => this.#setStatus(v & ~STATUS.FEATURES_OK), // no FEATURES_OK in legacy
      deviceFeatures: () => this.offered & 0xffffffffn,
      setDriverFeatures: (f: bigint) => {
        if (f >> 32n) throw new Error("legacy devices have 32 feature bits");
        this.driverFeatures = f;
      },
      numQueues: () => 0,
      queueMaxSize: fixed,
      setupQueue: (q: number, size: number, a: QueueAddresses) => {
        const Q = this.queues[q];
        if (!Q || size !== Q.max) {
          throw new Error(`legacy queue ${q} has fixed size ${fixed(q)}, asked ${size}`);
        }
        if (a.desc % 4096 !== 0) throw new Error("legacy queue address must be page aligned");
        Object.assign(Q, { size, desc: a.desc, driver: a.driver, device: a.device, enabled: true });
      },
      notifier: (q: number) => () => {
        this.notifies[q]++;
        if (this.autoProcess || this.processAlways(q)) this.process(q);
      },
      setConfigVector: () => NO_VECTOR,
      readIsr: () => {
        const v = this.#isr;
        this.#isr = 0;
        return v;
      },
      configGeneration: () => this.generation,
      close: () => {},
    };
    return {
      name: "model-legacy",
      deviceType: this.deviceType,
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

  /** The device status register. */
  get status(): number {
    return this.devStatus;
  }

  /** Queue `q`'s registers. */
  queue(q: number): ModelQueue {
    return this.queues[q];
  }

  // ---- registers (virtio 1.2 §4.1.4.3) ----
  #read(off: number, _w: number): number | undefined {
    if (off >= BAR.COMMON && off < BAR.COMMON + COMMON_CFG_LEN) {
      const q = this.queues[this.#qsel];
      switch (off - BAR.COMMON) {
        case C.DF:
          return this.#dfSelect === 0
            ? Number(this.offered & 0xffffffffn)
            : this.#dfSelect === 1
            ? Number(this.offered >> 32n)
            : 0;
        case C.MSIX_CONFIG:
          return this.#msixConfig;
        case C.NUM_QUEUES:
          return this.#popts.numQueues ?? this.queues.length;
        case C.STATUS:
          return this.devStatus;
        case C.CFG_GENERATION:
          return this.generation;
        case C.Q_SIZE:
          return q ? (this.#popts.queueSizeOf?.(this.#qsel) ?? q.size) : 0;
        case C.Q_MSIX:
          return q ? q.vector : 0xffff;
        case C.Q_ENABLE:
          return q?.enabled ? 1 : 0;
        case C.Q_NOFF:
          return this.#qsel;
      }
      return undefined;
    }
    if (off === BAR.ISR) {
      const v = this.#isr;
      this.#isr = 0;
      return v;
    }
    if (off >= BAR.DEVCFG && off < BAR.DEVCFG + 0x100) return this.readDeviceConfig(off - BAR.DEVCFG);
    return undefined;
  }

  #write(off: number, _w: number, v: number): void {
    if (off >= BAR.NOTIFY && off < BAR.NOTIFY + 0x1000) {
      if (this.failNotify) throw new Error("doorbell write failed (device gone)");
      // The multiplier the notify capability says now (tests may corrupt it); with 0 every queue shares one
      // address and the value names the queue (virtio 1.2 §4.1.4.4).
      const mult = this.config.view.getUint32(0x60, true);
      const q = mult === 0 ? v : (off - BAR.NOTIFY) / mult;
      if (q !== v || !Number.isInteger(q) || !this.queues[q]) {
        this.driverErrors.push(`notify at BAR offset ${off} wrote ${v}: no such queue there`);
        return; // a device ignores a doorbell that names no queue
      }
      this.notifies[q]++;
      if (this.autoProcess || this.processAlways(q)) this.process(q);
      return;
    }
    if (off < BAR.COMMON || off >= BAR.COMMON + COMMON_CFG_LEN) return;
    const q = this.queues[this.#qsel];
    const r = off - BAR.COMMON;
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
          const max = this.#popts.queueSizeOf?.(this.#qsel) ?? q.max;
          if (v === 0 || v > max || (v & (v - 1))) {
            // The driver broke the rules (§4.1.4.3.2): the device keeps the old size and asks for a reset.
            this.driverErrors.push(`queue ${this.#qsel}: bad queue size ${v}`);
            this.devStatus |= STATUS.DEVICE_NEEDS_RESET;
            break;
          }
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
      this.devStatus = 0;
      this.driverFeatures = 0n;
      this.queues = this.queues.map((q) => this.#newQ(q.max));
      this.onReset();
      return;
    }
    if ((v & STATUS.FEATURES_OK) && !(this.devStatus & STATUS.FEATURES_OK)) {
      const extra = this.driverFeatures & ~this.offered;
      if (extra || this.#popts.rejectFeatures) v &= ~STATUS.FEATURES_OK; // refuse FEATURES_OK
    }
    this.devStatus = v;
  }

  /** The device was reset (a device type forgets its per-connection state). */
  protected onReset(): void {}

  // ---- rings (virtio 1.2 §2.7) ----

  /** Guest memory at `addr` (through the model IOMMU). */
  protected mem(addr: number, len: number): Uint8Array {
    return this.dma.resolve(addr, len);
  }

  /** Whether queue `qi` is live: enabled, and the driver said DRIVER_OK. */
  protected live(qi: number): boolean {
    const q = this.queues[qi];
    return q !== undefined && q.enabled && (this.devStatus & STATUS.DRIVER_OK) !== 0;
  }

  /** Queue `qi`'s device side (its ring areas resolved once, after the driver set them up). */
  protected dq(qi: number): DeviceRing {
    const q = this.queues[qi];
    q.dq ??= new (this.packed ? PackedDeviceQueue : DeviceQueue)(
      qi,
      q.size,
      (addr, len) => this.mem(addr, len),
      q,
      (this.driverFeatures & F.RING_EVENT_IDX) !== 0n,
    );
    return q.dq;
  }

  /** Whether the driver negotiated packed rings (VIRTIO_F_RING_PACKED, §2.8). */
  get packed(): boolean {
    return (this.driverFeatures & F.RING_PACKED) !== 0n;
  }

  /** Put a used element on queue `qi` and interrupt when the driver wants one. */
  protected pushUsed(qi: number, id: number, len: number): void {
    if (this.dq(qi).putUsed(id, len)) this.interrupt(qi);
  }

  /** Raise queue `qi`'s interrupt (its MSI-X vector, or INTx with the ISR's queue bit). */
  protected interrupt(qi: number): void {
    const q = this.queues[qi];
    this.interrupts[qi]++;
    this.#isr |= ISR_QUEUE;
    if (this.#irqKind === "msix" && q.vector !== 0xffff) this.vectors[q.vector]?.signal();
    else if (this.#irqKind === "intx") this.intx.signal();
  }

  /** The device changed its config (§2.5.1): a new generation and the configuration interrupt. */
  configChanged(): void {
    this.generation = (this.generation + 1) & 0xff;
    this.configInterrupts++;
    this.#isr |= ISR_CONFIG;
    if (this.#irqKind === "msix" && this.#msixConfig !== 0xffff) this.vectors[this.#msixConfig]?.signal();
    else if (this.#irqKind === "intx") this.intx.signal();
  }

  /**
   * The driver broke a queue's rules (a real device calls virtio_error: DEVICE_NEEDS_RESET, §2.1.2): recorded in
   * {@link VirtioPciModel.driverErrors}, and the device stops using the queue.
   */
  protected driverBroke<T>(e: unknown, result: T): T {
    // A packed ring's descriptors are written by both sides: one a hostile model scribbled on may name unmapped
    // memory, which a device treats as the driver's error (QEMU: virtio_error). Split rings' never are.
    const dmaFault = this.packed && e instanceof PvdrvError && e.kind === "dma";
    if (!(e instanceof DeviceQueueError) && !dmaFault) throw e;
    this.driverErrors.push(e.message);
    this.devStatus |= STATUS.DEVICE_NEEDS_RESET;
    return result;
  }

  // ---- misbehaviour ----

  /** Write a used entry the driver did not expect (hostile device). */
  forgeUsed(qi: number, id: number, len: number): void {
    this.pushUsed(qi, id, len);
  }
  /** Move used.idx forward by `n` without entries. */
  jumpUsedIdx(qi: number, n: number): void {
    this.dq(qi).jumpUsed(n);
  }
  /** Signal DEVICE_NEEDS_RESET. */
  needsReset(): void {
    this.devStatus |= STATUS.DEVICE_NEEDS_RESET;
  }
}
