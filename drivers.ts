/**
 * pvdrv for driver writers: the hardware seam, its Linux implementations, the device and class cores, and the
 * bus code (virtio transports and queues, both sides; Xen rings, XenBus frontend lifecycle, xenstore) that a new
 * driver or device backend builds on. Applications use `mod.ts`.
 *
 * The layers, each importing only those below it:
 * - the hardware seam (`hal/`): the interfaces drivers see (DMA memory, register regions, interrupts, PCI
 *   functions, Xen grants, event channels and the xenstore byte stream) with in-memory implementations for tests;
 * - Linux implementations over the native shim (`ffi/`): VFIO, UIO, sysfs, gntalloc, evtchn, xenbus;
 * - drivers (`drivers/`): the class-agnostic device core and buffer pools (`core/`), the NIC class core
 *   (`net/`), virtio (transports, split and packed virtqueues, driver and device sides, virtio-net), Xen (xenstore, XenBus
 *   frontend, rings, netif, netfront, blkif, blkfront) and PCI config space.
 *
 * ```ts
 * import { openPci, VirtioNet } from "./drivers.ts";
 * // The driver itself, without the driver table: a PCI function bound to vfio-pci, owned by the NIC.
 * const nic = VirtioNet.openPci(openPci("0000:00:04.0"), { ownsPci: true, queues: 2 });
 * console.log(nic.featureNames());
 * await nic.close();
 * ```
 * @module
 */

// ---- the hardware seam ----
export { type ErrorKind, isPvdrvError, PvdrvError, type PvdrvErrorOptions } from "./hal/errors.ts";
export {
  CheckedRegion,
  type MmioRegion,
  ModelRegion,
  RegionBoundsError,
  type RegisterModel,
  SubRegion,
  write64Split,
} from "./hal/mmio.ts";
export { type DmaAllocator, type DmaRegion, HUGE_PAGE, ModelDmaAllocator, PAGE, roundUp } from "./hal/dma.ts";
export type { IrqSource } from "./hal/irq.ts";
export {
  CMD_BUS_MASTER,
  CMD_INTX_DISABLE,
  CMD_IO,
  CMD_MEMORY,
  type IrqKind,
  type PciFunction,
  snapshotConfig,
} from "./hal/pci.ts";
export {
  type EventChannel,
  type EventChannels,
  type GrantedPages,
  type GrantTable,
  XEN_PAGE,
  type XsTransport,
} from "./hal/xen.ts";

// ---- Linux implementations ----
export {
  buildNative,
  IoctlStruct,
  libraryPath,
  NativeError,
  type OpenHints,
  prepareNative,
} from "./ffi/lib.ts";
export { MappedRegion, PioRegion } from "./ffi/mmio.ts";
export { allocHostMemory, type HostMemory, PhysicalDmaAllocator, virtToPhys } from "./ffi/dma.ts";
export { EventFd, EventFdIrq, IrqWaiter, irqWaiter } from "./ffi/irq.ts";
export { type RegionInfo, VfioContainer, VfioDevice, VfioDmaAllocator, VfioGroup } from "./ffi/vfio.ts";
export { UioIrq } from "./ffi/uio.ts";
export { openPci, UioPciFunction, VfioPciFunction } from "./ffi/pci.ts";
export {
  type BarResource,
  listDevices,
  parsePciAddress,
  type PciDeviceInfo,
  readDevice,
} from "./ffi/sysfs.ts";
export { Evtchn, Gntalloc } from "./ffi/xen.ts";
export { XenbusDevice } from "./ffi/xenbus.ts";
export {
  closeFd,
  FdConnector,
  FdListener,
  FdMapping,
  FdSocket,
  LINUX_FD_OPS,
  MAX_FDS,
  memfd,
} from "./ffi/unix.ts";
export { UdpLink } from "./ffi/udp_link.ts";
export { FrameFd } from "./ffi/frame_fd.ts";
// Where a driver runs: one CPU for the process, the device's interrupts steered there (the tasks' --cpu).
export { pinDriver, type Pinned, type PinRoots, pinThread } from "./ffi/cpu.ts";
export type { FdAcceptor, FdChannel, FdOps, SharedMapping } from "./hal/fds.ts";

// ---- drivers ----
export {
  emptyStats,
  FRAME_OVERHEAD,
  macToString,
  maxFrameFor,
  MIN_FRAME,
  type Nic,
  parseMac,
  type QueueStats,
  RX_CSUM_PARTIAL,
  RX_CSUM_VALID,
  settledStats,
  totalStats,
} from "./drivers/net/nic.ts";
export { PacketBuffer, PacketPool } from "./drivers/net/packet_pool.ts";
export { PacketBatch } from "./drivers/net/packet_batch.ts";
export {
  BufferPool,
  type MakeBuffer,
  PoolBuffer,
  type PoolMemory,
  releaseOwned,
} from "./drivers/core/buffer_pool.ts";
export { type Closeable, type CoreQueue, DeviceCore, type IrqMode } from "./drivers/core/device.ts";
export { NicCore, type QueuePair } from "./drivers/net/core.ts";
export { DiskCore, type DiskQueue, type RequestSlots, SERIAL_BYTES } from "./drivers/block/core.ts";
export {
  VIRTIO_BLK,
  VirtioBlk,
  type VirtioBlkOptions,
  type VirtioBlkQueue,
  WANTED_BLK_FEATURES,
} from "./drivers/virtio/blk.ts";
export {
  BLK_CONFIG,
  BLK_DWZ_F_UNMAP,
  BLK_DWZ_SEG,
  BLK_ID_BYTES,
  BLK_REQ_HDR,
  BLK_S,
  BLK_T,
  readBlkHeader,
  readDwzSegment,
  SECTOR,
  writeBlkHeader,
  writeDwzSegment,
} from "./drivers/virtio/blk_wire.ts";
export {
  type Capability,
  type MsixCap,
  parseConfig,
  type PciConfig,
  PciConfigError,
  readConfigOf,
  VIRTIO_PCI_CAP,
  type VirtioCap,
} from "./drivers/pci/config.ts";
export {
  DEFAULT_RING,
  type RingFormat,
  VIRTIO_NET,
  VirtioNet,
  type VirtioNetOptions,
  type VirtioQueuePair,
  WANTED_FEATURES,
} from "./drivers/virtio/net.ts";
export {
  negotiate,
  NO_VECTOR,
  type QueueAddresses,
  readConfig,
  type VirtioBus,
  VirtioError,
  type VirtioTransport,
} from "./drivers/virtio/transport.ts";
export {
  LegacyTransport,
  ModernTransport,
  openTransport,
  openVirtioPci,
  VIRTIO_VENDOR,
  virtioDeviceType,
  type VirtioPciOptions,
} from "./drivers/virtio/pci.ts";
export { type Segment, SplitQueue, type Virtqueue, VirtqueueError } from "./drivers/virtio/virtqueue.ts";
export { PackedQueue } from "./drivers/virtio/packed_queue.ts";
export { PackedDeviceQueue } from "./drivers/virtio/packed_device_queue.ts";
export {
  bit,
  BLK_F,
  type BlkFeature,
  F,
  featureNames,
  NET_F,
  type NetFeature,
  type ReservedFeature,
  STATUS,
  VIRTIO_ID,
} from "./drivers/virtio/features.ts";
export {
  Chain,
  DeviceQueue,
  DeviceQueueError,
  type DeviceRing,
  type GuestMemory,
  type RingAddresses,
} from "./drivers/virtio/device_queue.ts";
export {
  BACKEND_PROTOCOL_FEATURES,
  type VhostDevice,
  VhostUserSession,
  Vring,
} from "./drivers/virtio/vhost_user.ts";
export { VhostMemory } from "./drivers/virtio/vhost_memory.ts";
export {
  VHOST_NET_FEATURES,
  type VhostPair,
  VhostUserNet,
  type VhostUserNetOptions,
} from "./drivers/virtio/vhost_net.ts";
export * as vhostUserWire from "./drivers/virtio/vhost_user_wire.ts";
export type { VringAddr } from "./drivers/virtio/vhost_user_wire.ts";
export { XenStore, XenStoreError, type XenStoreOptions } from "./drivers/xen/xenstore.ts";
export { readState, waitState, XenbusState } from "./drivers/xen/xenbus.ts";
export { Netfront, type NetfrontOptions, type NetfrontQueuePair, txLayout } from "./drivers/xen/netfront.ts";
export { NETFRONT_MAX_MTU } from "./drivers/xen/netif.ts";
export { Blkfront, type BlkfrontOptions, type BlkfrontQueue } from "./drivers/xen/blkfront.ts";
export {
  type BlkbackDisk,
  type BlkbackRings,
  MAX_RING_PAGE_ORDER,
  readBlkbackDisk,
  readBlkbackRings,
} from "./drivers/xen/blkback_info.ts";
export * as blkif from "./drivers/xen/blkif.ts";
export { FrontRing, RingError, ringSize, type RingViews, ringViews } from "./drivers/xen/ring.ts";
export {
  DOMID_FIRST_RESERVED,
  findFrontend,
  type FrontendDevice,
  type FrontendOptions,
  type FrontendSteps,
  XenbusFrontend,
} from "./drivers/xen/frontend.ts";
export { RequestIds } from "./drivers/core/request_ids.ts";
export {
  type AgentOptions,
  installKernelHandoff,
  runAgent,
  type ShutdownAction,
} from "./drivers/xen/agent.ts";
