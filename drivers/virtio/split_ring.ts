/**
 * The split virtqueue's layout (virtio 1.2 §2.7), written once for both sides: the driver's queue
 * (virtqueue.ts) and the device's (device_queue.ts, used by pvdrv's device models and backends). Offsets are in
 * bytes from the start of each area; every field is little-endian.
 * @module
 */

/** Descriptor flag: the buffer continues in `next` (§2.7.5). */
export const DESC_F_NEXT = 1;
/** Descriptor flag: the device writes this buffer (otherwise it reads it). */
export const DESC_F_WRITE = 2;
/** Descriptor flag: the buffer holds a table of descriptors (VIRTIO_F_INDIRECT_DESC, §2.7.5.3). */
export const DESC_F_INDIRECT = 4;
/** Bytes of one descriptor: addr u64, len u32, flags u16, next u16. */
export const DESC_SIZE = 16;
/** Offset of `addr`, `len`, `flags` and `next` in a descriptor. */
export const DESC = { ADDR: 0, LEN: 8, FLAGS: 12, NEXT: 14 } as const;

/** avail.flags: the driver asks for no interrupts (without EVENT_IDX, §2.7.7). */
export const AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device asks for no notifications (without EVENT_IDX, §2.7.10). */
export const USED_F_NO_NOTIFY = 1;
/** Offset of `flags` and `idx` in both rings. */
export const RING = { FLAGS: 0, IDX: 2, ENTRIES: 4 } as const;
/** Bytes of one used element: id u32, len u32. */
export const USED_ELEM_SIZE = 8;

/** Offset of the avail ring's entry for `slot` (0 .. size-1). */
export function availEntry(slot: number): number {
  return RING.ENTRIES + 2 * slot;
}

/** Offset of `used_event` (after the avail ring's entries; with VIRTIO_F_EVENT_IDX). */
export function usedEventOffset(size: number): number {
  return RING.ENTRIES + 2 * size;
}

/** Offset of the used ring's element for `slot` (0 .. size-1). */
export function usedElem(slot: number): number {
  return RING.ENTRIES + USED_ELEM_SIZE * slot;
}

/** Offset of `avail_event` (after the used ring's elements; with VIRTIO_F_EVENT_IDX). */
export function availEventOffset(size: number): number {
  return RING.ENTRIES + USED_ELEM_SIZE * size;
}

/**
 * vring_need_event (§2.7.10): moving an index from `oldIdx` to `newIdx` crosses the other side's `eventIdx`, so it
 * wants an interrupt (device side) or a notification (driver side). All three are 16-bit ring indices.
 */
export function needsEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** Bytes of the legacy contiguous layout for `size` entries (§2.7.2): the used ring on the next 4 KiB boundary. */
export function splitQueueBytes(size: number): { availOff: number; usedOff: number; total: number } {
  const availOff = DESC_SIZE * size;
  const usedOff = Math.ceil((availOff + usedEventOffset(size) + 2) / 4096) * 4096;
  return { availOff, usedOff, total: Math.ceil((usedOff + availEventOffset(size) + 2) / 4096) * 4096 };
}
