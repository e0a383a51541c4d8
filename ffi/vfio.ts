/**
 * VFIO (linux/vfio.h): type1 IOMMU container, groups, device fds, regions, DMA mapping and interrupts.
 * Struct layouts and ioctl numbers come from linux/vfio.h (`_IO(';', 100 + n)`).
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { check, cstr, IoctlStruct, MAP_SHARED, native, openPath, PROT_RW } from "./lib.ts";
import { allocHostMemory } from "./dma.ts";
import { type DmaAllocator, type DmaRegion, HUGE_PAGE, PAGE, roundUp } from "../hal/dma.ts";
import { MappedRegion, PioRegion } from "./mmio.ts";
import type { MmioRegion } from "../hal/mmio.ts";
import { EventFdIrq } from "./irq.ts";

const io = (n: number) => (0x3b << 8) | (100 + n); // _IO(VFIO_TYPE, VFIO_BASE + n)
/** VFIO ioctl request numbers. */
export const VFIO = {
  GET_API_VERSION: io(0),
  CHECK_EXTENSION: io(1),
  SET_IOMMU: io(2),
  GROUP_GET_STATUS: io(3),
  GROUP_SET_CONTAINER: io(4),
  GROUP_UNSET_CONTAINER: io(5),
  GROUP_GET_DEVICE_FD: io(6),
  DEVICE_GET_REGION_INFO: io(8),
  DEVICE_GET_IRQ_INFO: io(9),
  DEVICE_SET_IRQS: io(10),
  IOMMU_MAP_DMA: io(13),
  IOMMU_UNMAP_DMA: io(14),
} as const;
const API_VERSION = 0;
const TYPE1_IOMMU = 1;
const TYPE1v2_IOMMU = 3;
const GROUP_FLAGS_VIABLE = 1;
/** Region flags. */
export const REGION_READ = 1, REGION_WRITE = 2, REGION_MMAP = 4;
/** vfio-pci region indices: BAR0..5 are 0..5. */
export const PCI_ROM_REGION = 6, PCI_CONFIG_REGION = 7;
/** vfio-pci interrupt indices. */
export const IRQ_INTX = 0, IRQ_MSI = 1, IRQ_MSIX = 2;
const IRQ_SET_DATA_NONE = 1,
  IRQ_SET_DATA_EVENTFD = 4,
  IRQ_SET_ACTION_UNMASK = 16,
  IRQ_SET_ACTION_TRIGGER = 32;

function openDev(path: string): number {
  return openPath(path, undefined, {
    missing: "load the vfio modules (vfio, vfio_iommu_type1, vfio-pci)",
    denied: "needs root (or access to /dev/vfio)",
  });
}

/** struct vfio_irq_set { u32 argsz, flags, index, start, count; u8 data[]; } with `fds` eventfd slots. */
function irqSet(flags: number, index: number, start: number, count: number, fds = 0): IoctlStruct {
  return new IoctlStruct(20 + 4 * fds, true).u32(4, flags).u32(8, index).u32(12, start).u32(16, count);
}

/** A type1 IOMMU container: one address space shared by its groups. */
export class VfioContainer {
  /** The container fd. */
  fd: number;
  #iommuSet = false;
  #groups: VfioGroup[] = [];
  #nextIova = 0x1_0000_0000; // above 4 GiB (and far from the x86 MSI window at 0xfee00000)

  /** Open /dev/vfio/vfio and check the API version and type1 support. */
  constructor() {
    this.fd = openDev("/dev/vfio/vfio");
    const n = native();
    const v = n.pvdrv_ioctl_int(this.fd, VFIO.GET_API_VERSION, 0);
    if (v !== API_VERSION) {
      this.close();
      throw new PvdrvError("device", `unsupported VFIO API version ${v}`);
    }
    if (
      n.pvdrv_ioctl_int(this.fd, VFIO.CHECK_EXTENSION, TYPE1v2_IOMMU) <= 0 &&
      n.pvdrv_ioctl_int(this.fd, VFIO.CHECK_EXTENSION, TYPE1_IOMMU) <= 0
    ) {
      this.close();
      throw new PvdrvError(
        "device",
        "VFIO has no type1 IOMMU: load vfio_iommu_type1 and boot with an IOMMU (intel_iommu=on)",
      );
    }
  }

  /** Attach IOMMU group `id` (the number under /dev/vfio). */
  openGroup(id: number): VfioGroup {
    const g = new VfioGroup(this, id);
    if (!this.#iommuSet) {
      const n = native();
      const type = n.pvdrv_ioctl_int(this.fd, VFIO.CHECK_EXTENSION, TYPE1v2_IOMMU) > 0
        ? TYPE1v2_IOMMU
        : TYPE1_IOMMU;
      const r = n.pvdrv_ioctl_int(this.fd, VFIO.SET_IOMMU, type);
      if (r < 0) {
        g.close();
        check("VFIO_SET_IOMMU", r);
      }
      this.#iommuSet = true;
    }
    this.#groups.push(g);
    return g;
  }

  /** Reserve `size` bytes of IOVA space (bump allocator, 2 MiB aligned for large maps). */
  reserveIova(size: number): number {
    const align = size >= HUGE_PAGE ? HUGE_PAGE : PAGE;
    const iova = roundUp(this.#nextIova, align);
    this.#nextIova = iova + roundUp(size, PAGE);
    if (this.#nextIova > 2 ** 39) throw new PvdrvError("device", "IOVA space exhausted (39-bit guest IOMMU)");
    return iova;
  }

  /** VFIO_IOMMU_MAP_DMA `size` bytes at `ptr` to `iova`, readable and writable by the device. */
  mapDma(ptr: Deno.PointerObject, iova: number, size: number): void {
    // struct vfio_iommu_type1_dma_map { u32 argsz, flags; u64 vaddr, iova, size; }
    new IoctlStruct(32, true).u32(4, 3) // READ | WRITE
      .u64(8, native().pvdrv_addr(ptr)).u64(16, iova).u64(24, size)
      .ioctl(
        this.fd,
        VFIO.IOMMU_MAP_DMA,
        `VFIO_IOMMU_MAP_DMA iova 0x${iova.toString(16)} size 0x${size.toString(16)}`,
      );
  }

  /** VFIO_IOMMU_UNMAP_DMA. */
  unmapDma(iova: number, size: number): void {
    // struct vfio_iommu_type1_dma_unmap { u32 argsz, flags; u64 iova, size; }
    new IoctlStruct(24, true).u64(8, iova).u64(16, size).ioctl(
      this.fd,
      VFIO.IOMMU_UNMAP_DMA,
      "VFIO_IOMMU_UNMAP_DMA",
    );
  }

  /** A DMA allocator mapping host memory into this container's IOMMU space. */
  dmaAllocator(): VfioDmaAllocator {
    return new VfioDmaAllocator(this);
  }

  /** Close groups and the container. */
  close(): void {
    for (const g of this.#groups.splice(0)) g.close();
    if (this.fd >= 0) native().pvdrv_close(this.fd);
    this.fd = -1;
  }
}

/** An IOMMU group, attached to a container. */
export class VfioGroup {
  /** The group fd. */
  fd: number;
  /** Opens /dev/vfio/<id>, checks viability and attaches it to `container`. */
  constructor(readonly container: VfioContainer, readonly id: number) {
    this.fd = openDev(`/dev/vfio/${id}`);
    // struct vfio_group_status { u32 argsz, flags; }
    const st = new IoctlStruct(8, true);
    st.ioctl(this.fd, VFIO.GROUP_GET_STATUS, "VFIO_GROUP_GET_STATUS");
    if (!(st.getU32(4) & GROUP_FLAGS_VIABLE)) {
      this.close();
      throw new PvdrvError(
        "device",
        `IOMMU group ${id} is not viable: every device in /sys/kernel/iommu_groups/${id}/devices must be bound to vfio-pci (or no driver)`,
      );
    }
    const r = new IoctlStruct(4).i32(0, container.fd).call(this.fd, VFIO.GROUP_SET_CONTAINER);
    if (r < 0) {
      this.close();
      check(`VFIO_GROUP_SET_CONTAINER (group ${id})`, r);
    }
  }

  /** Open the device `bdf` (e.g. "0000:00:04.0") of this group. */
  openDevice(bdf: string): VfioDevice {
    const r = native().pvdrv_ioctl_ptr(this.fd, VFIO.GROUP_GET_DEVICE_FD, cstr(bdf));
    return new VfioDevice(check(`VFIO_GROUP_GET_DEVICE_FD ${bdf}`, r), bdf);
  }

  /** Close the group fd. */
  close(): void {
    if (this.fd >= 0) native().pvdrv_close(this.fd);
    this.fd = -1;
  }
}

/** One VFIO region's description. */
export interface RegionInfo {
  /** Region index. */
  index: number;
  /** REGION_* flags. */
  flags: number;
  /** Size in bytes (0: not implemented). */
  size: number;
  /** Offset of the region in the device fd. */
  offset: bigint;
}

/** A VFIO device fd: regions, config space, interrupts, reset. */
export class VfioDevice {
  /** Wraps a device fd from VFIO_GROUP_GET_DEVICE_FD. */
  constructor(public fd: number, readonly bdf: string) {}

  /** VFIO_DEVICE_GET_REGION_INFO. */
  regionInfo(index: number): RegionInfo {
    // struct vfio_region_info { u32 argsz, flags, index, cap_offset; u64 size, offset; }
    const b = new IoctlStruct(32, true).u32(8, index);
    b.ioctl(this.fd, VFIO.DEVICE_GET_REGION_INFO, `VFIO_DEVICE_GET_REGION_INFO ${index}`);
    return { index, flags: b.getU32(4), size: Number(b.getU64(16)), offset: b.getU64(24) };
  }

  /**
   * A BAR as a register region: mmapped when VFIO allows it, otherwise (I/O-port BARs) through pread/pwrite of
   * the device fd.
   */
  region(index: number): MmioRegion {
    const info = this.regionInfo(index);
    if (info.size === 0) throw new PvdrvError("device", `${this.bdf}: region ${index} is not implemented`);
    const name = `${this.bdf} BAR${index}`;
    if (info.flags & REGION_MMAP) {
      const n = native();
      const addr = n.pvdrv_mmap(BigInt(info.size), PROT_RW, MAP_SHARED, this.fd, info.offset);
      if (addr >= 0n) {
        const ptr = n.pvdrv_ptr(addr)!;
        return new MappedRegion(name, ptr, info.size, () => n.pvdrv_munmap(ptr, BigInt(info.size)));
      }
    }
    if (!(info.flags & REGION_READ)) {
      throw new PvdrvError("device", `${name} is neither mappable nor readable`);
    }
    if (info.offset % (1n << 32n) !== 0n) {
      throw new PvdrvError("device", `${name}: unexpected region offset ${info.offset}`);
    }
    return new PioRegion(name, this.fd, Number(info.offset >> 32n), info.size, false);
  }

  /** PCI config space through the config region. */
  config(): MmioRegion {
    const info = this.regionInfo(PCI_CONFIG_REGION);
    return new PioRegion(`${this.bdf} config`, this.fd, Number(info.offset >> 32n), info.size, false);
  }

  /** Number of vectors of interrupt index `index` (IRQ_INTX, IRQ_MSI, IRQ_MSIX). */
  irqCount(index: number): number {
    // struct vfio_irq_info { u32 argsz, flags, index, count; }
    const b = new IoctlStruct(16, true).u32(8, index);
    b.ioctl(this.fd, VFIO.DEVICE_GET_IRQ_INFO, "VFIO_DEVICE_GET_IRQ_INFO");
    return b.getU32(12);
  }

  /** Route `count` vectors of `index` to new eventfds; returns one IrqSource per vector. */
  enableIrqs(index: number, count: number): EventFdIrq[] {
    const avail = this.irqCount(index);
    if (count < 1 || count > avail) {
      throw new PvdrvError(
        "device",
        `${this.bdf}: asked ${count} vectors of interrupt index ${index}, device has ${avail}`,
      );
    }
    const srcs = Array.from({ length: count }, () => new EventFdIrq());
    const b = irqSet(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index, 0, count, count);
    srcs.forEach((s, i) => b.i32(20 + 4 * i, s.efd.fd));
    const r = b.call(this.fd, VFIO.DEVICE_SET_IRQS);
    if (r < 0) {
      for (const s of srcs) s.close();
      check(`VFIO_DEVICE_SET_IRQS index ${index} x${count}`, r);
    }
    return srcs;
  }

  /** Disable every vector of `index`. */
  disableIrqs(index: number): void {
    irqSet(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, index, 0, 0).call(this.fd, VFIO.DEVICE_SET_IRQS);
  }

  /** Fire vector `vector` of `index` from the kernel side (VFIO's loopback test: DATA_NONE | ACTION_TRIGGER). */
  triggerIrq(index: number, vector: number): void {
    irqSet(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, index, vector, 1)
      .ioctl(this.fd, VFIO.DEVICE_SET_IRQS, `VFIO trigger irq ${index}/${vector}`);
  }

  /** Unmask INTx after handling (VFIO masks a level-triggered line when it fires). */
  unmaskIntx(): void {
    irqSet(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, IRQ_INTX, 0, 1)
      .ioctl(this.fd, VFIO.DEVICE_SET_IRQS, "VFIO unmask INTx");
  }

  /** Close the device fd. */
  close(): void {
    if (this.fd >= 0) native().pvdrv_close(this.fd);
    this.fd = -1;
  }
}

/**
 * DMA memory mapped into a VFIO container's IOMMU space. Regions of 2 MiB and more use huge pages when the
 * system has them (fewer IOTLB entries), and fall back to 4 KiB pages; VFIO pins either.
 */
export class VfioDmaAllocator implements DmaAllocator {
  readonly kind = "vfio";
  readonly #live = new Set<DmaRegion>();
  /** Allocates from `container`'s IOVA space. */
  constructor(readonly container: VfioContainer) {}

  alloc(size: number): DmaRegion {
    let mem;
    if (size >= HUGE_PAGE) {
      try {
        mem = allocHostMemory(size, true);
      } catch {
        mem = undefined;
      }
    }
    mem ??= allocHostMemory(size, false);
    const iova = this.container.reserveIova(mem.size);
    if (iova + mem.size > Number.MAX_SAFE_INTEGER) throw new PvdrvError("device", "IOVA beyond 2^53");
    try {
      this.container.mapDma(mem.ptr, iova, mem.size);
    } catch (e) {
      mem.free();
      throw e;
    }
    const live = this.#live;
    const container = this.container;
    let mapped = true, freed = false;
    const unmap = () => {
      if (!mapped) return;
      mapped = false;
      live.delete(region);
      if (container.fd >= 0) container.unmapDma(iova, mem.size); // a closed container unmapped everything
    };
    const region: DmaRegion = {
      bytes: mem.bytes,
      deviceAddress: iova,
      size: mem.size,
      // The IOMMU mapping goes now; the memory stays for the application until free().
      revoke: unmap,
      free() {
        if (freed) return;
        freed = true;
        try {
          unmap();
        } finally {
          mem.free();
        }
      },
    };
    live.add(region);
    return region;
  }

  /** Number of regions not freed. */
  get live(): number {
    return this.#live.size;
  }

  close(): void {
    for (const r of [...this.#live]) r.free();
  }
}
