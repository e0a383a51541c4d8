/**
 * PCI functions opened through Linux: VFIO (IOMMU-translated DMA, MSI-X and INTx) and uio_pci_generic (physical
 * DMA, INTx only), both behind the `PciFunction` seam (hal/pci.ts).
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import type { MmioRegion } from "../hal/mmio.ts";
import type { DmaAllocator } from "../hal/dma.ts";
import type { IrqSource } from "../hal/irq.ts";
import {
  CMD_BUS_MASTER,
  CMD_INTX_DISABLE,
  CMD_IO,
  CMD_MEMORY,
  type IrqKind,
  type PciFunction,
} from "../hal/pci.ts";
import { PhysicalDmaAllocator } from "./dma.ts";
import { IRQ_INTX, IRQ_MSIX, VfioContainer, type VfioDevice } from "./vfio.ts";
import { fileRegion, mapResource, UioIrq } from "./uio.ts";
import { devicePath, type PciDeviceInfo, readDevice, SYSFS } from "./sysfs.ts";

/**
 * Enable decoding and bus mastering; INTx only when it is the interrupt in use. A device left with INTx enabled
 * (an earlier INTx user) would otherwise assert a shared line no handler claims, and the kernel disables that
 * line for every device on it ("nobody cared").
 */
function enableCommand(cfg: MmioRegion, intx: boolean): void {
  const cmd = cfg.read16(4) | CMD_BUS_MASTER | CMD_MEMORY | CMD_IO;
  cfg.write16(4, intx ? cmd & ~CMD_INTX_DISABLE : cmd | CMD_INTX_DISABLE);
}

/** A function opened through VFIO. */
export class VfioPciFunction implements PciFunction {
  readonly iommu = true;
  readonly via = "vfio";
  readonly config: MmioRegion;
  readonly dma: DmaAllocator;
  readonly #bars = new Map<number, MmioRegion>();
  #irqs: IrqSource[] = [];
  #irqIndex = -1;

  /** Opens the function's group in a new container. The device must be bound to vfio-pci. */
  static open(address: string, root = SYSFS): VfioPciFunction {
    const info = readDevice(address, root);
    if (info.driver !== "vfio-pci") {
      throw new PvdrvError(
        "device",
        `${info.address} is bound to ${
          info.driver ?? "no driver"
        }, not vfio-pci: run 'deno task bind ${info.address} vfio'`,
      );
    }
    if (info.iommuGroup === null) throw new PvdrvError("device", `${info.address} has no IOMMU group`);
    const container = new VfioContainer();
    try {
      const group = container.openGroup(info.iommuGroup);
      return new VfioPciFunction(info.address, container, group.openDevice(info.address));
    } catch (e) {
      container.close();
      throw e;
    }
  }

  /** Wraps an opened device. */
  constructor(readonly address: string, readonly container: VfioContainer, readonly device: VfioDevice) {
    this.config = device.config();
    this.dma = container.dmaAllocator();
  }
  barSize(i: number): number {
    return this.device.regionInfo(i).size;
  }
  bar(i: number): MmioRegion {
    let r = this.#bars.get(i);
    if (!r) this.#bars.set(i, r = this.device.region(i));
    return r;
  }
  enableBusMaster(): void {
    enableCommand(this.config, this.#irqIndex === IRQ_INTX);
  }
  irqKinds(): IrqKind[] {
    const k: IrqKind[] = [];
    if (this.device.irqCount(IRQ_MSIX) > 0) k.push("msix");
    if (this.device.irqCount(IRQ_INTX) > 0) k.push("intx");
    return k;
  }
  irqs(kind: IrqKind, n: number): IrqSource[] {
    this.disableIrqs();
    this.#irqIndex = kind === "msix" ? IRQ_MSIX : IRQ_INTX;
    this.#irqs = this.device.enableIrqs(this.#irqIndex, kind === "msix" ? n : 1);
    if (kind === "intx") enableCommand(this.config, true);
    return this.#irqs;
  }
  unmaskIntx(): void {
    if (this.#irqIndex === IRQ_INTX) this.device.unmaskIntx();
  }
  disableIrqs(): void {
    if (this.#irqIndex >= 0) this.device.disableIrqs(this.#irqIndex);
    for (const s of this.#irqs) s.close();
    this.#irqs = [];
    this.#irqIndex = -1;
  }
  close(): void {
    this.disableIrqs();
    for (const r of this.#bars.values()) r.close();
    this.#bars.clear();
    this.dma.close();
    this.device.close();
    this.container.close();
  }
}

/** A function opened through uio_pci_generic: INTx only, physical DMA addresses (no IOMMU protection). */
export class UioPciFunction implements PciFunction {
  readonly iommu = false;
  readonly via = "uio";
  readonly config: MmioRegion;
  readonly dma: DmaAllocator = new PhysicalDmaAllocator();
  readonly #bars = new Map<number, MmioRegion>();
  #irq: UioIrq | null = null;
  readonly #dir: string;
  readonly #info: PciDeviceInfo;
  /** PCI address. */
  readonly address: string;

  /** Opens a function bound to uio_pci_generic. */
  static open(address: string, root = SYSFS): UioPciFunction {
    const info = readDevice(address, root);
    if (info.driver !== "uio_pci_generic" || info.uio.length === 0) {
      throw new PvdrvError(
        "device",
        `${info.address} is bound to ${
          info.driver ?? "no driver"
        }, not uio_pci_generic: run 'deno task bind ${info.address} uio'`,
      );
    }
    return new UioPciFunction(info, root);
  }

  private constructor(info: PciDeviceInfo, root: string) {
    this.address = info.address;
    this.#dir = devicePath(info.address, root);
    this.#info = info;
    this.config = fileRegion(`${this.#dir}/config`, 256, `${info.address} config`);
  }
  barSize(i: number): number {
    return this.#info.bars.find((b) => b.index === i)?.size ?? 0;
  }
  bar(i: number): MmioRegion {
    let r = this.#bars.get(i);
    if (r) return r;
    const b = this.#info.bars.find((x) => x.index === i);
    if (!b) throw new PvdrvError("device", `${this.address}: BAR${i} is not implemented`);
    const path = `${this.#dir}/resource${i}`;
    r = b.io
      ? fileRegion(path, b.size, `${this.address} BAR${i}`)
      : mapResource(path, b.size, `${this.address} BAR${i}`);
    this.#bars.set(i, r);
    return r;
  }
  enableBusMaster(): void {
    enableCommand(this.config, true);
  }
  irqKinds(): IrqKind[] {
    return ["intx"];
  }
  irqs(kind: IrqKind, _n: number): IrqSource[] {
    if (kind !== "intx") {
      throw new PvdrvError("device", "uio_pci_generic delivers INTx only; use VFIO for MSI-X");
    }
    this.#irq ??= new UioIrq(this.#info.uio[0], this.config);
    this.#irq.enable();
    return [this.#irq];
  }
  unmaskIntx(): void {
    this.#irq?.enable();
  }
  disableIrqs(): void {
    this.#irq?.close();
    this.#irq = null;
  }
  close(): void {
    this.disableIrqs();
    for (const r of this.#bars.values()) r.close();
    this.#bars.clear();
    this.dma.close();
    this.config.close();
  }
}

/** Open a PCI function through whichever of VFIO and UIO it is bound to. */
export function openPci(address: string, root = SYSFS): PciFunction {
  const info = readDevice(address, root);
  if (info.driver === "vfio-pci") return VfioPciFunction.open(address, root);
  if (info.driver === "uio_pci_generic") return UioPciFunction.open(address, root);
  throw new PvdrvError(
    "device",
    `${info.address} is bound to ${
      info.driver ?? "no driver"
    }: bind it first ('deno task bind ${info.address} vfio' or 'uio')`,
  );
}
