/**
 * The register seam: {@link MmioRegion} is all a driver sees of device registers, whether they are a mapped BAR
 * (ffi/mmio.ts), an I/O-port BAR reached through pread/pwrite, a window of either ({@link SubRegion}), or a
 * device model's bytes ({@link ModelRegion}).
 * @module
 */
import { PvdrvError } from "./errors.ts";

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
export class RegionBoundsError extends PvdrvError {
  /** Creates the error for an access of `width` bytes at `off` in a region of `size` bytes. */
  constructor(name: string, off: number, width: number, size: number) {
    super(
      "bounds",
      `${name}: ${width}-byte access at offset 0x${off.toString(16)} is outside the region (size 0x${
        size.toString(16)
      })`,
    );
  }
}

/** Base of register regions: the bounds and alignment check every access makes. */
export abstract class CheckedRegion implements MmioRegion {
  /** A region called `name` of `size` bytes. */
  constructor(readonly name: string, readonly size: number) {}
  /** Throw {@link RegionBoundsError} unless `off` is aligned to `width` and inside the region. */
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
  /** Read an 8-bit register. */
  read8(off: number): number {
    return this.#r(off, 1);
  }
  /** Read a 16-bit register. */
  read16(off: number): number {
    return this.#r(off, 2);
  }
  /** Read a 32-bit register. */
  read32(off: number): number {
    return this.#r(off, 4);
  }
  /** Write an 8-bit register. */
  write8(off: number, v: number): void {
    this.#w(off, 1, v);
  }
  /** Write a 16-bit register. */
  write16(off: number, v: number): void {
    this.#w(off, 2, v);
  }
  /** Write a 32-bit register. */
  write32(off: number, v: number): void {
    this.#w(off, 4, v);
  }
  /** Release the region (idempotent). */
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
