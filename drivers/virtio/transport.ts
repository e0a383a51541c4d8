/**
 * The virtio transport seam (virtio 1.2 §4): how a driver reaches a device's status, features, queues and config,
 * and the {@link VirtioBus} a driver is handed: a transport plus the device's DMA memory and interrupts. PCI
 * implements it in drivers/virtio/pci.ts (modern §4.1.4 and legacy §4.1.4.10); tests hand drivers device models.
 * @module
 */
import type { MmioRegion } from "../../hal/mmio.ts";
import type { DmaAllocator } from "../../hal/dma.ts";
import type { IrqSource } from "../../hal/irq.ts";
import { PvdrvError } from "../../hal/errors.ts";
import type { IrqMode } from "../core/device.ts";
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
export class VirtioError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("virtio", msg);
  }
}

/** What a virtio driver is handed: a transport to one device, its DMA memory and its interrupts. */
export interface VirtioBus {
  /** The device's name in messages ("0000:00:04.0"). */
  readonly name: string;
  /** The virtio device type (virtio 1.2 §5: 1 network, 2 block, ...). */
  readonly deviceType: number;
  /** The transport. */
  readonly transport: VirtioTransport;
  /** DMA memory the device can reach. */
  readonly dma: DmaAllocator;
  /** Whether an IOMMU translates the device's DMA (the device must then use VIRTIO_F_ACCESS_PLATFORM). */
  readonly iommu: boolean;
  /** Interrupt sources: `n` MSI-X vectors (vector i is index i), the one INTx line, or none when polling. */
  irqs(mode: IrqMode, n: number): IrqSource[];
  /** After an INTx wait: read (and so clear) the ISR, and re-arm the line (virtio 1.2 §4.1.4.5). */
  ackIntx(): void;
  /** Let the device master the bus (after the reset that stops a device left running). */
  enableBusMaster(): void;
  /** Release interrupts (before memory goes away). */
  disableIrqs(): void;
  /** Release the transport and, if the bus owns it, the underlying device. */
  close(): void;
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

/**
 * Read device configuration consistently (virtio 1.2 §4.1.4.3.1, §2.5.1): repeat `read` until config_generation
 * is the same before and after it, so a multi-field read never mixes two versions of the config.
 */
export function readConfig<T>(t: VirtioTransport, read: (cfg: MmioRegion) => T, tries = 16): T {
  for (let i = 0; i < tries; i++) {
    const before = t.configGeneration();
    const v = read(t.deviceConfig);
    if (t.configGeneration() === before) return v;
  }
  throw new VirtioError(`device config kept changing over ${tries} reads (config_generation)`);
}
