/**
 * vhost-user's messages (QEMU docs/interop/vhost-user.rst), written once and read by both sides: pvdrv's backend
 * reads what the front-end (QEMU) sends and writes its replies; the in-process front-end of the tests writes the
 * requests. Every message is a 12-byte header — request (u32), flags (u32: version 1 in bits 0–1, REPLY in bit 2,
 * NEED_REPLY in bit 3), payload size (u32) — then the payload, little-endian; descriptors travel beside it as
 * SCM_RIGHTS (ffi/unix.ts). Readers check every size, count and range before anything is used: a message that
 * fails is a {@link PvdrvError} of kind "vhost-user" naming the field. The vring state and address layouts are
 * Linux's `struct vhost_vring_state` (8 bytes) and `struct vhost_vring_addr` (40 bytes; checked with gcc against
 * linux/vhost_types.h); a memory region is 32 bytes, its last u64 the mmap offset (where Linux has padding).
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";

/** The requests a front-end sends a net backend (vhost-user.rst "Front-end message types"). */
export const VHOST_USER = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
} as const;

/** Header flags. */
export const VHOST_USER_FLAG = { VERSION: 0x1, VERSION_MASK: 0x3, REPLY: 0x4, NEED_REPLY: 0x8 } as const;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const VHOST_USER_PROTOCOL_F = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  CONFIG: 9,
} as const;

/** The virtio feature bit that says protocol features are negotiated (VHOST_USER_F_PROTOCOL_FEATURES). */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Header size. */
export const VHOST_USER_HEADER = 12;
/** The largest payload pvdrv accepts (a full memory table is 8 + 8 × 32 bytes; config space is 256). */
export const VHOST_USER_MAX_PAYLOAD = 4096;
/** Memory regions one SET_MEM_TABLE may carry (VHOST_MEMORY_BASELINE_NREGIONS). */
export const VHOST_USER_MAX_REGIONS = 8;
/** In a KICK/CALL/ERR payload: the vring index bits, and the bit that says no descriptor came (poll instead). */
export const VHOST_USER_VRING_INDEX_MASK = 0xff, VHOST_USER_VRING_NOFD = 0x100;

/** A message header. */
export interface VhostUserHeader {
  /** The request (a {@link VHOST_USER} value). */
  request: number;
  /** Version and REPLY/NEED_REPLY bits ({@link VHOST_USER_FLAG}). */
  flags: number;
  /** Payload bytes that follow. */
  size: number;
}

/** A vring's number (size, or base index). */
export interface VringState {
  /** The vring. */
  index: number;
  /** Its size, base index or enable flag, by request. */
  num: number;
}

/** A vring's addresses, in the front-end's (QEMU's) virtual address space. */
export interface VringAddr {
  /** The vring. */
  index: number;
  /** VHOST_VRING_F_LOG (bit 0) when the used ring is logged. */
  flags: number;
  /** The descriptor table. */
  desc: bigint;
  /** The used ring. */
  used: bigint;
  /** The available ring. */
  avail: bigint;
  /** The used ring's guest address, for dirty logging. */
  log: bigint;
}

/** One guest memory region: where it is for the guest and for QEMU, and where in its fd it starts. */
export interface MemRegion {
  /** Where the region is in guest physical memory. */
  guestAddr: bigint;
  /** Its length. */
  size: bigint;
  /** Where it is in QEMU's address space (vring addresses use these). */
  userAddr: bigint;
  /** Where it starts in the descriptor that came with it. */
  mmapOffset: bigint;
}

const U64_END = 1n << 64n;

function fail(msg: string): PvdrvError {
  return new PvdrvError("vhost-user", `vhost-user: ${msg}`);
}

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Read and check a header: version 1, a payload no larger than pvdrv accepts. */
export function readHeader(b: Uint8Array): VhostUserHeader {
  if (b.length < VHOST_USER_HEADER) throw fail(`a header is ${VHOST_USER_HEADER} bytes, got ${b.length}`);
  const v = view(b),
    request = v.getUint32(0, true),
    flags = v.getUint32(4, true),
    size = v.getUint32(8, true);
  if ((flags & VHOST_USER_FLAG.VERSION_MASK) !== VHOST_USER_FLAG.VERSION) {
    throw fail(`request ${request}: version ${flags & VHOST_USER_FLAG.VERSION_MASK}, not 1`);
  }
  if (size > VHOST_USER_MAX_PAYLOAD) throw fail(`request ${request}: payload of ${size} bytes is too large`);
  return { request, flags, size };
}

/** Write a header into `b` (12 bytes). */
export function writeHeader(b: Uint8Array, h: VhostUserHeader): void {
  const v = view(b);
  v.setUint32(0, h.request, true);
  v.setUint32(4, h.flags, true);
  v.setUint32(8, h.size, true);
}

function sized(p: Uint8Array, n: number, what: string): DataView {
  if (p.length !== n) throw fail(`${what} payload is ${n} bytes, got ${p.length}`);
  return view(p);
}

/** A u64 payload (features, a log base, KICK/CALL/ERR's index and flags). */
export function readU64(p: Uint8Array, what = "u64"): bigint {
  return sized(p, 8, what).getBigUint64(0, true);
}

/** Write a u64 payload. */
export function writeU64(p: Uint8Array, x: bigint): void {
  view(p).setBigUint64(0, x, true);
}

/** A vring state payload (SET_VRING_NUM, SET/GET_VRING_BASE, SET_VRING_ENABLE). */
export function readVringState(p: Uint8Array): VringState {
  const v = sized(p, 8, "vring state");
  return { index: v.getUint32(0, true), num: v.getUint32(4, true) };
}

/** Write a vring state payload. */
export function writeVringState(p: Uint8Array, s: VringState): void {
  const v = view(p);
  v.setUint32(0, s.index, true);
  v.setUint32(4, s.num, true);
}

/** A vring address payload (SET_VRING_ADDR): 40 bytes. */
export function readVringAddr(p: Uint8Array): VringAddr {
  const v = sized(p, 40, "vring address");
  return {
    index: v.getUint32(0, true),
    flags: v.getUint32(4, true),
    desc: v.getBigUint64(8, true),
    used: v.getBigUint64(16, true),
    avail: v.getBigUint64(24, true),
    log: v.getBigUint64(32, true),
  };
}

/** Write a vring address payload. */
export function writeVringAddr(p: Uint8Array, a: VringAddr): void {
  const v = view(p);
  v.setUint32(0, a.index, true);
  v.setUint32(4, a.flags, true);
  v.setBigUint64(8, a.desc, true);
  v.setBigUint64(16, a.used, true);
  v.setBigUint64(24, a.avail, true);
  v.setBigUint64(32, a.log, true);
}

/** KICK/CALL/ERR's u64: the vring index and whether a descriptor came with it. */
export function readVringFd(p: Uint8Array, what: string): { index: number; noFd: boolean } {
  const x = readU64(p, what);
  if (x & ~BigInt(VHOST_USER_VRING_INDEX_MASK | VHOST_USER_VRING_NOFD)) {
    throw fail(`${what}: unknown bits in 0x${x.toString(16)}`);
  }
  return { index: Number(x & 0xffn), noFd: (x & BigInt(VHOST_USER_VRING_NOFD)) !== 0n };
}

/**
 * A memory table (SET_MEM_TABLE): region count, padding, then 32 bytes a region. Checked: the count within
 * {@link VHOST_USER_MAX_REGIONS} and equal to the descriptors that came with it, the payload exactly that long,
 * every region non-empty, no range past 2^64 (guest, user or file offset), and no two regions overlapping in the
 * guest's address space or in QEMU's.
 */
export function readMemTable(p: Uint8Array, fds: number): MemRegion[] {
  if (p.length < 8) throw fail(`memory table payload is ${p.length} bytes`);
  const v = view(p), n = v.getUint32(0, true);
  if (n < 1 || n > VHOST_USER_MAX_REGIONS) {
    throw fail(`memory table with ${n} regions (1..${VHOST_USER_MAX_REGIONS})`);
  }
  if (n !== fds) throw fail(`memory table with ${n} regions came with ${fds} descriptors`);
  sized(p, 8 + 32 * n, "memory table");
  const out: MemRegion[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + 32 * i;
    const r = {
      guestAddr: v.getBigUint64(o, true),
      size: v.getBigUint64(o + 8, true),
      userAddr: v.getBigUint64(o + 16, true),
      mmapOffset: v.getBigUint64(o + 24, true),
    };
    if (r.size === 0n) throw fail(`memory region ${i} is empty`);
    for (
      const [name, start] of [["guest", r.guestAddr], ["user", r.userAddr], ["mmap", r.mmapOffset]] as const
    ) {
      if (start + r.size > U64_END) throw fail(`memory region ${i}: ${name} range wraps past 2^64`);
    }
    for (const [k, q] of out.entries()) {
      const overlaps = (a: bigint, b: bigint) => a < b + q.size && b < a + r.size;
      if (overlaps(r.guestAddr, q.guestAddr)) {
        throw fail(`memory regions ${k} and ${i} overlap in guest memory`);
      }
      if (overlaps(r.userAddr, q.userAddr)) {
        throw fail(`memory regions ${k} and ${i} overlap in QEMU's memory`);
      }
    }
    out.push(r);
  }
  return out;
}

/** Write a memory table payload for `regions`; returns its length. */
export function writeMemTable(p: Uint8Array, regions: readonly MemRegion[]): number {
  const v = view(p);
  v.setUint32(0, regions.length, true);
  v.setUint32(4, 0, true);
  for (const [i, r] of regions.entries()) {
    const o = 8 + 32 * i;
    v.setBigUint64(o, r.guestAddr, true);
    v.setBigUint64(o + 8, r.size, true);
    v.setBigUint64(o + 16, r.userAddr, true);
    v.setBigUint64(o + 24, r.mmapOffset, true);
  }
  return 8 + 32 * regions.length;
}
