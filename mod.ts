/**
 * pvdrv: device drivers in TypeScript, running as ordinary Linux processes on Deno. This module is the API for
 * using devices: open a NIC by name, run the IPv4 network host on it, generate and check traffic, and ask the
 * system which devices pvdrv may take. Writing a driver or a device backend starts from `drivers.ts` (the
 * `./drivers` export).
 *
 * ```ts
 * import { openNic } from "./mod.ts";
 * const nic = await openNic("0000:00:04.0"); // bound to vfio-pci or uio_pci_generic first
 * console.log(nic.name, nic.mtu);
 * await nic.close();
 * ```
 * @module
 */

// ---- errors and the shim ----
export { type ErrorKind, isPvdrvError, PvdrvError, type PvdrvErrorOptions } from "./hal/errors.ts";
export { buildNative, libraryPath, NativeError, prepareNative } from "./ffi/lib.ts";

// ---- devices: the table, NICs, disks and their buffers ----
export {
  DEVICE_CLASSES,
  type DeviceClass,
  DISK_DRIVERS,
  type DiskDriver,
  type DiskOpenOptions,
  type Driver,
  type DriverEntry,
  DRIVERS,
  NIC_DRIVERS,
  type NicDriver,
  openDisk,
  openNic,
  type OpenOptions,
  pciDriverFor,
  type PciIds,
  useOf,
  xenbusDriverFor,
} from "./system/table.ts";
export type { IrqMode } from "./drivers/core/device.ts";
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
  BlockBuffer,
  BlockOp,
  BlockPool,
  BlockRequest,
  BlockStatus,
  Completions,
  type Disk,
  type DiskInfo,
  type DiskStats,
  emptyDiskStats,
} from "./drivers/block/disk.ts";

// ---- the system: which devices pvdrv may take ----
export { bindDevice, type BindOptions, BindRefused, type BindTarget } from "./system/bind.ts";
export { type DeviceUse, type Machine, machineFor } from "./system/device_use.ts";
export { type MachineNet, readMachineNet } from "./system/machine_net.ts";
export { type MachineDisks, readMachineDisks } from "./system/machine_disks.ts";
export { probe, type ProbeEntry } from "./system/probe.ts";
export { probeXen, type XenBusDevice, type XenProbe } from "./system/xen_probe.ts";

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
export type { FramePort } from "./apps/bridge.ts";
export {
  AGE_MS,
  emptyPortCounters,
  FdPort,
  MAX_MACS,
  NicPort,
  type PortCounters,
  Switch,
  type SwitchOptions,
  type SwitchPort,
} from "./apps/switch.ts";
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
