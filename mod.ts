/**
 * pvdrv: device drivers in TypeScript, running as ordinary Linux processes on Deno.
 *
 * The layers, each importing only those below it:
 * - the hardware seam (`hal/`): the interfaces drivers see (DMA memory, register regions, interrupts, PCI
 *   functions, Xen grants, event channels and the xenstore byte stream) with in-memory implementations for tests;
 * - Linux implementations over the native shim (`ffi/`): VFIO, UIO, sysfs, gntalloc, evtchn, xenbus;
 * - drivers (`drivers/`): the NIC queue core, virtio (transports, split virtqueue, virtio-net), Xen (xenstore,
 *   XenBus, netif, netfront), PCI (config, probe, bind) and the driver table that opens a NIC by name;
 * - a network host (`net/`): Ethernet, ARP, IPv4, ICMP echo, UDP sockets and a DHCP client on any NIC;
 * - applications (`apps/`): traffic generation and checking, the test frame format, pcap, the TAP bridge.
 *
 * ```ts
 * import { openNic } from "./mod.ts";
 * const nic = await openNic("0000:00:04.0"); // bound to vfio-pci or uio_pci_generic first
 * console.log(nic.name, nic.mtu);
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

// ---- drivers ----
export {
  emptyStats,
  FRAME_OVERHEAD,
  type IrqMode,
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
export { PacketBuffer, PacketPool, type PoolMemory } from "./drivers/net/packet_pool.ts";
export { type Closeable, NicCore, type QueuePair } from "./drivers/net/core.ts";
export {
  NIC_DRIVERS,
  type NicDriver,
  openNic,
  type OpenOptions,
  pciDriverFor,
  type PciIds,
  xenbusDriverFor,
} from "./drivers/table.ts";
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
export { bindDevice, type BindOptions, BindRefused, type BindTarget } from "./drivers/pci/bind.ts";
export { type HostNet } from "./drivers/pci/host_net.ts";
export { probe, type ProbeEntry } from "./drivers/pci/probe.ts";
export {
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
export { type Segment, SplitQueue, VirtqueueError } from "./drivers/virtio/virtqueue.ts";
export {
  F,
  featureNames,
  NET_F,
  type NetFeature,
  type ReservedFeature,
  STATUS,
} from "./drivers/virtio/features.ts";
export { XenStore, XenStoreError, type XenStoreOptions } from "./drivers/xen/xenstore.ts";
export { readState, waitState, XenbusState } from "./drivers/xen/xenbus.ts";
export { Netfront, type NetfrontOptions, type NetfrontQueuePair, txLayout } from "./drivers/xen/netfront.ts";
export { NETFRONT_MAX_MTU } from "./drivers/xen/netif.ts";
export { FrontRing, RingError } from "./drivers/xen/ring.ts";
export {
  type AgentOptions,
  installKernelHandoff,
  runAgent,
  type ShutdownAction,
} from "./drivers/xen/agent.ts";
export { probeXen, type XenBusDevice, type XenProbe } from "./drivers/xen/probe.ts";

// ---- the network host ----
export { type HostOptions, type HostStats, NetHost, type PingReply } from "./net/host.ts";
export { type Datagram, UdpSocket } from "./net/udp.ts";
export { type Cidr, ipText, parseCidr, parseIp } from "./net/ipv4.ts";
export { DhcpClient, type DhcpSend, type DhcpState, type DhcpTiming, type Lease } from "./net/dhcp.ts";
export { ArpCache, type ArpTiming, Enqueued } from "./net/arp.ts";
export { finish as checksumFinish, pseudoSum, sum16 } from "./net/checksum.ts";

// ---- applications ----
export { checkFrame, FrameCheck, writeFrame } from "./apps/frames.ts";
export { PcapWriter } from "./apps/pcap.ts";
export {
  echoExchange,
  type EchoResult,
  generate,
  receive,
  type RecvOptions,
  type RecvResult,
  type SendOptions,
  type SendResult,
  type Window,
} from "./apps/traffic.ts";
