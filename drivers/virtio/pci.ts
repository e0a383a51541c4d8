/**
 * virtio over PCI (virtio 1.2 §4.1): the modern transport (capabilities, §4.1.4), the legacy one (I/O BAR0,
 * §4.1.4.10), and {@link openVirtioPci}, which turns an opened {@link PciFunction} into the {@link VirtioBus} a
 * virtio driver takes.
 * @module
 */
import { type MmioRegion, SubRegion, write64Split } from "../../hal/mmio.ts";
import type { IrqSource } from "../../hal/irq.ts";
import type { PciFunction } from "../../hal/pci.ts";
import { checkCapInBar, type PciConfig, readConfigOf, VIRTIO_PCI_CAP } from "../pci/config.ts";
import {
  NO_VECTOR,
  type QueueAddresses,
  type VirtioBus,
  VirtioError,
  type VirtioTransport,
} from "./transport.ts";
import type { IrqMode } from "../core/device.ts";

function waitReset(read: () => number, what: string): void {
  // virtio 1.2 §4.1.4.3.2: after writing 0 the driver waits for device_status to read 0.
  const deadline = performance.now() + 2000;
  while (read() !== 0) {
    if (performance.now() > deadline) {
      throw new VirtioError(`${what}: device did not finish reset within 2 s`);
    }
  }
}

/** struct virtio_pci_common_cfg offsets (virtio 1.2 §4.1.4.3), for the driver here and for device models. */
export const COMMON_CFG = {
  DFSELECT: 0x00,
  DF: 0x04,
  GFSELECT: 0x08,
  GF: 0x0c,
  MSIX_CONFIG: 0x10,
  NUM_QUEUES: 0x12,
  STATUS: 0x14,
  CFG_GENERATION: 0x15,
  Q_SELECT: 0x16,
  Q_SIZE: 0x18,
  Q_MSIX: 0x1a,
  Q_ENABLE: 0x1c,
  Q_NOFF: 0x1e,
  Q_DESC: 0x20,
  Q_DRIVER: 0x28,
  Q_DEVICE: 0x30,
} as const;
/** Bytes of struct virtio_pci_common_cfg (through queue_device's high half). */
export const COMMON_CFG_LEN = 0x38;
const C = COMMON_CFG;

/** The modern virtio-PCI transport: common, notify, ISR and device structures found through capabilities. */
export class ModernTransport implements VirtioTransport {
  readonly kind = "modern";
  readonly legacy = false;
  /** virtio_pci_common_cfg (virtio 1.2 §4.1.4.3). */
  readonly common: MmioRegion;
  /** The ISR status byte (virtio 1.2 §4.1.4.5). */
  readonly isr: MmioRegion;
  readonly deviceConfig: MmioRegion;
  readonly #notifyBar: MmioRegion;
  readonly #notifyBase: number;
  readonly #notifyLen: number;
  readonly #mult: number;

  /** Locate the structures in `pci`'s capabilities; errors name what is missing or malformed. */
  constructor(readonly pci: PciFunction) {
    const cfg = readConfigOf(pci);
    const find = (t: number, name: string) => {
      const c = cfg.virtio.find((v) => v.type === t);
      if (!c) {
        throw new VirtioError(`${pci.address}: no virtio ${name} capability: not a modern virtio device`);
      }
      checkCapInBar(c, pci.barSize(c.bar));
      return c;
    };
    const common = find(VIRTIO_PCI_CAP.COMMON, "common");
    const notify = find(VIRTIO_PCI_CAP.NOTIFY, "notify");
    const isr = find(VIRTIO_PCI_CAP.ISR, "ISR");
    const dev = find(VIRTIO_PCI_CAP.DEVICE, "device");
    if (common.length < COMMON_CFG_LEN) {
      throw new VirtioError(`${pci.address}: common config too short (${common.length})`);
    }
    this.common = new SubRegion(pci.bar(common.bar), common.offset, common.length, "virtio common");
    this.isr = new SubRegion(pci.bar(isr.bar), isr.offset, Math.max(isr.length, 1), "virtio isr");
    this.deviceConfig = new SubRegion(pci.bar(dev.bar), dev.offset, dev.length, "virtio device config");
    this.#notifyBar = pci.bar(notify.bar);
    this.#notifyBase = notify.offset;
    this.#notifyLen = notify.length;
    this.#mult = notify.notifyOffMultiplier ?? 0;
    // §4.1.4.4: notify_off_multiplier is 0 or an even power of 2 (doorbells are 16-bit writes, 2-aligned).
    if (this.#mult !== 0 && (this.#mult & (this.#mult - 1) || this.#mult & 1)) {
      throw new VirtioError(
        `${pci.address}: notify_off_multiplier ${this.#mult} is not 0 or an even power of 2`,
      );
    }
  }
  reset(): void {
    this.common.write8(C.STATUS, 0);
    waitReset(() => this.common.read8(C.STATUS), this.pci.address);
  }
  status(): number {
    return this.common.read8(C.STATUS);
  }
  setStatus(s: number): void {
    this.common.write8(C.STATUS, s);
  }
  deviceFeatures(): bigint {
    this.common.write32(C.DFSELECT, 0);
    const lo = this.common.read32(C.DF);
    this.common.write32(C.DFSELECT, 1);
    const hi = this.common.read32(C.DF);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }
  setDriverFeatures(f: bigint): void {
    this.common.write32(C.GFSELECT, 0);
    this.common.write32(C.GF, Number(f & 0xffffffffn));
    this.common.write32(C.GFSELECT, 1);
    this.common.write32(C.GF, Number((f >> 32n) & 0xffffffffn));
  }
  numQueues(): number {
    return this.common.read16(C.NUM_QUEUES);
  }
  queueMaxSize(q: number): number {
    this.common.write16(C.Q_SELECT, q);
    return this.common.read16(C.Q_SIZE);
  }
  setupQueue(q: number, size: number, a: QueueAddresses, msixVector: number): void {
    const c = this.common;
    c.write16(C.Q_SELECT, q);
    c.write16(C.Q_SIZE, size);
    write64Split(c, C.Q_DESC, a.desc);
    write64Split(c, C.Q_DRIVER, a.driver);
    write64Split(c, C.Q_DEVICE, a.device);
    c.write16(C.Q_MSIX, msixVector);
    if (msixVector !== NO_VECTOR && c.read16(C.Q_MSIX) !== msixVector) {
      throw new VirtioError(`${this.pci.address}: queue ${q} refused MSI-X vector ${msixVector}`);
    }
    c.write16(C.Q_ENABLE, 1);
  }
  notifier(q: number): () => void {
    this.common.write16(C.Q_SELECT, q);
    const off = this.#notifyBase + this.common.read16(C.Q_NOFF) * this.#mult;
    if (off & 1) {
      throw new VirtioError(`${this.pci.address}: queue ${q} doorbell at odd offset 0x${off.toString(16)}`);
    }
    if (off + 2 > this.#notifyBase + this.#notifyLen) {
      throw new VirtioError(
        `${this.pci.address}: queue ${q} notify offset 0x${off.toString(16)} outside the notify structure`,
      );
    }
    const bar = this.#notifyBar;
    return () => bar.write16(off, q);
  }
  setConfigVector(v: number): number {
    this.common.write16(C.MSIX_CONFIG, v);
    return this.common.read16(C.MSIX_CONFIG);
  }
  readIsr(): number {
    return this.isr.read8(0);
  }
  configGeneration(): number {
    return this.common.read8(C.CFG_GENERATION);
  }
  close(): void {}
}

// Legacy virtio header in I/O BAR0 (virtio 1.2 §4.1.4.10).
const L = {
  HOST_FEATURES: 0x00,
  GUEST_FEATURES: 0x04,
  QUEUE_PFN: 0x08,
  QUEUE_NUM: 0x0c,
  QUEUE_SEL: 0x0e,
  QUEUE_NOTIFY: 0x10,
  STATUS: 0x12,
  ISR: 0x13,
  MSIX_CONFIG: 0x14,
  MSIX_QUEUE: 0x16,
} as const;

/**
 * The legacy (transitional) transport through I/O BAR0. Only 32 feature bits; queues have the device's fixed size
 * and are given as a page frame number, so the ring must use the legacy contiguous layout.
 */
export class LegacyTransport implements VirtioTransport {
  readonly kind = "legacy";
  readonly legacy = true;
  /** The legacy header in I/O BAR0 (virtio 1.2 §4.1.4.10). */
  readonly io: MmioRegion;
  readonly deviceConfig: MmioRegion;
  readonly #msix: boolean;

  /** Uses BAR0 (an I/O BAR) of `pci`; `msix` when MSI-X is enabled (it moves the device config to 0x18). */
  constructor(readonly pci: PciFunction, msix = false) {
    const cfg = readConfigOf(pci);
    if (!(cfg.bars[0] & 1)) {
      throw new VirtioError(`${pci.address}: BAR0 is not an I/O BAR: not a legacy virtio device`);
    }
    this.io = pci.bar(0);
    this.#msix = msix;
    const devOff = msix ? 0x18 : 0x14;
    if (this.io.size <= devOff) {
      throw new VirtioError(`${pci.address}: legacy BAR0 too small (${this.io.size})`);
    }
    this.deviceConfig = new SubRegion(this.io, devOff, this.io.size - devOff, "virtio legacy device config");
  }
  reset(): void {
    this.io.write8(L.STATUS, 0);
    waitReset(() => this.io.read8(L.STATUS), this.pci.address);
  }
  status(): number {
    return this.io.read8(L.STATUS);
  }
  setStatus(s: number): void {
    this.io.write8(L.STATUS, s);
  }
  deviceFeatures(): bigint {
    return BigInt(this.io.read32(L.HOST_FEATURES));
  }
  setDriverFeatures(f: bigint): void {
    if (f >> 32n) throw new VirtioError("legacy devices have 32 feature bits");
    this.io.write32(L.GUEST_FEATURES, Number(f));
  }
  numQueues(): number {
    return 0;
  }
  queueMaxSize(q: number): number {
    this.io.write16(L.QUEUE_SEL, q);
    return this.io.read16(L.QUEUE_NUM);
  }
  setupQueue(q: number, size: number, a: QueueAddresses, msixVector: number): void {
    this.io.write16(L.QUEUE_SEL, q);
    const fixed = this.io.read16(L.QUEUE_NUM);
    if (size !== fixed) throw new VirtioError(`legacy queue ${q} has fixed size ${fixed}, asked ${size}`);
    if (a.desc % 4096 !== 0 || a.desc / 4096 > 0xffffffff) {
      throw new VirtioError("legacy queue address must be a 4 KiB page below 2^44");
    }
    if (this.#msix) {
      this.io.write16(L.MSIX_QUEUE, msixVector);
      if (msixVector !== NO_VECTOR && this.io.read16(L.MSIX_QUEUE) !== msixVector) {
        throw new VirtioError(`${this.pci.address}: queue ${q} refused MSI-X vector ${msixVector}`);
      }
    }
    this.io.write32(L.QUEUE_PFN, a.desc / 4096);
  }
  notifier(q: number): () => void {
    const io = this.io;
    return () => io.write16(L.QUEUE_NOTIFY, q);
  }
  setConfigVector(v: number): number {
    if (!this.#msix) return NO_VECTOR;
    this.io.write16(L.MSIX_CONFIG, v);
    return this.io.read16(L.MSIX_CONFIG);
  }
  readIsr(): number {
    return this.io.read8(L.ISR);
  }
  configGeneration(): number {
    return 0;
  }
  close(): void {}
}

/** Pick the transport for a PCI function: modern capabilities when present, else the legacy I/O BAR. */
export function openTransport(
  pci: PciFunction,
  prefer: "modern" | "legacy" | "auto" = "auto",
  msix = false,
  cfg: PciConfig = readConfigOf(pci),
): VirtioTransport {
  const hasModern = cfg.virtio.some((v) => v.type === VIRTIO_PCI_CAP.COMMON);
  const hasLegacy = (cfg.bars[0] & 1) === 1;
  if (prefer === "legacy" || (prefer === "auto" && !hasModern)) {
    if (!hasLegacy) throw new VirtioError(`${pci.address} has no legacy interface`);
    return new LegacyTransport(pci, msix);
  }
  if (!hasModern) throw new VirtioError(`${pci.address} has no modern virtio interface`);
  return new ModernTransport(pci);
}

/** Red Hat's virtio vendor id (virtio 1.2 §4.1.2). */
export const VIRTIO_VENDOR = 0x1af4;

/** Transitional PCI device ids and the virtio device types they stand for (virtio 1.2 §4.1.2.3). */
const TRANSITIONAL_TYPE: Record<number, number> = {
  0x1000: 1,
  0x1001: 2,
  0x1002: 5,
  0x1003: 3,
  0x1004: 8,
  0x1005: 4,
  0x1009: 9,
};

/**
 * The virtio device type of a PCI function, or null when it is not virtio (virtio 1.2 §4.1.2: modern device ids
 * are 0x1040 + type; the transitional ids above name their type, other ids in 0x1000..0x103f carry it in the
 * subsystem device id).
 */
export function virtioDeviceType(
  cfg: { vendorId: number; deviceId: number; subsystemId: number },
): number | null {
  if (cfg.vendorId !== VIRTIO_VENDOR) return null;
  if (cfg.deviceId >= 0x1040 && cfg.deviceId <= 0x107f) return cfg.deviceId - 0x1040;
  if (cfg.deviceId >= 0x1000 && cfg.deviceId <= 0x103f) {
    return TRANSITIONAL_TYPE[cfg.deviceId] ?? cfg.subsystemId;
  }
  return null;
}

/** Options for {@link openVirtioPci}. */
export interface VirtioPciOptions {
  /** Transport choice for transitional devices (default: modern when present). */
  transport?: "auto" | "modern" | "legacy";
  /** MSI-X will be used (moves the legacy device config, virtio 1.2 §4.1.4.10). */
  msix?: boolean;
  /** Close the PCI function when the bus closes. */
  ownsPci?: boolean;
}

/** A virtio device on PCI as a {@link VirtioBus}: transport, DMA and interrupts of one function. */
export function openVirtioPci(pci: PciFunction, opts: VirtioPciOptions = {}): VirtioBus {
  const cfg = readConfigOf(pci);
  const type = virtioDeviceType(cfg);
  if (type === null) {
    throw new VirtioError(
      `${pci.address} (${cfg.vendorId.toString(16)}:${cfg.deviceId.toString(16)}) is not a virtio device`,
    );
  }
  const t = openTransport(pci, opts.transport ?? "auto", opts.msix ?? false, cfg);
  if (t.legacy && pci.iommu) {
    throw new VirtioError(
      `${pci.address}: the legacy interface cannot use an IOMMU (no ACCESS_PLATFORM): use the modern transport or UIO`,
    );
  }
  const kinds = pci.irqKinds();
  let intx = false;
  return {
    name: pci.address,
    deviceType: type,
    transport: t,
    dma: pci.dma,
    iommu: pci.iommu,
    irqs(mode: IrqMode, n: number): IrqSource[] {
      if (mode === "poll") return [];
      if (!kinds.includes(mode)) {
        throw new VirtioError(
          `${pci.address} opened through ${pci.via} cannot deliver ${mode}: use ${
            kinds.join(" or ")
          } or poll`,
        );
      }
      intx = mode === "intx";
      return pci.irqs(mode, n);
    },
    ackIntx(): void {
      if (!intx) return;
      t.readIsr(); // reading acknowledges (virtio 1.2 §4.1.4.5)
      pci.unmaskIntx();
    },
    enableBusMaster: () => pci.enableBusMaster(),
    disableIrqs: () => pci.disableIrqs(),
    close(): void {
      t.close();
      if (opts.ownsPci) pci.close();
    },
  };
}
