/**
 * The steps every virtio driver takes the same way (virtio 1.2 §3.1.1, §3.3.1): open a PCI function's bus,
 * negotiate features with what the bus requires, say DRIVER_OK, keep every DMA region it allocates, and stop the
 * device — reset when live (all DMA stops), FAILED when it never got going — before its memory goes back. The
 * drivers (net.ts, blk.ts) add only what their device type needs.
 * @module
 */
import type { DmaAllocator, DmaRegion } from "../../hal/dma.ts";
import type { PciFunction } from "../../hal/pci.ts";
import { F, STATUS } from "./features.ts";
import { openVirtioPci, type VirtioPciOptions } from "./pci.ts";
import { negotiate, type VirtioBus, VirtioError, type VirtioTransport } from "./transport.ts";

/**
 * The virtio bus of an opened PCI function for a driver (MSI-X set up when `irq` is "msix"); with `ownsPci` the
 * function is closed at once if that fails.
 */
export function busOfPci(
  pci: PciFunction,
  opts: Pick<VirtioPciOptions, "transport"> & { ownsPci?: boolean; irq?: string },
): VirtioBus {
  try {
    return openVirtioPci(pci, {
      transport: opts.transport,
      msix: opts.irq === "msix",
      ownsPci: opts.ownsPci,
    });
  } catch (e) {
    if (opts.ownsPci) pci.close();
    throw e;
  }
}

/**
 * Feature negotiation (§3.1.1 steps 2–6): `wanted` but `disable` (32 bits on a legacy device), and what the bus
 * requires — VERSION_1 on a modern device, ACCESS_PLATFORM behind an IOMMU (the device gets IOVAs: it must
 * translate them, or it would DMA elsewhere).
 */
export function negotiateOn(bus: VirtioBus, wanted: bigint, disable: bigint): bigint {
  const t = bus.transport;
  const required = t.legacy ? 0n : F.VERSION_1 | (bus.iommu ? F.ACCESS_PLATFORM : 0n);
  let want = wanted & ~disable;
  if (t.legacy) want &= 0xffffffffn;
  if (bus.iommu && !t.legacy && !(t.deviceFeatures() & F.ACCESS_PLATFORM)) {
    throw new VirtioError(
      `${bus.name} does not offer VIRTIO_F_ACCESS_PLATFORM, so it would bypass the IOMMU: ` +
        `give QEMU iommu_platform=on for this device, or use UIO`,
    );
  }
  return negotiate(t, want, required);
}

/** DRIVER_OK (§3.1.1 step 8), and a device that asks for a reset at once is refused. */
export function driverOk(t: VirtioTransport): void {
  t.setStatus(STATUS.ACKNOWLEDGE | STATUS.DRIVER | (t.legacy ? 0 : STATUS.FEATURES_OK) | STATUS.DRIVER_OK);
  if (t.status() & STATUS.DEVICE_NEEDS_RESET) {
    throw new VirtioError("device needs reset right after DRIVER_OK");
  }
}

/** An allocator over `dma` that records every region in `regions`, so a failed open or a close frees each. */
export function trackedDma(dma: DmaAllocator, regions: DmaRegion[]): DmaAllocator {
  return {
    kind: dma.kind,
    maxRegion: dma.maxRegion,
    alloc: (n: number) => {
      const r = dma.alloc(n);
      regions.push(r);
      return r;
    },
    close: () => {},
  };
}

/**
 * Stop the device behind `bus` and release its memory: reset a live one (all DMA stops before the memory goes),
 * tell one that never reached DRIVER_OK the driver gave up (FAILED), turn interrupts off; then retire `pools`
 * (their memory stays while the application holds buffers) and free every other region in `regions`.
 */
export function stopDevice(
  bus: VirtioBus,
  live: boolean,
  pools: { retire(): void; readonly region: unknown }[],
  regions: DmaRegion[],
): void {
  const t = bus.transport;
  try {
    if (live) t.reset();
    else t.setStatus(t.status() | STATUS.FAILED);
  } catch { /* device gone: memory is still released below */ }
  try {
    bus.disableIrqs();
  } catch { /* ignore */ }
  const pooled = new Set<unknown>();
  for (const p of pools) {
    p.retire();
    pooled.add(p.region);
  }
  for (const r of regions.splice(0)) if (!pooled.has(r)) r.free();
}
