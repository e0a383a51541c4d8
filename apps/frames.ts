/**
 * pvdrv's test frame format, shared by the send/recv tasks, the tests and the C peer tool: Ethernet header,
 * ethertype 0x88b5 (IEEE local experimental), then "PVDR", a 32-bit sequence number, the 16-bit frame length,
 * and a byte pattern derived from both, so a receiver can verify every byte.
 * @module
 */

/** Ethertype of pvdrv frames. */
export const PVDRV_ETHERTYPE = 0x88b5;
/** Smallest pvdrv frame (header + magic + seq + len). */
export const MIN_FRAME = 24;
const MAGIC = 0x50564452; // "PVDR"

/** Pattern byte `i` of frame `seq`. */
export function patternByte(seq: number, i: number): number {
  return (seq * 7 + i) & 0xff;
}

/** Fill `buf[0..len)` with frame `seq` from `src` to `dst`. */
export function writeFrame(
  buf: Uint8Array,
  len: number,
  seq: number,
  dst: Uint8Array,
  src: Uint8Array,
): void {
  writeHeader(buf, len, seq, dst, src);
  for (let i = MIN_FRAME; i < len; i++) buf[i] = patternByte(seq, i);
}

/** Write only the first {@link MIN_FRAME} bytes of frame `seq` (benchmarks leave the payload as it was). */
export function writeHeader(
  buf: Uint8Array,
  len: number,
  seq: number,
  dst: Uint8Array,
  src: Uint8Array,
): void {
  if (len < MIN_FRAME || len > buf.length) {
    throw new RangeError(`frame length ${len} outside ${MIN_FRAME}..${buf.length}`);
  }
  buf.set(dst, 0);
  buf.set(src, 6);
  buf[12] = PVDRV_ETHERTYPE >> 8;
  buf[13] = PVDRV_ETHERTYPE & 0xff;
  buf[14] = MAGIC >>> 24;
  buf[15] = (MAGIC >>> 16) & 0xff;
  buf[16] = (MAGIC >>> 8) & 0xff;
  buf[17] = MAGIC & 0xff;
  buf[18] = seq >>> 24;
  buf[19] = (seq >>> 16) & 0xff;
  buf[20] = (seq >>> 8) & 0xff;
  buf[21] = seq & 0xff;
  buf[22] = len >> 8;
  buf[23] = len & 0xff;
}

/** Result of checking a received frame. */
export const enum FrameCheck {
  /** Not a pvdrv frame (other traffic). */
  Foreign = 0,
  /** A pvdrv frame with every byte right. */
  Ok = 1,
  /** A pvdrv frame with a wrong length or byte. */
  Corrupt = 2,
}

/** Check `buf[0..len)`; the sequence number of a pvdrv frame is left in `seqOut[0]`. */
export function checkFrame(buf: Uint8Array, len: number, seqOut: Uint32Array): FrameCheck {
  if (len < MIN_FRAME || buf[12] !== PVDRV_ETHERTYPE >> 8 || buf[13] !== (PVDRV_ETHERTYPE & 0xff)) {
    return FrameCheck.Foreign;
  }
  if (((buf[14] << 24) | (buf[15] << 16) | (buf[16] << 8) | buf[17]) >>> 0 !== MAGIC) {
    return FrameCheck.Foreign;
  }
  const seq = ((buf[18] << 24) | (buf[19] << 16) | (buf[20] << 8) | buf[21]) >>> 0;
  seqOut[0] = seq;
  // Ethernet pads short frames to 60 bytes: the length field says how many are ours.
  const want = (buf[22] << 8) | buf[23];
  if (want > len || want < MIN_FRAME || (want !== len && len > 60)) return FrameCheck.Corrupt;
  for (let i = MIN_FRAME; i < want; i++) if (buf[i] !== ((seq * 7 + i) & 0xff)) return FrameCheck.Corrupt;
  return FrameCheck.Ok;
}
