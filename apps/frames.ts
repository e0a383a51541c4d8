/**
 * pvdrv's test frame format, shared by the send/recv tasks, the tests and the C peer tool: Ethernet header,
 * ethertype 0x88b5 (IEEE local experimental), then "PVDR", a 32-bit sequence number, the 16-bit frame length,
 * and a byte pattern derived from both, so a receiver can verify every byte.
 * @module
 */
import { ETH_HLEN, ETHERTYPE_IPV4 } from "../net/ethernet.ts";
import { IPV4_HLEN, PROTO_UDP, readU16, readU32, writeIpv4, writeU16, writeU32 } from "../net/ipv4.ts";
import { finish, sum16 } from "../net/checksum.ts";

/** Ethertype of pvdrv frames. */
export const PVDRV_ETHERTYPE = 0x88b5;
/** Smallest pvdrv frame (header + magic + seq + len). */
export const MIN_TEST_FRAME = 24;
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
  for (let i = MIN_TEST_FRAME; i < len; i++) buf[i] = patternByte(seq, i);
}

/** Write only the first {@link MIN_TEST_FRAME} bytes of frame `seq` (benchmarks leave the payload as it was). */
export function writeHeader(
  buf: Uint8Array,
  len: number,
  seq: number,
  dst: Uint8Array,
  src: Uint8Array,
): void {
  if (len < MIN_TEST_FRAME || len > buf.length) {
    throw new RangeError(`frame length ${len} outside ${MIN_TEST_FRAME}..${buf.length}`);
  }
  // Element stores, not TypedArray.set: for 12 bytes the builtin call costs more than the copy (a benchmark writes
  // this header per frame).
  for (let i = 0; i < 6; i++) {
    buf[i] = dst[i];
    buf[6 + i] = src[i];
  }
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
  if (len < MIN_TEST_FRAME || buf[12] !== PVDRV_ETHERTYPE >> 8 || buf[13] !== (PVDRV_ETHERTYPE & 0xff)) {
    return FrameCheck.Foreign;
  }
  if (((buf[14] << 24) | (buf[15] << 16) | (buf[16] << 8) | buf[17]) >>> 0 !== MAGIC) {
    return FrameCheck.Foreign;
  }
  const seq = ((buf[18] << 24) | (buf[19] << 16) | (buf[20] << 8) | buf[21]) >>> 0;
  seqOut[0] = seq;
  // Ethernet pads short frames to 60 bytes: the length field says how many are ours.
  const want = (buf[22] << 8) | buf[23];
  if (want > len || want < MIN_TEST_FRAME || (want !== len && len > 60)) return FrameCheck.Corrupt;
  for (let i = MIN_TEST_FRAME; i < want; i++) {
    if (buf[i] !== ((seq * 7 + i) & 0xff)) return FrameCheck.Corrupt;
  }
  return FrameCheck.Ok;
}

/**
 * Flow frames: pvdrv's test frame carried in IPv4/UDP, so a device that spreads traffic by flow hash (tun's
 * multi-queue TAP, RSS) sees distinct flows. Layout (lab/c/mqpeer.c speaks it): Ethernet (type 0x0800), IPv4 10.77.0.2
 * → 10.77.0.1 (DF, TTL 64, UDP), UDP from port {@link FLOW_PORT} + flow to port 9 (checksum 0), then at
 * {@link FLOW_HDR}: "PVDR", the sequence number, the frame length, the flow again, and byte `i` = (h * 7 + i) & 0xff
 * where h folds every byte of the sequence number (so no flipped bit of it goes unseen).
 * Replies swap MACs, addresses and ports: the flow is the one port at or above {@link FLOW_PORT}.
 */
export const FLOW_HDR = 42;
/** UDP port of flow 0. */
export const FLOW_PORT = 0x8000;
/** Smallest flow frame (an Ethernet minimum frame). */
export const MIN_FLOW_FRAME = 60;
/** Flows available (ports FLOW_PORT..0xfffe). */
export const MAX_FLOWS = 0x7fff;
const GUEST_IP = 0x0a4d0002; // 10.77.0.2
const PEER_IP = 0x0a4d0001; // 10.77.0.1
const FLOW_PEER_PORT = 9;

/** The fold of `seq` the flow frame pattern starts from. */
function seqFold(seq: number): number {
  return (seq ^ (seq >>> 8) ^ (seq >>> 16) ^ (seq >>> 24)) & 0xff;
}

/** Fill `buf[0..len)` with flow frame `seq` of `flow`, from the guest side (`src`) to `dst`. */
export function writeFlowFrame(
  buf: Uint8Array,
  len: number,
  seq: number,
  flow: number,
  dst: Uint8Array,
  src: Uint8Array,
): void {
  if (len < MIN_FLOW_FRAME || len > buf.length) {
    throw new RangeError(`flow frame length ${len} outside ${MIN_FLOW_FRAME}..${buf.length}`);
  }
  if (!(flow >= 0 && flow < MAX_FLOWS)) throw new RangeError(`flow ${flow} outside 0..${MAX_FLOWS - 1}`);
  buf.set(dst, 0);
  buf.set(src, 6);
  writeU16(buf, 12, ETHERTYPE_IPV4);
  writeIpv4(buf, ETH_HLEN, GUEST_IP, PEER_IP, PROTO_UDP, len - ETH_HLEN - IPV4_HLEN, 64, 0);
  writeU16(buf, 34, FLOW_PORT + flow);
  writeU16(buf, 36, FLOW_PEER_PORT);
  writeU16(buf, 38, len - 34);
  writeU16(buf, 40, 0);
  writeU32(buf, 42, MAGIC);
  writeU32(buf, 46, seq);
  writeU16(buf, 50, len);
  writeU16(buf, 52, flow);
  const h = seqFold(seq);
  for (let i = FLOW_HDR + 12; i < len; i++) buf[i] = patternByte(h, i);
}

/**
 * Check flow frame `buf[0..len)` (either direction); its sequence number goes to `out[0]` and its flow to `out[1]`.
 * A frame that is not a flow frame is Foreign; one with a wrong length, IPv4 checksum or byte is Corrupt.
 */
export function checkFlowFrame(buf: Uint8Array, len: number, out: Uint32Array): FrameCheck {
  if (
    len < MIN_FLOW_FRAME || readU16(buf, 12) !== ETHERTYPE_IPV4 || buf[14] !== 0x45 || buf[23] !== PROTO_UDP
  ) {
    return FrameCheck.Foreign;
  }
  if (readU32(buf, 42) !== MAGIC) return FrameCheck.Foreign;
  if (readU16(buf, 50) !== len || readU16(buf, 16) !== len - 14 || readU16(buf, 38) !== len - 34) {
    return FrameCheck.Corrupt;
  }
  if (finish(sum16(buf, ETH_HLEN, IPV4_HLEN)) !== 0) return FrameCheck.Corrupt;
  // The flow's port is the one at or above FLOW_PORT (replies swap the ports); the other is the peer's.
  const sport = readU16(buf, 34), dport = readU16(buf, 36), fromGuest = sport >= FLOW_PORT;
  const port = fromGuest ? sport : dport, other = fromGuest ? dport : sport;
  if (other !== FLOW_PEER_PORT || readU16(buf, 40) !== 0 || port - FLOW_PORT !== readU16(buf, 52)) {
    return FrameCheck.Corrupt;
  }
  const seq = readU32(buf, 46), h = seqFold(seq);
  for (let i = FLOW_HDR + 12; i < len; i++) if (buf[i] !== patternByte(h, i)) return FrameCheck.Corrupt;
  out[0] = seq;
  out[1] = port - FLOW_PORT;
  return FrameCheck.Ok;
}
