/**
 * Open a NIC by name: a PCI address for virtio-net (through whichever of VFIO and UIO it is bound to), or
 * "vif/N" for a Xen netfront (through /dev/xen/xenbus, gntalloc and evtchn).
 * @module
 */
import type { Nic } from "./nic.ts";
import { openPci } from "./pci/device.ts";
import { parsePciAddress } from "./pci/sysfs.ts";
import { type IrqMode, VirtioNet } from "./virtio/net.ts";
import { Netfront } from "./xen/netfront.ts";
import { XenStore } from "./xen/xenstore.ts";
import { XenbusDevice } from "../ffi/xenbus.ts";
import { Evtchn, Gntalloc } from "../ffi/xen.ts";

/** Options common to every driver. */
export interface OpenOptions {
  /** Interrupt mode (netfront: any mode but "poll" waits on its event channel). */
  irq?: IrqMode;
  /** Queue pairs. */
  queues?: number;
  /** Promiscuous mode (virtio-net). */
  promiscuous?: boolean;
  /** MTU (netfront; above 1500 uses multi-slot frames). */
  mtu?: number;
}

/** Open `name`: "0000:00:04.0" / "00:04.0" (virtio-net) or "vif/0" (Xen netfront). */
export async function openNic(name: string, opts: OpenOptions = {}): Promise<Nic> {
  const vif = name.match(/^vif\/(\d{1,5})$/);
  if (vif) return await openNetfront(Number(vif[1]), opts);
  const addr = parsePciAddress(name);
  const pci = openPci(addr);
  try {
    const irq = opts.irq ?? "poll";
    if (irq === "msix" && !pci.irqKinds().includes("msix")) {
      throw new Error(`${addr} opened through ${pci.access} cannot deliver MSI-X: use --irq intx or poll`);
    }
    return VirtioNet.open(pci, {
      irq,
      queuePairs: opts.queues,
      promiscuous: opts.promiscuous,
      ownsPci: true,
    });
  } catch (e) {
    pci.close();
    throw e;
  }
}

async function openNetfront(vif: number, opts: OpenOptions): Promise<Nic> {
  const xs = new XenStore(new XenbusDevice());
  const grants = new Gntalloc();
  try {
    const nf = await Netfront.open(xs, grants, new Evtchn(), { vif, queues: opts.queues, mtu: opts.mtu });
    const close = nf.close.bind(nf);
    // The NIC owns its xenstore connection and grant device.
    nf.close = async () => {
      await close();
      grants.close();
      await xs.close();
    };
    return nf;
  } catch (e) {
    grants.close();
    await xs.close();
    throw e;
  }
}
