/**
 * virtio transports: how a driver reaches a device's status, features, queues and config. Two PCI transports
 * implement {@link VirtioTransport}: modern (virtio 1.2 §4.1.4, capabilities) and legacy (§4.1.4.10, I/O BAR).
 * @module
 */
import type { MmioRegion } from "../../ffi/mmio.ts";
import { SubRegion } from "../../ffi/mmio.ts";
import type { PciFunction } from "../pci/device.ts";
import { checkCapInBar, VIRTIO_PCI_CAP } from "../pci/config.ts";
import { STATUS } from "./features.ts";

/** MSI-X "no vector" (virtio 1.2 §4.1.5.1.2). */
export const NO_VECTOR = 0xffff;

/** Addresses of one split queue's three parts. */
export interface QueueAddresses {
  /** Descriptor table. */
  desc: number;
  /** Driver (avail) ring. */
  driver: number;
  /** Device (used) ring. */
  device: number;
}

/** The transport seam. Features travel as bigint (setup only, never per packet). */
export interface VirtioTransport {
  /** "modern" or "legacy". */
  readonly kind: "modern" | "legacy";
  /** Legacy devices need the legacy ring layout (used ring 4096-aligned after avail) and a fixed queue size. */
  readonly legacy: boolean;
  /** Device-specific configuration (virtio 1.2 §4.1.4.8). */
  readonly deviceConfig: MmioRegion;
  /** Write 0 to status and wait for the device to finish resetting. */
  reset(): void;
  /** Device status. */
  status(): number;
  /** Set device status (bits accumulate; see {@link STATUS}). */
  setStatus(s: number): void;
  /** Features the device offers. */
  deviceFeatures(): bigint;
  /** Features the driver accepts. */
  setDriverFeatures(f: bigint): void;
  /** Number of queues the device has (legacy: not reported, 0). */
  numQueues(): number;
  /** Maximum size of queue `q` (0: queue absent). */
  queueMaxSize(q: number): number;
  /** Configure and enable queue `q`. */
  setupQueue(q: number, size: number, addr: QueueAddresses, msixVector: number): void;
  /** A function that notifies (kicks) queue `q`: one register write. */
  notifier(q: number): () => void;
  /** Route config-change interrupts to an MSI-X vector (or NO_VECTOR); returns the vector the device accepted. */
  setConfigVector(v: number): number;
  /** Read and clear the ISR status (INTx). Bit 0: queue, bit 1: config change. */
  readIsr(): number;
  /** config_generation, for consistent multi-field config reads (legacy: 0). */
  configGeneration(): number;
  /** Release the mappings. */
  close(): void;
}

/** Error in a transport or device handshake. */
export class VirtioError extends Error {
  /** Creates the error. */
  constructor(msg: string) {
    super(msg);
    this.name = "VirtioError";
  }
}

function waitReset(read: () => number, what: string): void {
  // virtio 1.2 §4.1.4.3.2: after writing 0 the driver waits for device_status to read 0.
  const deadline = performance.now() + 2000;
  while (read() !== 0) {
    if (performance.now() > deadline) {
      throw new VirtioError(`${what}: device did not finish reset within 2 s`);
    }
  }
}

// struct virtio_pci_common_cfg offsets (virtio 1.2 §4.1.4.3).
const C = {
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

/** The modern virtio-PCI transport: common, notify, ISR and device structures found through capabilities. */
export class ModernTransport implements VirtioTransport {
  readonly kind = "modern";
  readonly legacy = false;
  readonly common: MmioRegion;
  readonly isr: MmioRegion;
  readonly deviceConfig: MmioRegion;
  readonly #notifyBar: MmioRegion;
  readonly #notifyBase: number;
  readonly #notifyLen: number;
  readonly #mult: number;

  /** Locate the structures in `pci`'s capabilities; errors name what is missing or malformed. */
  constructor(readonly pci: PciFunction) {
    const cfg = pci.parseConfig();
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
    if (common.length < 0x38) {
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
    for (const [off, v] of [[C.Q_DESC, a.desc], [C.Q_DRIVER, a.driver], [C.Q_DEVICE, a.device]]) {
      c.write32(off, v >>> 0);
      c.write32(off + 4, Math.floor(v / 0x1_0000_0000));
    }
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
  readonly io: MmioRegion;
  readonly deviceConfig: MmioRegion;
  readonly #msix: boolean;

  /** Uses BAR0 (an I/O BAR) of `pci`; `msix` when MSI-X is enabled (it moves the device config to 0x18). */
  constructor(readonly pci: PciFunction, msix = false) {
    const cfg = pci.parseConfig();
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
): VirtioTransport {
  const cfg = pci.parseConfig();
  const hasModern = cfg.virtio.some((v) => v.type === VIRTIO_PCI_CAP.COMMON);
  const hasLegacy = (cfg.bars[0] & 1) === 1;
  if (prefer === "legacy" || (prefer === "auto" && !hasModern)) {
    if (!hasLegacy) throw new VirtioError(`${pci.address} has no legacy interface`);
    return new LegacyTransport(pci, msix);
  }
  if (!hasModern) throw new VirtioError(`${pci.address} has no modern virtio interface`);
  return new ModernTransport(pci);
}

/** Run the status handshake up to FEATURES_OK (virtio 1.2 §3.1.1); returns the negotiated features. */
export function negotiate(t: VirtioTransport, wanted: bigint, required: bigint): bigint {
  t.reset();
  t.setStatus(STATUS.ACKNOWLEDGE);
  t.setStatus(STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  const offered = t.deviceFeatures();
  const missing = required & ~offered;
  if (missing) {
    t.setStatus(STATUS.FAILED);
    throw new VirtioError(`device lacks required features 0x${missing.toString(16)}`);
  }
  const f = offered & wanted;
  t.setDriverFeatures(f);
  if (t.legacy) return f; // legacy has no FEATURES_OK step
  t.setStatus(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  if (!(t.status() & STATUS.FEATURES_OK)) {
    t.setStatus(STATUS.FAILED);
    throw new VirtioError("device did not accept the negotiated features (FEATURES_OK cleared)");
  }
  return f;
}
