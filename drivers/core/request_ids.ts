/**
 * Request ids: a driver picks an id per request and the device echoes it when it completes, in any order (Xen
 * netif.h TX ids and blkif.h request ids; a disk's in-flight slots). The id comes back from the other side, so it
 * is checked before it indexes anything: out of range or not in flight is the device's error, never a stale
 * lookup.
 * @module
 */

/** A fixed set of ids 0..size-1, each free or in flight with a value (what the request carried). */
export class RequestIds {
  readonly #free: Uint16Array;
  #nfree = 0;
  /** id → its value while in flight, -1 while free. */
  readonly #value: Int32Array;

  /** `size` ids (at most 65536: ids are 16-bit on every Xen ring and virtqueue). */
  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1 || size > 0x10000) throw new RangeError(`bad id count ${size}`);
    this.#free = new Uint16Array(size);
    this.#value = new Int32Array(size);
    this.reset();
  }

  /** Ids free now. */
  get available(): number {
    return this.#nfree;
  }

  /** Take a free id for a request carrying `value` (≥ 0); -1 when none is free. */
  take(value: number): number {
    if (this.#nfree === 0) return -1;
    const id = this.#free[--this.#nfree];
    this.#value[id] = value;
    return id;
  }

  /** The backend answered `id`: its value, freeing the id; -1 when `id` is out of range or not in flight. */
  complete(id: number): number {
    if (!(id >= 0 && id < this.size)) return -1;
    const v = this.#value[id];
    if (v < 0) return -1;
    this.#value[id] = -1;
    this.#free[this.#nfree++] = id;
    return v;
  }

  /** The value of `id` while it is in flight, else -1 (diagnostics, teardown). */
  valueOf(id: number): number {
    return id >= 0 && id < this.size ? this.#value[id] : -1;
  }

  /** Every id free again (a new connection's ring). */
  reset(): void {
    for (let k = 0; k < this.size; k++) this.#free[k] = this.size - 1 - k;
    this.#nfree = this.size;
    this.#value.fill(-1);
  }
}
