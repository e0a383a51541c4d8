/**
 * ICMP echo (RFC 792): the request and reply layout shared by the host's answering side and its ping.
 * @module
 */
import { finish, sum16 } from "./checksum.ts";
import { writeU16 } from "./ipv4.ts";

/** ICMP header length of echo messages: type, code, checksum, identifier, sequence. */
export const ICMP_ECHO_HLEN = 8;
/** Echo reply type. */
export const ICMP_ECHO_REPLY = 0;
/** Echo request type. */
export const ICMP_ECHO_REQUEST = 8;
/** Destination unreachable (RFC 792): a router or the peer refused what was sent (code 3: no such port). */
export const ICMP_DEST_UNREACHABLE = 3;

/** Write an echo header at `d[off]` over `len` ICMP bytes (payload already in place) and its checksum. */
export function writeEcho(
  d: Uint8Array,
  off: number,
  len: number,
  type: number,
  id: number,
  seq: number,
): void {
  d[off] = type;
  d[off + 1] = 0;
  d[off + 2] = 0;
  d[off + 3] = 0;
  writeU16(d, off + 4, id);
  writeU16(d, off + 6, seq);
  writeU16(d, off + 2, finish(sum16(d, off, len)));
}

/** The payload byte `i` of a pvdrv echo request (a pattern the reply must carry back unchanged). */
export function echoPattern(seq: number, i: number): number {
  return (seq + i * 7) & 0xff;
}
