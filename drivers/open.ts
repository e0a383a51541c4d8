/**
 * Open a NIC by name: a PCI address for virtio-net (through whichever of VFIO and UIO it is bound to).
 * @module
 */
import type { Nic } from "./nic.ts";
import { openPci } from "./pci/device.ts";
import { parsePciAddress } from "./pci/sysfs.ts";
import { type IrqMode, VirtioNet } from "./virtio/net.ts";

/** Options common to every driver. */
export interface OpenOptions {
  /** Interrupt mode. */
  irq?: IrqMode;
  /** Queue pairs. */
  queues?: number;
  /** Promiscuous mode. */
  promiscuous?: boolean;
}

/** Open `name` ("0000:00:04.0" or "00:04.0"). */
export function openNic(name: string, opts: OpenOptions = {}): Nic {
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
