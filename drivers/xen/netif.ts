/**
 * The netif wire records (Xen public/io/netif.h): TX and RX requests the frontend writes, and the responses and
 * extra-info segments the backend writes, as accessors on a {@link FrontRing}'s views at an entry's byte offset.
 * Readers return raw fields; the frontend checks every one before it indexes anything.
 * @module
 */
import type { FrontRing } from "./ring.ts";

/** netif_tx_request.flags (netif.h NETTXF_*). */
export const NETTXF_csum_blank = 1, NETTXF_data_validated = 2, NETTXF_more_data = 4;
/** netif_rx_response.flags (netif.h NETRXF_*). */
export const NETRXF_data_validated = 1, NETRXF_csum_blank = 2, NETRXF_more_data = 4, NETRXF_extra_info = 8;
/** Response statuses (netif.h NETIF_RSP_*): OKAY, and NULL (a slot with nothing to report). */
export const NETIF_RSP_OKAY = 0, NETIF_RSP_NULL = 1;
/** netif_extra_info.flags: another extra-info segment follows. */
export const XEN_NETIF_EXTRA_FLAG_MORE = 1;
/** Entry sizes: the TX union (request 12 bytes) and the RX union (8 bytes). */
export const TX_ENTRY = 12, RX_ENTRY = 8;
/** XEN_NETIF_NR_SLOTS_MIN: data slots a frame may use; a frame may add one extra-info slot per type. */
export const MAX_DATA_SLOTS = 18, MAX_FRAME_SLOTS = MAX_DATA_SLOTS + 6;
/** Largest MTU: netback's limit with feature-sg (ETH_MAX_MTU - VLAN_ETH_HLEN). */
export const NETFRONT_MAX_MTU = 65517;

/** netif_tx_request { u32 gref; u16 offset; u16 flags; u16 id; u16 size; } at entry byte offset `e`. */
export function writeTxRequest(
  r: FrontRing,
  e: number,
  gref: number,
  offset: number,
  flags: number,
  id: number,
  size: number,
): void {
  r.u32[e >> 2] = gref;
  const h = e >> 1;
  r.u16[h + 2] = offset;
  r.u16[h + 3] = flags;
  r.u16[h + 4] = id;
  r.u16[h + 5] = size;
}

/** netif_tx_response { u16 id; s16 status; }: the id. */
export function txResponseId(r: FrontRing, e: number): number {
  return r.u16[e >> 1];
}

/** netif_tx_response: the status (NETIF_RSP_*; negative on error). */
export function txResponseStatus(r: FrontRing, e: number): number {
  return r.i16[(e >> 1) + 1];
}

/** netif_rx_request { u16 id; u16 pad; u32 gref; } at entry byte offset `e`. */
export function writeRxRequest(r: FrontRing, e: number, id: number, gref: number): void {
  r.u16[e >> 1] = id;
  r.u32[(e >> 2) + 1] = gref;
}

/** netif_rx_response { u16 id; u16 offset; u16 flags; s16 status; }: the id. */
export function rxResponseId(r: FrontRing, e: number): number {
  return r.u16[e >> 1];
}

/** netif_rx_response: offset of the data in the page. */
export function rxResponseOffset(r: FrontRing, e: number): number {
  return r.u16[(e >> 1) + 1];
}

/** netif_rx_response: flags (NETRXF_*). */
export function rxResponseFlags(r: FrontRing, e: number): number {
  return r.u16[(e >> 1) + 2];
}

/** netif_rx_response: bytes in this slot, or a negative NETIF_RSP_* error. */
export function rxResponseStatus(r: FrontRing, e: number): number {
  return r.i16[(e >> 1) + 3];
}

/** netif_extra_info { u8 type; u8 flags; ... }: whether another extra-info segment follows. */
export function extraInfoMore(r: FrontRing, e: number): boolean {
  return (r.page[e + 1] & XEN_NETIF_EXTRA_FLAG_MORE) !== 0;
}

/** Receive flags of a frame's first response as the application sees them (RX_CSUM_VALID 2, RX_CSUM_PARTIAL 1). */
export function rxAppFlags(flags: number): number {
  return (flags & NETRXF_data_validated ? 2 : 0) | (flags & NETRXF_csum_blank ? 1 : 0);
}
