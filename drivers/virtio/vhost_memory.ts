/**
 * A vhost-user front end's guest memory as the backend maps it (vhost-user.rst, SET_MEM_TABLE): up to 8 regions,
 * each a shared descriptor mapped once, found by guest physical address (descriptor addresses) or by the front
 * end's own virtual address (SET_VRING_ADDR's ring addresses). Every range is checked to lie wholly inside one
 * region before a view is made: a guest or front end naming memory outside what it shared gets an error, never a
 * read of this process's memory.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { FdOps, SharedMapping } from "../../hal/fds.ts";
import type { GuestMemory } from "./device_queue.ts";
import type { MemRegion } from "./vhost_user_wire.ts";
import { copyBytes } from "../core/copy.ts";

/** One mapped region. */
interface Mapped {
  guest: number;
  user: number;
  size: number;
  map: SharedMapping;
  /** u32 view of the mapping (word copies). */
  u32: Uint32Array;
}

const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** The mapped memory table; {@link VhostMemory.release} unmaps it (views kept past that read zeros). */
export class VhostMemory {
  readonly #regions: Mapped[] = [];
  #hit: Mapped | null = null;
  /** Guest memory by guest physical address, for {@link DeviceQueue} and the data path. */
  readonly guest: GuestMemory = (addr, len) => this.#find(addr, len, false);

  /**
   * Map `regions` with their descriptors `fds` (still the caller's to close). A region past 2^53, or one the
   * descriptor's file does not hold, is refused and whatever was mapped already is released.
   */
  constructor(regions: readonly MemRegion[], fds: readonly number[], ops: FdOps) {
    try {
      for (const [i, r] of regions.entries()) {
        if (r.guestAddr + r.size > SAFE || r.userAddr + r.size > SAFE || r.mmapOffset + r.size > SAFE) {
          throw new PvdrvError("vhost-user", `vhost-user: memory region ${i} lies past 2^53`);
        }
        const size = Number(r.size), map = ops.map(fds[i], size, Number(r.mmapOffset)), b = map.bytes;
        const u32 = new Uint32Array(b.buffer, b.byteOffset, b.byteLength >> 2); // mappings are page-aligned
        this.#regions.push({ guest: Number(r.guestAddr), user: Number(r.userAddr), size, map, u32 });
      }
    } catch (e) {
      this.release();
      throw e;
    }
  }

  /** The regions mapped. */
  get regions(): number {
    return this.#regions.length;
  }

  /** `len` bytes at the front end's virtual address `addr` (a ring's address); throws unless wholly inside. */
  user(addr: number, len: number): Uint8Array {
    return this.#find(addr, len, true);
  }

  /**
   * Copy `len` guest bytes at guest address `addr` into `dst` from `at` (throws unless wholly inside one region).
   * `dst32`, a u32 view of `dst`'s memory from its first byte, lets the copy go by words (drivers/core/copy.ts).
   */
  copyOut(addr: number, len: number, dst: Uint8Array, at: number, dst32: Uint32Array | null = null): void {
    const r = this.#guestRegion(addr, len);
    copyBytes(r.map.bytes, r.u32, addr - r.guest, dst, dst32, at, len);
  }

  /**
   * Copy `len` bytes of `src` from `from` to guest address `addr` (throws unless wholly inside one region); `src32`
   * as `dst32` of {@link VhostMemory.copyOut}.
   */
  copyIn(addr: number, src: Uint8Array, from: number, len: number, src32: Uint32Array | null = null): void {
    const r = this.#guestRegion(addr, len);
    copyBytes(src, src32, from, r.map.bytes, r.u32, addr - r.guest, len);
  }

  #find(addr: number, len: number, user: boolean): Uint8Array {
    const r = this.#region(addr, len, user), o = addr - (user ? r.user : r.guest);
    return r.map.bytes.subarray(o, o + len);
  }

  /** The region holding guest range `addr`..+`len`: the last one found, checked first (frames come in runs). */
  #guestRegion(addr: number, len: number): Mapped {
    const r = this.#hit;
    if (r !== null && addr >= r.guest && addr - r.guest + len <= r.size && len >= 0) return r;
    return this.#hit = this.#region(addr, len, false);
  }

  #region(addr: number, len: number, user: boolean): Mapped {
    const rs = this.#regions;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i], start = user ? r.user : r.guest;
      if (addr >= start && addr - start + len <= r.size && len >= 0) return r;
    }
    throw new PvdrvError(
      "vhost-user",
      `vhost-user: ${len} bytes at ${user ? "front-end address" : "guest address"} 0x${
        addr.toString(16)
      } are outside the shared memory`,
    );
  }

  /** Unmap every region (idempotent). */
  release(): void {
    this.#hit = null;
    for (const r of this.#regions.splice(0)) r.map.unmap();
  }
}
