/**
 * Verifying a disk: write the first N MiB, then a pattern at seeded random offsets with sizes from one logical
 * block to 1 MiB over them, read it all back and check every byte. The pattern is a function of the byte's offset and the
 * write that last covered it, so anyone with the seed — the lab's outer side, reading the disk's backing file
 * after the run — can check it without pvdrv.
 * @module
 */
import type { Disk } from "../drivers/block/disk.ts";

/** Largest write of a verify run. */
export const VERIFY_MAX_WRITE = 1 << 20;

/** A verify plan: the writes, in order, and what the region holds after them. */
export interface VerifyPlan {
  /** [offset, length] of each write. */
  writes: [number, number][];
  /** The expected contents of bytes 0 .. size. */
  expected: Uint8Array;
}

/** xorshift32: a small seeded generator both sides of the lab run identically. */
function rng(seed: number): () => number {
  let x = (seed >>> 0) || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
}

/** Byte `o` of write `k` (its offset on the disk and the write's number). */
export function patternByte(o: number, k: number): number {
  return ((o >>> 9) * 31 + (o & 511) * 7 + k * 101 + (o >>> 3)) & 0xff;
}

/**
 * The pattern of a whole 512-byte sector depends on the sector and the write only through one byte, its base
 * `((o >>> 9) * 95 + k * 101) & 0xff` (`o >>> 3` is the sector times 64 plus `i >>> 3`): row `b` is a sector of
 * base `b`. Filling by rows copies 512 bytes at a time, which under nested TCG turns minutes into seconds.
 */
const ROWS: Uint8Array[] = Array.from({ length: 256 }, (_, b) => {
  const row = new Uint8Array(512);
  for (let i = 0; i < 512; i++) row[i] = (b + i * 7 + (i >>> 3)) & 0xff;
  return row;
});

/**
 * The plan for `size` bytes with logical blocks of `block`: the whole region written first, in 1 MiB writes (so
 * no byte keeps what an earlier run left), then random writes covering it about twice more, each a whole number
 * of blocks between one block and 1 MiB, at block-aligned offsets.
 */
export function verifyPlan(size: number, block: number, seed: number): VerifyPlan {
  const next = rng(seed), blocks = size / block, maxBlocks = Math.max(1, VERIFY_MAX_WRITE / block);
  const expected = new Uint8Array(size);
  const writes: [number, number][] = [];
  const add = (off: number, len: number) => {
    const k = writes.length;
    writes.push([off, len]);
    fillWrite(expected.subarray(off, off + len), off, k);
  };
  for (let off = 0; off < size; off += VERIFY_MAX_WRITE) add(off, Math.min(VERIFY_MAX_WRITE, size - off));
  let covered = 0;
  while (covered < 2 * size) {
    const n = 1 + (next() % Math.min(maxBlocks, blocks));
    const at = next() % (blocks - n + 1);
    add(at * block, n * block);
    covered += n * block;
  }
  return { writes, expected };
}

/** Write `[off, len)` of write `k` into `out` (offset 0 of `out` is `off`): {@link patternByte} of each byte. */
export function fillWrite(out: Uint8Array, off: number, k: number): void {
  const n = out.length;
  let i = 0;
  for (; i < n && ((off + i) & 511) !== 0; i++) out[i] = patternByte(off + i, k);
  for (; i + 512 <= n; i += 512) out.set(ROWS[(((off + i) >>> 9) * 95 + k * 101) & 0xff], i);
  for (; i < n; i++) out[i] = patternByte(off + i, k);
}

/** The first offset where `got` differs from `want`, or -1. */
export function firstMismatch(got: Uint8Array, want: Uint8Array): number {
  if (got.length !== want.length) return Math.min(got.length, want.length);
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) return i;
  return -1;
}

/** What {@link verifyDisk} found. */
export interface VerifyResult {
  /** Writes made. */
  writes: number;
  /** Bytes written. */
  bytes: number;
  /** Bytes checked (the whole region). */
  checked: number;
  /** First byte that differed, or -1. */
  mismatchAt: number;
  /** Seconds. */
  seconds: number;
}

/** Run `plan`'s writes on `disk` (then a flush), read the region back and check it. */
export async function verifyDisk(disk: Disk, plan: VerifyPlan): Promise<VerifyResult> {
  const t0 = performance.now();
  let bytes = 0;
  for (let k = 0; k < plan.writes.length; k++) {
    const [off, len] = plan.writes[k];
    const data = new Uint8Array(len);
    fillWrite(data, off, k);
    await disk.write(off, data);
    bytes += len;
  }
  await disk.flush();
  const mismatchAt = await checkDisk(disk, plan.expected);
  return {
    writes: plan.writes.length,
    bytes,
    checked: plan.expected.length,
    mismatchAt,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Read `want.length` bytes from offset 0 and return the first that differs, or -1. */
export async function checkDisk(disk: Disk, want: Uint8Array): Promise<number> {
  const step = 4 << 20;
  for (let at = 0; at < want.length; at += step) {
    const n = Math.min(step, want.length - at);
    const m = firstMismatch(await disk.read(at, n), want.subarray(at, at + n));
    if (m >= 0) return at + m;
  }
  return -1;
}
