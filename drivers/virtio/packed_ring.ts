/**
 * The packed virtqueue's layout (virtio 1.2 §2.8), written once for both sides: the driver's queue
 * (packed_queue.ts) and the device's (packed_device_queue.ts, used by pvdrv's device models). One ring of
 * descriptors carries both directions: the driver makes a descriptor available by setting its AVAIL flag to its
 * wrap counter and USED to the inverse; the device marks it used by setting both to its own wrap counter. Two
 * 4-byte event-suppression areas follow (§2.8.10). Every field is little-endian.
 *
 * Positions are kept as one number per cursor, `lin` in 0 .. 2·size-1: the slot is `lin % size` and the wrap
 * counter is 1 on even laps (`lin < size`) and 0 on odd ones (both sides start at slot 0 with wrap counter 1).
 * @module
 */

/** Bytes of one descriptor: addr u64, len u32, id u16, flags u16 (§2.8.13). */
export const PACKED_DESC_SIZE = 16;
/** Offset of `addr`, `len`, `id` and `flags` in a descriptor. */
export const PDESC = { ADDR: 0, LEN: 8, ID: 12, FLAGS: 14 } as const;
/** Descriptor flags (§2.8.1, §2.8.6): NEXT, WRITE and INDIRECT as in split rings; AVAIL and USED. */
export const PDESC_F = { NEXT: 1, WRITE: 2, INDIRECT: 4, AVAIL: 1 << 7, USED: 1 << 15 } as const;
/** Offsets in an event-suppression area (§2.8.10): off_wrap u16 (slot | wrap << 15), flags u16. */
export const EVENT = { OFF_WRAP: 0, FLAGS: 2 } as const;
/** Event-suppression flags: always, never, or when the cursor passes off_wrap (needs EVENT_IDX). */
export const EVENT_FLAGS = { ENABLE: 0, DISABLE: 1, DESC: 2 } as const;

/** Bytes of the ring and where the driver and device areas sit in it (each 4-byte aligned, §2.8.10.1). */
export function packedQueueBytes(size: number): { driverOff: number; deviceOff: number; total: number } {
  const driverOff = PACKED_DESC_SIZE * size;
  return { driverOff, deviceOff: driverOff + 4, total: Math.ceil((driverOff + 8) / 4096) * 4096 };
}

/** The wrap counter (1 or 0) of cursor `lin` on a ring of `size`. */
export function wrapOf(lin: number, size: number): number {
  return lin < size ? 1 : 0;
}

/** `lin` moved on by `n` (at most 2·size) positions. */
export function advance(lin: number, n: number, size: number): number {
  const next = lin + n;
  return next >= 2 * size ? next - 2 * size : next;
}

/** The flags that make a descriptor available at cursor `lin` (§2.8.1): AVAIL = wrap counter, USED = its inverse. */
export function availFlags(lin: number, size: number): number {
  return lin < size ? PDESC_F.AVAIL : PDESC_F.USED;
}

/** The flags that mark a descriptor used at cursor `lin` (§2.8.1): AVAIL = USED = wrap counter. */
export function usedFlags(lin: number, size: number): number {
  return lin < size ? PDESC_F.AVAIL | PDESC_F.USED : 0;
}

/** Whether `flags` say the descriptor at cursor `lin` is available to the device. */
export function isAvail(flags: number, lin: number, size: number): boolean {
  return (flags & (PDESC_F.AVAIL | PDESC_F.USED)) === availFlags(lin, size);
}

/** Whether `flags` say the descriptor at cursor `lin` has been used by the device. */
export function isUsed(flags: number, lin: number, size: number): boolean {
  return (flags & (PDESC_F.AVAIL | PDESC_F.USED)) === usedFlags(lin, size);
}

/** A cursor as an event area's off_wrap (slot | wrap counter << 15). */
export function offWrapOf(lin: number, size: number): number {
  return lin < size ? lin | 0x8000 : lin - size;
}

/**
 * Whether moving a cursor from `oldLin` to `newLin` (fewer than `size` apart) passes the other side's event point
 * `offWrap` (§2.8.10: the packed form of vring_need_event). A wrap bit from the other lap puts the point one ring
 * away, in the same 2·size space as the cursors.
 */
export function passesEvent(offWrap: number, newLin: number, oldLin: number, size: number): boolean {
  const slot = offWrap & 0x7fff, span = 2 * size;
  if (slot >= size) return true; // not a slot of this ring: signal rather than risk a stall
  const ev = offWrap & 0x8000 ? slot : slot + size;
  return (newLin - ev - 1 + 2 * span) % span < (newLin - oldLin + span) % span;
}
