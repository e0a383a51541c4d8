/**
 * The blkif wire records (Xen public/io/blkif.h, x86_64 ABI — the frontend says so with `protocol =
 * x86_64-abi`): the requests the frontend writes and the responses the backend writes, as accessors on a ring's
 * views ({@link RingViews}: a FrontRing's, or a backend's) at an entry's byte offset, used by blkfront and by the
 * blkback model alike. Requests and responses share 112-byte ring entries; every sector field counts 512-byte
 * units, whatever `sector-size` is.
 * Readers return raw fields; the frontend checks every one before it indexes anything.
 * @module
 */
import type { RingViews } from "./ring.ts";

/** blkif_request.operation (BLKIF_OP_*). */
export const BLKIF_OP = {
  READ: 0,
  WRITE: 1,
  WRITE_BARRIER: 2,
  FLUSH_DISKCACHE: 3,
  DISCARD: 5,
  INDIRECT: 6,
} as const;
/** blkif_response.status (BLKIF_RSP_*): the only values a backend may write. */
export const BLKIF_RSP = { EOPNOTSUPP: -2, ERROR: -1, OKAY: 0 } as const;
/** blkif_request_discard.flag: a secure erase (only when the backend says discard-secure). */
export const BLKIF_DISCARD_SECURE = 1;
/** The union of a request and a response: one ring entry (sizeof(struct blkif_request)). */
export const BLKIF_ENTRY = 112;
/** Segments a direct request carries (BLKIF_MAX_SEGMENTS_PER_REQUEST). */
export const BLKIF_MAX_SEGMENTS = 11;
/** Indirect pages one indirect request names (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST). */
export const BLKIF_MAX_INDIRECT_PAGES = 8;
/** Segment records in one indirect page (4096 / sizeof(struct blkif_request_segment)). */
export const SEGMENTS_PER_INDIRECT_PAGE = 512;
/** blkif's sector unit. */
export const BLKIF_SECTOR = 512;
/** The `info` key's bits (VDISK_*). */
export const VDISK = { CDROM: 1, REMOVABLE: 2, READONLY: 4 } as const;

// Byte offsets in an entry (checked against the header with gcc: request 112 bytes, response 16).
const OP = 0, NSEG = 1, HANDLE = 2, ID = 8, SECTOR = 16, SEG = 24, SEG_BYTES = 8;
const D_NR_SECTORS = 24, I_NSEG = 2, I_HANDLE = 24, I_GREFS = 28;
const R_OP = 8, R_STATUS = 10;

/** The u64 at byte `e` (both halves in u32 words; JS numbers up to 2^53). */
function put64(r: RingViews, e: number, v: number): void {
  r.u32[e >> 2] = v >>> 0;
  r.u32[(e >> 2) + 1] = Math.floor(v / 0x1_0000_0000);
}

function get64(r: RingViews, e: number): number {
  return r.u32[(e >> 2) + 1] * 0x1_0000_0000 + r.u32[e >> 2];
}

/** blkif_request's fixed part: operation, nr_segments, handle, id, sector_number. */
export function writeRequest(
  r: RingViews,
  e: number,
  op: number,
  segments: number,
  handle: number,
  id: number,
  sector: number,
): void {
  r.page[e + OP] = op;
  r.page[e + NSEG] = segments;
  r.u16[(e + HANDLE) >> 1] = handle;
  put64(r, e + ID, id);
  put64(r, e + SECTOR, sector);
}

/** Segment `k` of a direct request: gref and the first and last 512-byte sector used in its page. */
export function writeSegment(
  r: RingViews,
  e: number,
  k: number,
  gref: number,
  first: number,
  last: number,
): void {
  writeIndirectSegment(r.u32, r.page, e + SEG + k * SEG_BYTES, gref, first, last);
}

/** A segment record in an indirect page, at byte `at` of the `u32`/`u8` views of the indirect pages. */
export function writeIndirectSegment(
  u32: Uint32Array,
  u8: Uint8Array,
  at: number,
  gref: number,
  first: number,
  last: number,
): void {
  u32[at >> 2] = gref;
  u8[at + 4] = first;
  u8[at + 5] = last;
}

/** A segment record of an indirect page (backend side): gref, first and last sector. */
export function readIndirectSegment(
  page: Uint8Array,
  k: number,
): { gref: number; first: number; last: number } {
  const at = k * SEG_BYTES;
  const gref = (page[at] | page[at + 1] << 8 | page[at + 2] << 16 | page[at + 3] << 24) >>> 0;
  return { gref, first: page[at + 4], last: page[at + 5] };
}

/** blkif_request_discard: sector range, flag (BLKIF_DISCARD_SECURE or 0). */
export function writeDiscard(
  r: RingViews,
  e: number,
  handle: number,
  id: number,
  sector: number,
  sectors: number,
  flag: number,
): void {
  // The fixed part is a request's, with the flag where nr_segments stands.
  writeRequest(r, e, BLKIF_OP.DISCARD, flag, handle, id, sector);
  put64(r, e + D_NR_SECTORS, sectors);
}

/** blkif_request_indirect: a READ or WRITE of `segments` segments listed in `pages` indirect pages. */
export function writeIndirect(
  r: RingViews,
  e: number,
  op: number,
  segments: number,
  handle: number,
  id: number,
  sector: number,
  grefs: Uint32Array,
  pages: number,
): void {
  r.page[e + OP] = BLKIF_OP.INDIRECT;
  r.page[e + NSEG] = op;
  r.u16[(e + I_NSEG) >> 1] = segments;
  put64(r, e + ID, id);
  put64(r, e + SECTOR, sector);
  r.u16[(e + I_HANDLE) >> 1] = handle;
  for (let k = 0; k < pages; k++) r.u32[((e + I_GREFS) >> 2) + k] = grefs[k];
}

/** blkif_response.id (the backend echoes the request's; 64 bits). */
export function responseId(r: RingViews, e: number): number {
  return get64(r, e);
}

/** blkif_response.operation. */
export function responseOp(r: RingViews, e: number): number {
  return r.page[e + R_OP];
}

/** blkif_response.status (BLKIF_RSP_*). */
export function responseStatus(r: RingViews, e: number): number {
  return r.i16[(e + R_STATUS) >> 1];
}

/** blkif_response, written by a backend (the model). */
export function writeResponse(r: RingViews, e: number, id: number, op: number, status: number): void {
  put64(r, e, id);
  r.page[e + R_OP] = op;
  r.i16[(e + R_STATUS) >> 1] = status;
}

/** What a backend reads of a request (the model): every field, raw. */
export interface BlkifRequest {
  /** operation (BLKIF_OP_*). */
  op: number;
  /** nr_segments (direct), flag (discard) or indirect_op (indirect). */
  nseg: number;
  /** handle. */
  handle: number;
  /** id. */
  id: number;
  /** sector_number. */
  sector: number;
  /** Discard: nr_sectors. */
  sectors: number;
  /** Indirect: nr_segments. */
  indirectSegments: number;
}

/** Read request entry `e` into `out` (backend side). */
export function readRequest(r: RingViews, e: number, out: BlkifRequest): BlkifRequest {
  out.op = r.page[e + OP];
  out.nseg = r.page[e + NSEG];
  out.id = get64(r, e + ID);
  out.sector = get64(r, e + SECTOR);
  out.handle = out.op === BLKIF_OP.INDIRECT ? r.u16[(e + I_HANDLE) >> 1] : r.u16[(e + HANDLE) >> 1];
  out.sectors = out.op === BLKIF_OP.DISCARD ? get64(r, e + D_NR_SECTORS) : 0;
  out.indirectSegments = out.op === BLKIF_OP.INDIRECT ? r.u16[(e + I_NSEG) >> 1] : 0;
  return out;
}

/** Segment `k` of direct request `e` (backend side): gref, first and last sector. */
export function readSegment(
  r: RingViews,
  e: number,
  k: number,
): { gref: number; first: number; last: number } {
  const s = e + SEG + k * SEG_BYTES;
  return { gref: r.u32[s >> 2], first: r.page[s + 4], last: r.page[s + 5] };
}

/** Indirect page gref `k` of indirect request `e` (backend side). */
export function readIndirectGref(r: RingViews, e: number, k: number): number {
  return r.u32[((e + I_GREFS) >> 2) + k];
}
