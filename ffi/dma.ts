/**
 * Host memory for DMA on Linux: locked (optionally huge) pages from the shim, their physical addresses through
 * /proc/self/pagemap, and the physically addressed allocator UIO needs. VFIO's IOMMU-mapped allocator is in
 * ffi/vfio.ts; both implement the `DmaAllocator` seam (hal/dma.ts).
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { check64, native } from "./lib.ts";
import { type DmaAllocator, type DmaRegion, HUGE_PAGE, PAGE, roundUp } from "../hal/dma.ts";

/** Host memory from the shim: locked, zeroed; 2 MiB pages when `huge`. */
export interface HostMemory {
  /** Pointer to byte 0. */
  readonly ptr: Deno.PointerObject;
  /** The CPU view. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Size in bytes. */
  readonly size: number;
  /** Unmap. */
  free(): void;
}

/** Allocate locked anonymous memory (`MAP_HUGETLB` when `huge`). */
export function allocHostMemory(size: number, huge: boolean): HostMemory {
  const n = native();
  const len = roundUp(size, huge ? HUGE_PAGE : PAGE);
  const addr = check64(
    huge
      ? `allocating ${len} bytes of huge pages (is vm.nr_hugepages set? see README)`
      : `allocating ${len} bytes of locked memory`,
    n.pvdrv_dma_alloc(BigInt(len), huge ? 1 : 0),
  );
  const ptr = n.pvdrv_ptr(addr)!;
  const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, len));
  let freed = false;
  return {
    ptr,
    bytes,
    size: len,
    free() {
      if (freed) return;
      freed = true;
      n.pvdrv_munmap(ptr, BigInt(len));
    },
  };
}

/** Physical address of a pointer through /proc/self/pagemap (root only). */
export function virtToPhys(ptr: Deno.PointerObject): number {
  const r = native().pvdrv_virt_to_phys(ptr);
  if (r === -1n || r === -13n) {
    throw new PvdrvError(
      "dma",
      "virtual-to-physical translation needs root (CAP_SYS_ADMIN) to read /proc/self/pagemap",
    );
  }
  return Number(check64("reading /proc/self/pagemap", r));
}

/**
 * Physically addressed DMA memory for UIO (no IOMMU): each region is carved from 2 MiB huge pages, which are
 * physically contiguous, so a region never crosses a huge-page boundary. Needs root and `vm.nr_hugepages`.
 */
export class PhysicalDmaAllocator implements DmaAllocator {
  readonly kind = "physical";
  /** Regions are physically contiguous: one huge page at most. */
  readonly maxRegion: number = HUGE_PAGE;
  readonly #pages: { mem: HostMemory; phys: number; used: number; kept: number }[] = [];
  #closed = false;

  alloc(size: number): DmaRegion {
    if (this.#closed) throw new PvdrvError("dma", "DMA allocator is closed");
    if (!(size > 0 && size <= HUGE_PAGE)) {
      throw new RangeError(`physical DMA regions are 1..${HUGE_PAGE} bytes (one huge page), asked ${size}`);
    }
    const len = roundUp(size, PAGE);
    let page = this.#pages.find((p) => p.used + len <= HUGE_PAGE);
    if (!page) {
      const mem = allocHostMemory(HUGE_PAGE, true);
      page = { mem, phys: virtToPhys(mem.ptr), used: 0, kept: 0 };
      if (page.phys % HUGE_PAGE !== 0) {
        throw new PvdrvError("dma", "huge page is not 2 MiB aligned physically");
      }
      this.#pages.push(page);
    }
    const off = page.used;
    page.used += len;
    const bytes = page.mem.bytes.subarray(off, off + len);
    bytes.fill(0);
    // Regions are carved, not returned individually: the pages go back on close(), except a page under a revoked
    // region, which goes back when that region is freed.
    const pg = page, pages = this.#pages, closed = () => this.#closed;
    let kept = false;
    return {
      bytes,
      deviceAddress: page.phys + off,
      size: len,
      revoke() {
        if (kept) return;
        kept = true;
        pg.kept++;
      },
      free() {
        if (!kept) return;
        kept = false;
        if (--pg.kept === 0 && closed() && !pages.includes(pg)) pg.mem.free();
      },
    };
  }

  close(): void {
    this.#closed = true;
    for (const p of this.#pages.splice(0)) if (p.kept === 0) p.mem.free();
  }
}
