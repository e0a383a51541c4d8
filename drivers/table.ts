/**
 * The driver table: which pvdrv driver serves which device, by PCI ids or by XenBus device type. `probe` asks it
 * which functions pvdrv can drive, `bind` refuses anything it has no driver for, and {@link openNic} opens a device
 * with the driver it names. Adding a device is one entry here plus its driver.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { openPci } from "../ffi/pci.ts";
import { parsePciAddress, readDevice } from "../ffi/sysfs.ts";
import { XenbusDevice } from "../ffi/xenbus.ts";
import { Evtchn, Gntalloc } from "../ffi/xen.ts";
import type { IrqMode, Nic } from "./net/nic.ts";
import { VIRTIO_NET, VirtioNet } from "./virtio/net.ts";
import { virtioDeviceType } from "./virtio/pci.ts";
import { Netfront } from "./xen/netfront.ts";
import { XenStore } from "./xen/xenstore.ts";

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

/** One driver: what it serves and how to open it. */
export interface NicDriver {
  /** The driver's name ("virtio-net"). */
  readonly name: string;
  /** The PCI functions it serves (absent: not a PCI driver). */
  readonly pci?: (ids: PciIds) => boolean;
  /** The XenBus device type it serves under device/ ("vif"; absent: not a XenBus driver). */
  readonly xenbus?: string;
  /** Open device `name` (a PCI address, or "type/N" for XenBus). */
  open(name: string, opts: OpenOptions): Promise<Nic>;
}

function openVirtioNet(address: string, opts: OpenOptions): Promise<Nic> {
  // The NIC owns the function: it closes it with itself, or at once if the open fails.
  return Promise.resolve(VirtioNet.openPci(opts.sysfs ? openPci(address, opts.sysfs) : openPci(address), {
    irq: opts.irq ?? "poll",
    queues: opts.queues,
    promiscuous: opts.promiscuous,
    ownsPci: true,
  }));
}

async function openNetfront(name: string, opts: OpenOptions): Promise<Nic> {
  const vif = Number(name.slice(name.indexOf("/") + 1));
  const xs = new XenStore(new XenbusDevice());
  const grants = new Gntalloc();
  try {
    // Once open, the NIC owns its xenstore connection and grant device and closes them with itself.
    return await Netfront.open(xs, grants, new Evtchn(), {
      vif,
      queues: opts.queues,
      mtu: opts.mtu,
      owns: [xs, grants],
    });
  } catch (e) {
    grants.close();
    await xs.close();
    throw e;
  }
}

/** Every NIC driver pvdrv has. */
export const NIC_DRIVERS: readonly NicDriver[] = [
  { name: "virtio-net", pci: (d) => virtioDeviceType(d) === VIRTIO_NET, open: openVirtioNet },
  { name: "netfront", xenbus: "vif", open: openNetfront },
];

/** The driver for a PCI function with these ids, or null. */
export function pciDriverFor(ids: PciIds): NicDriver | null {
  return NIC_DRIVERS.find((d) => d.pci?.(ids)) ?? null;
}

/** The driver for a XenBus device type ("vif"), or null. */
export function xenbusDriverFor(type: string): NicDriver | null {
  return NIC_DRIVERS.find((d) => d.xenbus === type) ?? null;
}

/** Open `name` with the driver the table names: "0000:00:04.0" / "00:04.0" (PCI) or "vif/0" (XenBus). */
export async function openNic(name: string, opts: OpenOptions = {}): Promise<Nic> {
  const xen = name.match(/^([a-z]+)\/(\d{1,5})$/);
  if (xen) {
    const d = xenbusDriverFor(xen[1]);
    if (!d) throw new PvdrvError("nic", `no pvdrv driver serves XenBus ${xen[1]} devices (${name})`);
    return await d.open(name, opts);
  }
  const addr = parsePciAddress(name);
  const info = opts.sysfs ? readDevice(addr, opts.sysfs) : readDevice(addr);
  const d = pciDriverFor(info);
  if (!d) {
    throw new PvdrvError(
      "nic",
      `${addr} (${info.vendorId.toString(16)}:${info.deviceId.toString(16)}) has no pvdrv driver`,
    );
  }
  return await d.open(addr, opts);
}
