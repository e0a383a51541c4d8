/**
 * MMIO regions: the device-register seam. Drivers see only {@link MmioRegion}; a region is backed by a mapped
 * BAR (volatile native accessors), by pread/pwrite of an I/O-port BAR, or by a model in tests.
 * @module
 */
import { check, type Native, native } from "./lib.ts";

/** Bounds-checked register access; 64-bit values are split into u32 halves. */
export interface MmioRegion {
  /** Size of the region in bytes. */
  readonly size: number;
  /** Read an 8-bit register. */
  read8(off: number): number;
  /** Read a 16-bit register. */
  read16(off: number): number;
  /** Read a 32-bit register. */
  read32(off: number): number;
  /** Write an 8-bit register. */
  write8(off: number, v: number): void;
  /** Write a 16-bit register. */
  write16(off: number, v: number): void;
  /** Write a 32-bit register. */
  write32(off: number, v: number): void;
  /** Release the mapping (idempotent). */
  close(): void;
}

/** Error for an access outside a region. */
export class RegionBoundsError extends RangeError {
  /** Creates the error for an access of `width` bytes at `off` in a region of `size` bytes. */
  constructor(name: string, off: number, width: number, size: number) {
    super(
      `${name}: ${width}-byte access at offset 0x${off.toString(16)} is outside the region (size 0x${
        size.toString(16)
      })`,
    );
    this.name = "RegionBoundsError";
  }
}

abstract class CheckedRegion implements MmioRegion {
  constructor(readonly name: string, readonly size: number) {}
  protected check(off: number, width: number): void {
    // Integer, aligned and inside: one comparison chain, no allocation.
    if (!(off >= 0 && off + width <= this.size && off % width === 0)) {
      throw new RegionBoundsError(this.name, off, width, this.size);
    }
  }
  abstract read8(off: number): number;
  abstract read16(off: number): number;
  abstract read32(off: number): number;
  abstract write8(off: number, v: number): void;
  abstract write16(off: number, v: number): void;
  abstract write32(off: number, v: number): void;
  abstract close(): void;
}

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
    if (!this.#ptr) throw new Error(`${this.name}: region is closed`);
    return this.#ptr;
  }
  read8(off: number): number {
    this.check(off, 1);
    return this.#n.pvdrv_read8(this.#p(), off);
  }
  read16(off: number): number {
    this.check(off, 2);
    return this.#n.pvdrv_read16(this.#p(), off);
  }
  read32(off: number): number {
    this.check(off, 4);
    return this.#n.pvdrv_read32(this.#p(), off);
  }
  write8(off: number, v: number): void {
    this.check(off, 1);
    this.#n.pvdrv_write8(this.#p(), off, v);
  }
  write16(off: number, v: number): void {
    this.check(off, 2);
    this.#n.pvdrv_write16(this.#p(), off, v);
  }
  write32(off: number, v: number): void {
    this.check(off, 4);
    this.#n.pvdrv_write32(this.#p(), off, v);
  }
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
  read8(off: number): number {
    return this.#read(off, 1);
  }
  read16(off: number): number {
    return this.#read(off, 2);
  }
  read32(off: number): number {
    return this.#read(off, 4);
  }
  write8(off: number, v: number): void {
    this.#write(off, 1, v);
  }
  write16(off: number, v: number): void {
    this.#write(off, 2, v);
  }
  write32(off: number, v: number): void {
    this.#write(off, 4, v);
  }
  close(): void {
    if (this.#fd < 0) return;
    if (this.#ownsFd) this.#n.pvdrv_close(this.#fd);
    this.#fd = -1;
  }
}

/** Register hooks of a device model behind a {@link ModelRegion}. */
export interface RegisterModel {
  /** Value of a register read (return undefined to read the backing bytes). */
  read?(off: number, width: number): number | undefined;
  /** Called after the bytes of a register write are stored. */
  write?(off: number, width: number, value: number): void;
}

/** An in-process region: little-endian bytes plus optional model hooks (tests, device models). */
export class ModelRegion extends CheckedRegion {
  /** The backing bytes. */
  readonly view: DataView;
  /** Hooks run on access. */
  model: RegisterModel;
  /** Creates a region of `size` zeroed bytes. */
  constructor(name: string, size: number, model: RegisterModel = {}) {
    super(name, size);
    this.view = new DataView(new ArrayBuffer(size));
    this.model = model;
  }
  #r(off: number, width: number): number {
    this.check(off, width);
    const v = this.model.read?.(off, width);
    if (v !== undefined) return v;
    return width === 1
      ? this.view.getUint8(off)
      : width === 2
      ? this.view.getUint16(off, true)
      : this.view.getUint32(off, true);
  }
  #w(off: number, width: number, v: number): void {
    this.check(off, width);
    if (width === 1) this.view.setUint8(off, v);
    else if (width === 2) this.view.setUint16(off, v, true);
    else this.view.setUint32(off, v, true);
    this.model.write?.(off, width, v);
  }
  read8(off: number): number {
    return this.#r(off, 1);
  }
  read16(off: number): number {
    return this.#r(off, 2);
  }
  read32(off: number): number {
    return this.#r(off, 4);
  }
  write8(off: number, v: number): void {
    this.#w(off, 1, v);
  }
  write16(off: number, v: number): void {
    this.#w(off, 2, v);
  }
  write32(off: number, v: number): void {
    this.#w(off, 4, v);
  }
  close(): void {}
}

/** A window of another region: offsets are relative to `base` (a virtio capability inside a BAR). */
export class SubRegion implements MmioRegion {
  /** Wraps `size` bytes of `parent` starting at `base`. */
  constructor(
    readonly parent: MmioRegion,
    readonly base: number,
    readonly size: number,
    readonly name = "subregion",
  ) {
    if (
      !(Number.isSafeInteger(base) && Number.isSafeInteger(size) && base >= 0 && size >= 0 &&
        base + size <= parent.size)
    ) {
      throw new RangeError(
        `${name}: window 0x${base.toString(16)}+0x${size.toString(16)} exceeds its region (0x${
          parent.size.toString(16)
        })`,
      );
    }
  }
  #c(off: number, width: number): number {
    if (!(off >= 0 && off + width <= this.size)) {
      throw new RegionBoundsError(this.name, off, width, this.size);
    }
    return this.base + off;
  }
  read8(off: number): number {
    return this.parent.read8(this.#c(off, 1));
  }
  read16(off: number): number {
    return this.parent.read16(this.#c(off, 2));
  }
  read32(off: number): number {
    return this.parent.read32(this.#c(off, 4));
  }
  write8(off: number, v: number): void {
    this.parent.write8(this.#c(off, 1), v);
  }
  write16(off: number, v: number): void {
    this.parent.write16(this.#c(off, 2), v);
  }
  write32(off: number, v: number): void {
    this.parent.write32(this.#c(off, 4), v);
  }
  close(): void {}
}

/** Write a 64-bit value as two 32-bit halves, low first (virtio 1.2 §4.1.3.1). */
export function write64Split(r: MmioRegion, off: number, value: number): void {
  r.write32(off, value >>> 0);
  r.write32(off + 4, Math.floor(value / 0x1_0000_0000));
}
