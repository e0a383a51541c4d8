/**
 * pvdrv: device drivers in TypeScript, running as ordinary Linux processes on Deno.
 *
 * The public API: hardware seams (MMIO regions, DMA memory, interrupts), PCI access through VFIO and UIO, and
 * (as they land) the virtio-net and Xen netfront drivers behind one NIC interface.
 * @module
 */

/** Native shim loading and build. */
export { buildNative, libraryPath, NativeError } from "./ffi/lib.ts";
/** Register regions. */
export {
  MappedRegion,
  type MmioRegion,
  ModelRegion,
  PioRegion,
  type RegisterModel,
  SubRegion,
} from "./ffi/mmio.ts";
/** DMA memory. */
export {
  allocHostMemory,
  type DmaAllocator,
  type DmaRegion,
  ModelDmaAllocator,
  PhysicalDmaAllocator,
  virtToPhys,
} from "./ffi/dma.ts";
/** Interrupts. */
export { EventFd, EventFdIrq, type IrqSource, IrqWaiter, irqWaiter } from "./ffi/irq.ts";
/** VFIO. */
export { VfioContainer, VfioDevice, VfioDmaAllocator, VfioGroup } from "./ffi/vfio.ts";
/** UIO. */
export { UioIrq } from "./ffi/uio.ts";
/** PCI enumeration, config space, binding and opened functions. */
export { listDevices, parsePciAddress, type PciDeviceInfo, readDevice } from "./drivers/pci/sysfs.ts";
/** PCI config parsing. */
export {
  type MsixCap,
  parseConfig,
  type PciConfig,
  VIRTIO_PCI_CAP,
  type VirtioCap,
} from "./drivers/pci/config.ts";
/** Binding. */
export { bindDevice, BindRefused, type BindTarget } from "./drivers/pci/bind.ts";
/** Opened PCI functions. */
export { openPci, type PciFunction, UioPciFunction, VfioPciFunction } from "./drivers/pci/device.ts";
/** The probe. */
export { probe, type ProbeEntry } from "./drivers/pci/probe.ts";
