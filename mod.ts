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
export { MappedRegion, PioRegion } from "./ffi/mmio.ts";
/** DMA memory. */
export { allocHostMemory, PhysicalDmaAllocator, virtToPhys } from "./ffi/dma.ts";
/** Interrupts. */
export { EventFd, EventFdIrq, IrqWaiter, irqWaiter } from "./ffi/irq.ts";
/** VFIO. */
export { VfioContainer, VfioDevice, VfioDmaAllocator, VfioGroup } from "./ffi/vfio.ts";
/** UIO. */
export { UioIrq } from "./ffi/uio.ts";
/** PCI enumeration, config space, binding and opened functions. */
export { listDevices, parsePciAddress, type PciDeviceInfo, readDevice } from "./ffi/sysfs.ts";
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
export { openPci, UioPciFunction, VfioPciFunction } from "./ffi/pci.ts";
/** The probe. */
export { probe, type ProbeEntry } from "./drivers/pci/probe.ts";

/** The NIC interface, packet buffers and the test frame format. */
export {
  macToString,
  type Nic,
  PacketBuffer,
  PacketPool,
  parseMac,
  type QueueStats,
  RX_CSUM_PARTIAL,
  RX_CSUM_VALID,
} from "./drivers/net/nic.ts";
/** Open any NIC by name (PCI address or vif/N). */
export { openNic, type OpenOptions } from "./drivers/table.ts";
/** The pvdrv test frame format. */
export { checkFrame, FrameCheck, writeFrame } from "./apps/frames.ts";
/** pcap capture. */
export { PcapWriter } from "./apps/pcap.ts";
/** virtio: the net driver, its transports and the split virtqueue. */
export { VirtioNet, type VirtioNetOptions, WANTED_FEATURES } from "./drivers/virtio/net.ts";
/** virtio transports. */
export { VirtioError, type VirtioTransport } from "./drivers/virtio/transport.ts";
/** The split virtqueue. */
export { SplitQueue, VirtqueueError } from "./drivers/virtio/virtqueue.ts";
/** virtio feature bits. */
export { F, featureNames, NET_F, STATUS } from "./drivers/virtio/features.ts";
/** Xen: xenstore client. */
export { XenStore, XenStoreError } from "./drivers/xen/xenstore.ts";
/** Xen: grant and event-channel seams. */
/** Xen: netfront. */
export { Netfront, type NetfrontOptions } from "./drivers/xen/netfront.ts";
/** Xen: the shared ring front end. */
export { FrontRing, RingError } from "./drivers/xen/ring.ts";
/** Xen: the guest agent. */
export {
  type AgentOptions,
  installKernelHandoff,
  runAgent,
  type ShutdownAction,
} from "./drivers/xen/agent.ts";
/** Xen: detection. */
export { probeXen, type XenProbe } from "./drivers/xen/probe.ts";
/** Xen devices of a Linux guest: /dev/xen/gntalloc, /dev/xen/evtchn, /dev/xen/xenbus. */
export { Evtchn, Gntalloc } from "./ffi/xen.ts";
/** /dev/xen/xenbus as a xenstore transport. */
export { XenbusDevice } from "./ffi/xenbus.ts";
/** Traffic loops (generator, verifying receiver) over any NIC. */
export { echoExchange, generate, receive, type RecvOptions, type SendOptions } from "./apps/traffic.ts";
export { type MmioRegion, ModelRegion, type RegisterModel, SubRegion } from "./hal/mmio.ts";
export { type DmaAllocator, type DmaRegion, ModelDmaAllocator } from "./hal/dma.ts";
export { type IrqSource } from "./hal/irq.ts";
export { type PciFunction } from "./hal/pci.ts";
export {
  type EventChannel,
  type EventChannels,
  type GrantedPages,
  type GrantTable,
  type XsTransport,
} from "./hal/xen.ts";
export { type IrqMode } from "./drivers/net/nic.ts";
export { LegacyTransport, ModernTransport, openTransport } from "./drivers/virtio/pci.ts";
export { NETFRONT_MAX_MTU } from "./drivers/xen/netif.ts";
export { XenbusState } from "./drivers/xen/xenbus.ts";
