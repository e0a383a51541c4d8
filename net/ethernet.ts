/**
 * Ethernet II framing (IEEE 802.3 with an EtherType). MAC addresses are handled as 48-bit numbers (exact in a JS
 * number), so the receive path compares and stores them without allocating.
 * @module
 */

/** Ethernet header length: destination, source, EtherType. */
export const ETH_HLEN = 14;
/** EtherType of IPv4. */
export const ETHERTYPE_IPV4 = 0x0800;
/** EtherType of ARP. */
export const ETHERTYPE_ARP = 0x0806;
/** The broadcast MAC as a number. */
export const BROADCAST_MAC = 0xffffffffffff;

const TWO32 = 0x100000000;

/** The MAC at `d[off .. off+6)` as a number. */
export function readMac(d: Uint8Array, off: number): number {
  return ((d[off] << 8) | d[off + 1]) * TWO32 +
    (((d[off + 2] << 24) | (d[off + 3] << 16) | (d[off + 4] << 8) | d[off + 5]) >>> 0);
}

/** Write MAC number `m` at `d[off .. off+6)`. */
export function writeMac(d: Uint8Array, off: number, m: number): void {
  const hi = Math.floor(m / TWO32), lo = m >>> 0;
  d[off] = hi >>> 8;
  d[off + 1] = hi;
  d[off + 2] = lo >>> 24;
  d[off + 3] = lo >>> 16;
  d[off + 4] = lo >>> 8;
  d[off + 5] = lo;
}

/** A MAC given as 6 bytes, as a number. */
export function macNumber(mac: Uint8Array): number {
  return readMac(mac, 0);
}

/** "aa:bb:cc:dd:ee:ff" for a MAC number. */
export function macText(m: number): string {
  return m.toString(16).padStart(12, "0").replace(/(..)(?!$)/g, "$1:");
}

/** Whether a MAC number is a group (multicast or broadcast) address: the I/G bit of the first byte. */
export function isGroupMac(m: number): boolean {
  return (Math.floor(m / 0x10000000000) & 1) === 1;
}

/** Write an Ethernet header at the start of `d`. */
export function writeEthernet(d: Uint8Array, dst: number, src: number, type: number): void {
  writeMac(d, 0, dst);
  writeMac(d, 6, src);
  d[12] = type >>> 8;
  d[13] = type;
}
