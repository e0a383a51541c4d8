/**
 * Completing checksums a device left partial. A frame received with RX_CSUM_PARTIAL (virtio NEEDS_CSUM, netif
 * csum_blank) carries only the pseudo-header sum in its TCP or UDP checksum field: fine for a stack that trusts the
 * flag, wrong for anything that gets the bare frame (a TAP interface, a capture). This finishes it as the device
 * would have.
 * @module
 */
import { completeAt } from "./checksum.ts";
import { ETH_HLEN, ETHERTYPE_IPV4 } from "./ethernet.ts";
import { PROTO_UDP, readU16 } from "./ipv4.ts";

const PROTO_TCP = 6;

/**
 * Finish the TCP or UDP checksum of the IPv4 frame in `d[0..len)` whose checksum field holds the pseudo-header
 * sum. True when done; false when the frame is not one this can complete (left as it is).
 */
export function completeChecksum(d: Uint8Array, len: number): boolean {
  if (len < ETH_HLEN + 20 || readU16(d, 12) !== ETHERTYPE_IPV4 || d[ETH_HLEN] >> 4 !== 4) return false;
  const ihl = (d[ETH_HLEN] & 15) * 4, total = readU16(d, ETH_HLEN + 2), proto = d[ETH_HLEN + 9];
  const l4 = ETH_HLEN + ihl, l4len = total - ihl;
  if (ihl < 20 || ETH_HLEN + total > len || (readU16(d, ETH_HLEN + 6) & 0x3fff) !== 0) return false;
  const field = proto === PROTO_TCP ? 16 : proto === PROTO_UDP ? 6 : -1;
  if (field < 0 || l4len < field + 2) return false;
  completeAt(d, l4, l4 + l4len, l4 + field, proto === PROTO_UDP);
  return true;
}
