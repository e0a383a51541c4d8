/**
 * Linux register regions behind the `MmioRegion` seam (hal/mmio.ts): a mapped BAR (the shim's volatile accessors) and an
 * I/O-port BAR or config space through pread/pwrite of a file descriptor.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { check, type Native, native } from "./lib.ts";
import { CheckedRegion } from "../hal/mmio.ts";

/** A memory-mapped region accessed with the shim's volatile loads and stores. */
export class MappedRegion extends CheckedRegion {
  readonly #n: Native;
  #ptr: Deno.PointerObject | null;
  readonly #onClose?: () => void;

  /** Wraps `size` bytes at `ptr`; `onClose` releases the mapping. */
  constructor(name: string, ptr: Deno.PointerObject, size: number, onClose?: () => void) {
    super(name, size);
    this.#n = native();
    this.#ptr = ptr;
    this.#onClose = onClose;
  }
  #p(): Deno.PointerObject {
    if (!this.#ptr) throw new PvdrvError("device", `${this.name}: region is closed`);
    return this.#ptr;
  }
  /** Read an 8-bit register. */
  read8(off: number): number {
    this.check(off, 1);
    return this.#n.pvdrv_read8(this.#p(), off);
  }
  /** Read a 16-bit register. */
  read16(off: number): number {
    this.check(off, 2);
    return this.#n.pvdrv_read16(this.#p(), off);
  }
  /** Read a 32-bit register. */
  read32(off: number): number {
    this.check(off, 4);
    return this.#n.pvdrv_read32(this.#p(), off);
  }
  /** Write an 8-bit register. */
  write8(off: number, v: number): void {
    this.check(off, 1);
    this.#n.pvdrv_write8(this.#p(), off, v);
  }
  /** Write a 16-bit register. */
  write16(off: number, v: number): void {
    this.check(off, 2);
    this.#n.pvdrv_write16(this.#p(), off, v);
  }
  /** Write a 32-bit register. */
  write32(off: number, v: number): void {
    this.check(off, 4);
    this.#n.pvdrv_write32(this.#p(), off, v);
  }
  /** Release the region (idempotent). */
  close(): void {
    if (!this.#ptr) return;
    this.#ptr = null;
    this.#onClose?.();
  }
}

/**
 * A region reached through pread/pwrite of a file descriptor: an I/O-port BAR through its sysfs `resourceN`
 * file (UIO) or through a VFIO region (the fd offset is `baseHi << 32`).
 */
export class PioRegion extends CheckedRegion {
  readonly #n: Native;
  #fd: number;
  readonly #baseHi: number;
  readonly #ownsFd: boolean;

  /** Wraps `size` bytes of `fd` starting at file offset `baseHi * 2^32`. */
  constructor(name: string, fd: number, baseHi: number, size: number, ownsFd: boolean) {
    super(name, size);
    this.#n = native();
    this.#fd = fd;
    this.#baseHi = baseHi;
    this.#ownsFd = ownsFd;
  }
  #read(off: number, width: number): number {
    this.check(off, width);
    const v = this.#n.pvdrv_pio_read(this.#fd, width, this.#baseHi, off);
    const st = this.#n.pvdrv_pio_last_status();
    if (st < 0) check(`${this.name}: read at 0x${off.toString(16)}`, st);
    return v;
  }
  #write(off: number, width: number, v: number): void {
    this.check(off, width);
    check(
      `${this.name}: write at 0x${off.toString(16)}`,
      this.#n.pvdrv_pio_write(this.#fd, width, this.#baseHi, off, v),
    );
  }
  /** Read an 8-bit register. */
  read8(off: number): number {
    return this.#read(off, 1);
  }
  /** Read a 16-bit register. */
  read16(off: number): number {
    return this.#read(off, 2);
  }
  /** Read a 32-bit register. */
  read32(off: number): number {
    return this.#read(off, 4);
  }
  /** Write an 8-bit register. */
  write8(off: number, v: number): void {
    this.#write(off, 1, v);
  }
  /** Write a 16-bit register. */
  write16(off: number, v: number): void {
    this.#write(off, 2, v);
  }
  /** Write a 32-bit register. */
  write32(off: number, v: number): void {
    this.#write(off, 4, v);
  }
  /** Release the region (idempotent). */
  close(): void {
    if (this.#fd < 0) return;
    if (this.#ownsFd) this.#n.pvdrv_close(this.#fd);
    this.#fd = -1;
  }
}
