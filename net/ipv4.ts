/**
 * IPv4 (RFC 791): addresses as unsigned 32-bit numbers, CIDR parsing, and the header's validation and writing.
 * Options are accepted on receive (skipped by IHL) and never sent.
 * @module
 */
import { finish, sum16 } from "./checksum.ts";

/** Header length without options. */
export const IPV4_HLEN = 20;
/** Protocol number of ICMP. */
export const PROTO_ICMP = 1;
/** Protocol number of UDP. */
export const PROTO_UDP = 17;
/** The limited broadcast address 255.255.255.255. */
export const BROADCAST_IP = 0xffffffff;

/** Parse a dotted-quad address; throws a clear error otherwise. */
export function parseIp(s: string): number {
  const m = s.trim().match(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/);
  if (!m || m.slice(1).some((p) => Number(p) > 255 || (p.length > 1 && p[0] === "0"))) {
    throw new RangeError(`'${s}' is not an IPv4 address (expected like 10.0.0.2)`);
  }
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

/** Format an address number as a dotted quad. */
export function ipText(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

/** An address with its prefix length. */
export interface Cidr {
  /** The address. */
  ip: number;
  /** Prefix length 0..32. */
  prefix: number;
}

/** Parse "10.0.0.2/24" (a bare address means /32 is wrong for a host: the prefix is required). */
export function parseCidr(s: string): Cidr {
  const m = s.trim().match(/^([^/]+)\/(\d{1,2})$/);
  if (!m || Number(m[2]) > 32) {
    throw new RangeError(`'${s}' is not an address with a prefix (expected like 10.0.0.2/24)`);
  }
  return { ip: parseIp(m[1]), prefix: Number(m[2]) };
}

/**
 * Why `c` cannot be a host's address, or null when it can: "prefix" (not /1 to /30) or "reserved" (the subnet's
 * network or broadcast address).
 */
export function hostCidrProblem(c: Cidr): "prefix" | "reserved" | null {
  if (c.prefix < 1 || c.prefix > 30) return "prefix";
  const mask = maskOf(c.prefix);
  return (c.ip & ~mask) === 0 || ((c.ip | mask) >>> 0) === 0xffffffff ? "reserved" : null;
}

/** The special-purpose address blocks a host meets on a link (RFC 1122 §3.2.1.3, RFC 6890). */
export type SpecialAddress = "this-network" | "loopback" | "link-local" | "multicast" | "reserved";

/**
 * Which special-purpose block `ip` lies in, or null for an ordinary unicast address: 0.0.0.0/8 ("this network"),
 * 127.0.0.0/8 (loopback), 169.254.0.0/16 (link-local), 224.0.0.0/4 (multicast), 240.0.0.0/4 (reserved, the
 * limited broadcast included).
 */
export function specialAddress(ip: number): SpecialAddress | null {
  const a = ip >>> 24;
  if (a === 0) return "this-network";
  if (a === 127) return "loopback";
  if (a >= 240) return "reserved";
  if (a >= 224) return "multicast";
  if (ip >>> 16 === 0xa9fe) return "link-local";
  return null;
}

/** Whether a host may send from `ip` (RFC 1122 §3.2.1.3): not special-purpose, though link-local may. */
export function mayBeSource(ip: number): boolean {
  const special = specialAddress(ip);
  return special === null || special === "link-local";
}

/** The netmask of a prefix length. */
export function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** The prefix length of a contiguous netmask, or -1 when it is not one. */
export function prefixOf(mask: number): number {
  for (let p = 0; p <= 32; p++) if (maskOf(p) === mask >>> 0) return p;
  return -1;
}

/** Big-endian u32 at `d[off]`. */
export function readU32(d: Uint8Array, off: number): number {
  return ((d[off] << 24) | (d[off + 1] << 16) | (d[off + 2] << 8) | d[off + 3]) >>> 0;
}

/** Write big-endian u32 `v` at `d[off]`. */
export function writeU32(d: Uint8Array, off: number, v: number): void {
  d[off] = v >>> 24;
  d[off + 1] = v >>> 16;
  d[off + 2] = v >>> 8;
  d[off + 3] = v;
}

/** Big-endian u16 at `d[off]`. */
export function readU16(d: Uint8Array, off: number): number {
  return (d[off] << 8) | d[off + 1];
}

/** Write big-endian u16 `v` at `d[off]`. */
export function writeU16(d: Uint8Array, off: number, v: number): void {
  d[off] = v >>> 8;
  d[off + 1] = v;
}

/** Why a received IPv4 packet was refused (0: accepted). */
export const enum IpCheck {
  Ok = 0,
  /** Shorter than its header or its total length claims. */
  Truncated,
  /** Version is not 4, or IHL below 5. */
  BadHeader,
  /** Header checksum wrong. */
  BadChecksum,
  /** A fragment (MF set or a fragment offset): counted and dropped, never reassembled. */
  Fragment,
}

/**
 * Validate the IPv4 header at `d[off]` within `avail` bytes (RFC 791 §3.1, RFC 1122 §3.2.1): version 4, IHL ≥ 5,
 * IHL·4 ≤ total length ≤ avail, header checksum, not a fragment. Padding beyond the total length is ignored.
 */
export function checkIpv4(d: Uint8Array, off: number, avail: number): IpCheck {
  if (avail < IPV4_HLEN) return IpCheck.Truncated;
  const vihl = d[off];
  const ihl = (vihl & 15) * 4;
  if (vihl >>> 4 !== 4 || ihl < IPV4_HLEN) return IpCheck.BadHeader;
  const total = readU16(d, off + 2);
  if (ihl > avail || total > avail) return IpCheck.Truncated;
  if (total < ihl) return IpCheck.BadHeader;
  if (finish(sum16(d, off, ihl)) !== 0) return IpCheck.BadChecksum;
  if (readU16(d, off + 6) & 0x3fff) return IpCheck.Fragment; // MF flag or a fragment offset
  return IpCheck.Ok;
}

/** Write a 20-byte IPv4 header at `d[off]` (DF set, no options) with its checksum. */
export function writeIpv4(
  d: Uint8Array,
  off: number,
  src: number,
  dst: number,
  proto: number,
  payloadLen: number,
  ttl: number,
  id: number,
): void {
  d[off] = 0x45;
  d[off + 1] = 0;
  writeU16(d, off + 2, IPV4_HLEN + payloadLen);
  writeU16(d, off + 4, id);
  writeU16(d, off + 6, 0x4000);
  d[off + 8] = ttl;
  d[off + 9] = proto;
  d[off + 10] = 0;
  d[off + 11] = 0;
  writeU32(d, off + 12, src);
  writeU32(d, off + 16, dst);
  writeU16(d, off + 10, finish(sum16(d, off, IPV4_HLEN)));
}
