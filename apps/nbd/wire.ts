/**
 * The NBD protocol's wire formats (NetworkBlockDevice/nbd doc/proto.md: fixed newstyle negotiation, simple
 * replies), written once for both sides: pvdrv's export (apps/nbd/server.ts) and the test client
 * (tests/models/nbd_client.ts). Every field is big-endian.
 * @module
 */

/** "NBDMAGIC": the server's first eight bytes. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle negotiation, and the magic of every option the client sends. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** The magic of every option reply. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
/** The magic of every transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** The magic of a simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;

/** Handshake flags (server) and client flags. */
export const NBD_FLAG = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;
/** Client flags the server understands. */
export const NBD_FLAG_C = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;

/** Options. */
export const NBD_OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

/** Option reply types (errors have bit 31 set). */
export const NBD_REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

/** Information types of NBD_REP_INFO. */
export const NBD_INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags (per export). */
export const NBD_TFLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
} as const;

/** Command flags. */
export const NBD_CMD_FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;

/** Commands. */
export const NBD_CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Errors a reply carries (Linux errno values, as the protocol defines them). */
export const NBD_E = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Bytes of the server's greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export const GREETING_BYTES = 18;
/** Bytes of an option's header: magic, option, length. */
export const OPTION_HDR = 16;
/** Bytes of an option reply's header: magic, option, reply type, length. */
export const OPTION_REPLY_HDR = 20;
/** Bytes of a transmission request: magic, flags, type, handle, offset, length. */
export const REQUEST_BYTES = 28;
/** Bytes of a simple reply's header: magic, error, handle. */
export const REPLY_BYTES = 16;
/** Zero padding after NBD_OPT_EXPORT_NAME's answer unless the client set NO_ZEROES. */
export const EXPORT_NAME_PAD = 124;

/** The server's greeting. */
export function writeGreeting(b: Uint8Array, flags: number): number {
  const v = dv(b);
  v.setBigUint64(0, NBD_MAGIC);
  v.setBigUint64(8, NBD_OPTS_MAGIC);
  v.setUint16(16, flags);
  return GREETING_BYTES;
}

/** An option reply header (`len` bytes of data follow). */
export function writeOptionReply(b: Uint8Array, option: number, type: number, len: number): number {
  const v = dv(b);
  v.setBigUint64(0, NBD_REP_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, len);
  return OPTION_REPLY_HDR;
}

/** A transmission request as one side reads it. */
export interface NbdRequest {
  /** Must be {@link NBD_REQUEST_MAGIC}. */
  magic: number;
  /** Command flags. */
  flags: number;
  /** Command. */
  type: number;
  /** The client's handle, echoed in the reply (kept as two words: no BigInt per request). */
  handleHi: number;
  /** Low word of the handle. */
  handleLo: number;
  /** Byte offset (a number: offsets past 2^53 read as Infinity and are refused). */
  offset: number;
  /** Byte length. */
  length: number;
}

/** Read a request from `b` at `at` into `r` (reused: nothing allocated). */
export function readRequest(v: DataView, at: number, r: NbdRequest): void {
  r.magic = v.getUint32(at);
  r.flags = v.getUint16(at + 4);
  r.type = v.getUint16(at + 6);
  r.handleHi = v.getUint32(at + 8);
  r.handleLo = v.getUint32(at + 12);
  const hi = v.getUint32(at + 16), lo = v.getUint32(at + 20);
  r.offset = hi >= 0x200000 ? Infinity : hi * 0x1_0000_0000 + lo;
  r.length = v.getUint32(at + 24);
}

/** Write a request (the client side). */
export function writeRequest(v: DataView, at: number, r: Omit<NbdRequest, "magic">): void {
  v.setUint32(at, NBD_REQUEST_MAGIC);
  v.setUint16(at + 4, r.flags);
  v.setUint16(at + 6, r.type);
  v.setUint32(at + 8, r.handleHi);
  v.setUint32(at + 12, r.handleLo);
  v.setUint32(at + 16, Math.floor(r.offset / 0x1_0000_0000));
  v.setUint32(at + 20, r.offset >>> 0);
  v.setUint32(at + 24, r.length);
}

/** Write a simple reply header. */
export function writeReply(v: DataView, at: number, error: number, handleHi: number, handleLo: number): void {
  v.setUint32(at, NBD_SIMPLE_REPLY_MAGIC);
  v.setUint32(at + 4, error);
  v.setUint32(at + 8, handleHi);
  v.setUint32(at + 12, handleLo);
}

/** A DataView over all of `b`. */
export function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
