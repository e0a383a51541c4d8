/**
 * The DMA seam: a {@link DmaRegion} is a zeroed, page-aligned buffer with its CPU view and the address the device
 * must use (an IOVA behind VFIO, a physical address with UIO, a fake address in a model). Drivers never learn
 * which. (Xen memory is not DMA memory: the backend reaches granted pages by reference, see hal/xen.ts.)
 *
 * Device addresses are JS numbers: every allocator keeps them below 2^53 so they are exact, and drivers split
 * them into u32 halves for descriptors without BigInt on the hot path.
 * @module
 */
import { PvdrvError } from "./errors.ts";

/** A buffer the device can read and write. */
export interface DmaRegion {
  /** CPU view of the whole region (created once). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Address of byte 0 as the device sees it. */
  readonly deviceAddress: number;
  /** Size in bytes. */
  readonly size: number;
  /** Return the memory (unmaps it from the device first). Idempotent. */
  free(): void;
  /**
   * End the device's access now but keep the CPU view valid until {@link free} (buffers an application still
   * holds after its NIC closed). The allocator's `close()` leaves a revoked region to its holder.
   */
  revoke?(): void;
}

/** Hands out {@link DmaRegion}s. */
export interface DmaAllocator {
  /** What backs this allocator: "vfio", "physical" or "model". */
  readonly kind: string;
  /** The largest region {@link alloc} gives (physically contiguous memory: one huge page); absent: no limit. */
  readonly maxRegion?: number;
  /** A zeroed region of at least `size` bytes, page aligned. */
  alloc(size: number): DmaRegion;
  /** Free every region still allocated. */
  close(): void;
}

/** 4 KiB. */
export const PAGE = 4096;
/** 2 MiB, an x86 huge page. */
export const HUGE_PAGE = 2 * 1024 * 1024;

/** Round `n` up to a multiple of `to` (a power of two). */
export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/**
 * The in-process model of DMA: ArrayBuffers at fake device addresses. A device model resolves addresses with
 * {@link ModelDmaAllocator.resolve}, which refuses anything outside an allocated region (like an IOMMU fault).
 */
export class ModelDmaAllocator implements DmaAllocator {
  readonly kind = "model";
  /** With `shared`, regions live in SharedArrayBuffers, so a Worker can play a device racing the driver. */
  constructor(readonly shared = false) {}
  readonly #regions: { addr: number; bytes: Uint8Array<ArrayBuffer>; live: boolean; kept: boolean }[] = [];
  #next = 0x1_0000_0000; // above 4 GiB, so the high halves of descriptor addresses are exercised

  alloc(size: number): DmaRegion {
    const len = roundUp(Math.max(size, 1), PAGE);
    const bytes = this.shared
      ? new Uint8Array(new SharedArrayBuffer(len)) as unknown as Uint8Array<ArrayBuffer>
      : new Uint8Array(len);
    const r = { addr: this.#next, bytes, live: true, kept: false };
    this.#next += len + PAGE; // a guard page between regions
    this.#regions.push(r);
    return {
      bytes,
      deviceAddress: r.addr,
      size: len,
      revoke() {
        if (r.live) r.kept = true;
        r.live = false;
      },
      free() {
        r.live = false;
        r.kept = false;
      },
    };
  }

  /** The bytes at device address `addr`..`addr+len`, which must lie inside one live region. */
  resolve(addr: number, len: number): Uint8Array<ArrayBuffer> {
    for (const r of this.#regions) {
      if (r.live && addr >= r.addr && addr + len <= r.addr + r.bytes.length) {
        const off = addr - r.addr;
        return r.bytes.subarray(off, off + len);
      }
    }
    throw new PvdrvError("dma", `DMA fault: device address 0x${addr.toString(16)} (+${len}) is not mapped`);
  }

  /** Number of regions not freed (the device can reach them). */
  get live(): number {
    return this.#regions.filter((r) => r.live).length;
  }

  /** Revoked regions whose memory is still kept for the application (not yet freed). */
  get kept(): number {
    return this.#regions.filter((r) => r.kept).length;
  }

  close(): void {
    for (const r of this.#regions) r.live = false;
  }
}
