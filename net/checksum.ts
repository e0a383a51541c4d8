/**
 * The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of 16-bit big-endian words.
 * Sums are kept unfolded in a JS number (exact up to 2^53, far beyond any frame) and folded once at the end.
 * @module
 */

/** Add the 16-bit big-endian words of `d[off .. off+len)` to `acc` (an odd last byte is padded with zero). */
export function sum16(d: Uint8Array, off: number, len: number, acc = 0): number {
  const end = off + (len & ~1);
  for (let i = off; i < end; i += 2) acc += (d[i] << 8) | d[i + 1];
  if (len & 1) acc += d[end] << 8;
  return acc;
}

/** Fold a sum to 16 bits with end-around carry. */
export function fold(acc: number): number {
  while (acc > 0xffff) acc = (acc % 0x10000) + Math.floor(acc / 0x10000);
  return acc;
}

/** The checksum field value for a sum: its folded ones' complement. */
export function finish(acc: number): number {
  return ~fold(acc) & 0xffff;
}

/**
 * Complete a checksum as a device does for a partial one (virtio 1.2 §5.1.6.2): sum `d[start..end)`, whose field
 * at `at` holds the seed (the pseudo-header sum), and store the result there big-endian. UDP sends a computed zero
 * as all ones (RFC 768).
 */
export function completeAt(d: Uint8Array, start: number, end: number, at: number, udp: boolean): void {
  const c = finish(sum16(d, start, end - start));
  const v = c === 0 && udp ? 0xffff : c;
  d[at] = v >>> 8;
  d[at + 1] = v;
}

/** The sum of the IPv4 pseudo header (RFC 768, RFC 793): addresses, protocol and the L4 length. */
export function pseudoSum(src: number, dst: number, proto: number, len: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
}
