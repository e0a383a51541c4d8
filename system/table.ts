/**
 * The driver table, by device class: which pvdrv driver serves which device (PCI ids or XenBus device type), and
 * for each class who uses such a device on this machine. `probe` asks it which functions pvdrv can drive and
 * which the machine uses, `bind` refuses anything it has no driver for or the machine uses, and {@link openNic}
 * opens a device with the driver it names. Adding a device is one entry here plus its driver.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { openPci } from "../ffi/pci.ts";
import { parsePciAddress, type PciDeviceInfo, readDevice } from "../ffi/sysfs.ts";
import { XenbusDevice } from "../ffi/xenbus.ts";
import { Evtchn, Gntalloc } from "../ffi/xen.ts";
import type { Nic } from "../drivers/net/nic.ts";
import { VIRTIO_NET, VirtioNet } from "../drivers/virtio/net.ts";
import { VIRTIO_BLK, VirtioBlk } from "../drivers/virtio/blk.ts";
import type { RingFormat } from "../drivers/virtio/net.ts";
import type { Disk } from "../drivers/block/disk.ts";
import type { Closeable, IrqMode } from "../drivers/core/device.ts";
import { virtioDeviceType } from "../drivers/virtio/pci.ts";
import { Netfront } from "../drivers/xen/netfront.ts";
import { Blkfront } from "../drivers/xen/blkfront.ts";
import { XenStore } from "../drivers/xen/xenstore.ts";
import { type DeviceUse, deviceUse, diskUse, type Machine, networkUse } from "./device_use.ts";
import { openVhostUser, VHOST_USER_NAME } from "./vhost_port.ts";

/** Options common to every NIC driver. */
export interface OpenOptions {
  /** Interrupt mode (netfront: any mode but "poll" waits on its event channel, which it always has). */
  irq?: IrqMode;
  /** Queue pairs. */
  queues?: number;
  /** Promiscuous mode (virtio-net). */
  promiscuous?: boolean;
  /** MTU (netfront; above 1500 uses multi-slot frames). */
  mtu?: number;
  /** Virtqueue format (virtio-net; packed when the device offers it). */
  ring?: RingFormat;
  /** The sysfs tree PCI devices are found in (default /sys; a fixture tree in tests). */
  sysfs?: string;
}

/** The ids a PCI match looks at (config space header). */
export interface PciIds {
  /** Vendor id. */
  vendorId: number;
  /** Device id. */
  deviceId: number;
  /** Subsystem device id (virtio transitional devices carry their type there). */
  subsystemId: number;
}

/** A device class, and how the machine may be using one of its devices. */
export interface DeviceClass {
  /** The class ("nic", "disk"). */
  readonly name: string;
  /** Who uses PCI function `d` on this machine, for this class (null: nobody). */
  inUse(d: PciDeviceInfo, sysfs: string, m: Machine): DeviceUse | null;
}

/** The classes pvdrv knows: NICs, and disks (which no pvdrv driver serves yet, but whose use probe reports). */
export const DEVICE_CLASSES: { readonly nic: DeviceClass; readonly disk: DeviceClass } = {
  nic: { name: "nic", inUse: (d, root, m) => networkUse(d.netInterfaces, root, m.net) },
  disk: { name: "disk", inUse: (d, root, m) => diskUse(d.blockDevices, root, m.disks) },
};

/** What every driver entry says: its class and what it serves. */
export interface DriverEntry {
  /** The driver's name ("virtio-net"). */
  readonly name: string;
  /** Its device class. */
  readonly class: DeviceClass;
  /** The PCI functions it serves (absent: not a PCI driver). */
  readonly pci?: (ids: PciIds) => boolean;
  /** The XenBus device type it serves under device/ ("vif"; absent: not a XenBus driver). */
  readonly xenbus?: string;
}

/** A NIC driver. */
export interface NicDriver extends DriverEntry {
  /** It opens NICs. */
  readonly kind: "nic";
  /** Open device `name` (a PCI address, or "type/N" for XenBus). */
  open(name: string, opts: OpenOptions): Promise<Nic>;
}

/** Options common to every disk driver. */
export interface DiskOpenOptions {
  /** Interrupt mode. */
  irq?: IrqMode;
  /** Request queues. */
  queues?: number;
  /** Requests in flight per queue. */
  queueDepth?: number;
  /** Bytes of one DMA buffer (a multiple of 4096). */
  bufferBytes?: number;
  /** The sysfs tree PCI devices are found in (default /sys; a fixture tree in tests). */
  sysfs?: string;
}

/** A disk driver. */
export interface DiskDriver extends DriverEntry {
  /** It opens disks. */
  readonly kind: "disk";
  /** Open device `name` (a PCI address, or "type/N" for XenBus). */
  open(name: string, opts: DiskOpenOptions): Promise<Disk>;
}

/** One driver: its class, what it serves and how to open it. */
export type Driver = NicDriver | DiskDriver;

function openVirtioNet(address: string, opts: OpenOptions): Promise<Nic> {
  // The NIC owns the function: it closes it with itself, or at once if the open fails.
  return Promise.resolve(VirtioNet.openPci(opts.sysfs ? openPci(address, opts.sysfs) : openPci(address), {
    irq: opts.irq ?? "poll",
    queues: opts.queues,
    promiscuous: opts.promiscuous,
    ring: opts.ring,
    ownsPci: true,
  }));
}

/** The Xen resources a frontend opens with: this domain's xenstore, gntalloc and evtchn. */
interface XenResources {
  xs: XenStore;
  grants: Gntalloc;
  evtchns: Evtchn;
}

/**
 * Open Xen device `name` ("vif/0", "vbd/51712") with `open`, given its index and fresh Xen resources. Once open,
 * the device owns its xenstore connection and grant device and closes them with itself; a failed open closes them.
 */
async function openXenFrontend<T>(
  name: string,
  open: (index: number, r: XenResources, owns: Closeable[]) => Promise<T>,
): Promise<T> {
  const index = Number(name.slice(name.indexOf("/") + 1));
  const xs = new XenStore(new XenbusDevice());
  const grants = new Gntalloc();
  try {
    return await open(index, { xs, grants, evtchns: new Evtchn() }, [xs, grants]);
  } catch (e) {
    grants.close();
    await xs.close();
    throw e;
  }
}

function openNetfront(name: string, opts: OpenOptions): Promise<Nic> {
  return openXenFrontend(
    name,
    (vif, r, owns) =>
      Netfront.open(r.xs, r.grants, r.evtchns, { vif, queues: opts.queues, mtu: opts.mtu, owns }),
  );
}

function openVirtioBlk(address: string, opts: DiskOpenOptions): Promise<Disk> {
  // The disk owns the function: it closes it with itself, or at once if the open fails.
  return Promise.resolve(VirtioBlk.openPci(opts.sysfs ? openPci(address, opts.sysfs) : openPci(address), {
    irq: opts.irq ?? "poll",
    queues: opts.queues,
    queueDepth: opts.queueDepth,
    bufferBytes: opts.bufferBytes,
    ownsPci: true,
  }));
}

function openBlkfront(name: string, opts: DiskOpenOptions): Promise<Disk> {
  return openXenFrontend(
    name,
    (vbd, r, owns) =>
      Blkfront.open(r.xs, r.grants, r.evtchns, {
        vbd,
        queues: opts.queues,
        queueDepth: opts.queueDepth,
        owns,
      }),
  );
}

/** Every driver pvdrv has. */
export const DRIVERS: readonly Driver[] = [
  {
    name: "virtio-net",
    kind: "nic",
    class: DEVICE_CLASSES.nic,
    pci: (d) => virtioDeviceType(d) === VIRTIO_NET,
    open: openVirtioNet,
  },
  { name: "netfront", kind: "nic", class: DEVICE_CLASSES.nic, xenbus: "vif", open: openNetfront },
  {
    name: "virtio-blk",
    kind: "disk",
    class: DEVICE_CLASSES.disk,
    pci: (d) => virtioDeviceType(d) === VIRTIO_BLK,
    open: openVirtioBlk,
  },
  { name: "blkfront", kind: "disk", class: DEVICE_CLASSES.disk, xenbus: "vbd", open: openBlkfront },
];

/** The NIC drivers. */
export const NIC_DRIVERS: readonly NicDriver[] = DRIVERS.filter((d): d is NicDriver => d.kind === "nic");
/** The disk drivers. */
export const DISK_DRIVERS: readonly DiskDriver[] = DRIVERS.filter((d): d is DiskDriver => d.kind === "disk");

/** The driver for a PCI function with these ids, or null. */
export function pciDriverFor(ids: PciIds): Driver | null {
  return DRIVERS.find((d) => d.pci?.(ids)) ?? null;
}

/** The driver for a XenBus device type ("vif"), or null. */
export function xenbusDriverFor(type: string): Driver | null {
  return DRIVERS.find((d) => d.xenbus === type) ?? null;
}

/**
 * Who uses PCI function `d` on this machine: its driver's class answers; a function no pvdrv driver serves is
 * asked of every class (probe shows a mounted disk as active even before pvdrv drives disks).
 */
export function useOf(d: PciDeviceInfo, sysfs: string, m: Machine): DeviceUse | null {
  const drv = pciDriverFor(d);
  return drv ? drv.class.inUse(d, sysfs, m) : deviceUse(d, sysfs, m);
}

/** The driver for `name` ("0000:00:04.0", "00:04.0", "vif/0", "vbd/51712"), of the class `kind` wants. */
function driverFor(name: string, kind: Driver["kind"], sysfs?: string): { driver: Driver; device: string } {
  const errorKind = kind;
  const xen = name.match(/^([a-z]+)\/(\d{1,5})$/);
  let d: Driver | null, device: string;
  if (xen) {
    d = xenbusDriverFor(xen[1]);
    if (!d) throw new PvdrvError(errorKind, `no pvdrv driver serves XenBus ${xen[1]} devices (${name})`);
    device = name;
  } else {
    device = parsePciAddress(name);
    const info = sysfs ? readDevice(device, sysfs) : readDevice(device);
    d = pciDriverFor(info);
    if (!d) {
      throw new PvdrvError(
        errorKind,
        `${device} (${info.vendorId.toString(16)}:${info.deviceId.toString(16)}) has no pvdrv driver`,
      );
    }
  }
  if (d.kind !== kind) {
    throw new PvdrvError(
      errorKind,
      `${name} is a ${d.class.name} (${d.name}), not a ${kind}: open it with ${
        d.kind === "nic" ? "openNic" : "openDisk"
      }`,
    );
  }
  return { driver: d, device };
}

/**
 * Open NIC `name` with the driver the table names: "0000:00:04.0" / "00:04.0" (PCI) or "vif/0" (XenBus) — or a
 * QEMU guest's virtio-net served by pvdrv, "vhost-user:PATH" / "vhost-user-client:PATH" (system/vhost_port.ts).
 */
export async function openNic(name: string, opts: OpenOptions = {}): Promise<Nic> {
  if (VHOST_USER_NAME.test(name)) {
    return openVhostUser(name, { irq: (opts.irq ?? "poll") !== "poll", queues: opts.queues });
  }
  const { driver, device } = driverFor(name, "nic", opts.sysfs);
  return await (driver as NicDriver).open(device, opts);
}

/** Open disk `name` with the driver the table names: "0000:00:05.0" (PCI) or "vbd/N" (XenBus). */
export async function openDisk(name: string, opts: DiskOpenOptions = {}): Promise<Disk> {
  const { driver, device } = driverFor(name, "disk", opts.sysfs);
  return await (driver as DiskDriver).open(device, opts);
}
