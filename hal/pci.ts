/**
 * The PCI seam: what a driver sees of an opened PCI function, whether VFIO, UIO (ffi/pci.ts) or a device model
 * opened it. Config space parsing and capability lookup are the drivers' business (drivers/pci/config.ts).
 * @module
 */
import type { DmaAllocator } from "./dma.ts";
import type { IrqSource } from "./irq.ts";
import type { MmioRegion } from "./mmio.ts";

/** Interrupt kinds a function can be asked for. */
export type IrqKind = "msix" | "intx";

/** Command register bits (PCI Local Bus 3.0 §6.2.2). */
export const CMD_IO = 0x1, CMD_MEMORY = 0x2, CMD_BUS_MASTER = 0x4, CMD_INTX_DISABLE = 0x400;

/** What a driver sees of a PCI function. */
export interface PciFunction {
  /** PCI address ("0000:00:04.0"). */
  readonly address: string;
  /** Whether an IOMMU translates the function's DMA (VFIO): device addresses are IOVAs, not physical. */
  readonly iommu: boolean;
  /** How it was opened, for messages ("vfio", "uio", "model"). */
  readonly via: string;
  /** Config space registers. */
  readonly config: MmioRegion;
  /** The DMA allocator for this function. */
  readonly dma: DmaAllocator;
  /** Size of BAR `i` (0 if absent). */
  barSize(i: number): number;
  /** BAR `i` as a register region (mapped once, cached). */
  bar(i: number): MmioRegion;
  /** Set bus mastering (and memory/IO decoding) in the command register. */
  enableBusMaster(): void;
  /** Interrupts: `n` MSI-X vectors, or the single INTx line. */
  irqs(kind: IrqKind, n: number): IrqSource[];
  /** Interrupt kinds this access method can deliver. */
  irqKinds(): IrqKind[];
  /** Re-arm INTx after handling it (a no-op for MSI-X). */
  unmaskIntx(): void;
  /** Release interrupts (before a device reset). */
  disableIrqs(): void;
  /** Release every resource (regions, interrupts, DMA). */
  close(): void;
}

/** Read the first 256 bytes of config space (the header and classic capabilities) as a snapshot. */
export function snapshotConfig(cfg: MmioRegion): Uint8Array {
  const n = Math.min(cfg.size, 256);
  const out = new Uint8Array(n);
  const dv = new DataView(out.buffer);
  for (let o = 0; o < n; o += 4) dv.setUint32(o, cfg.read32(o), true);
  return out;
}
