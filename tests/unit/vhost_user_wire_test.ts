/** vhost-user's messages (drivers/virtio/vhost_user_wire.ts): what the writers make, the readers take back, and every
 * malformed field a front-end could send refused by name (the CVE classes: header and size, fd counts, vring
 * index bits, region ranges that wrap or overlap). */
import assert from "assert";
import {
  type MemRegion,
  readHeader,
  readMemTable,
  readU64,
  readVringAddr,
  readVringFd,
  readVringState,
  VHOST_USER,
  VHOST_USER_FLAG,
  VHOST_USER_HEADER,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_VRING_NOFD,
  writeHeader,
  writeMemTable,
  writeU64,
  writeVringAddr,
  writeVringState,
} from "../../drivers/virtio/vhost_user_wire.ts";
import { isPvdrvError } from "../../hal/errors.ts";

const refused = (re: RegExp) => (e: unknown) =>
  isPvdrvError(e, "vhost-user") && re.test((e as Error).message);

Deno.test("vhost-user wire: header, u64, vring state and address round-trip through writer and reader", () => {
  const h = new Uint8Array(VHOST_USER_HEADER);
  writeHeader(h, {
    request: VHOST_USER.SET_VRING_ADDR,
    flags: VHOST_USER_FLAG.VERSION | VHOST_USER_FLAG.NEED_REPLY,
    size: 40,
  });
  assert.deepEqual(readHeader(h), { request: 9, flags: 0x9, size: 40 });
  assert.deepEqual([...h], [9, 0, 0, 0, 9, 0, 0, 0, 40, 0, 0, 0], "little-endian u32s");
  const u = new Uint8Array(8);
  writeU64(u, 0x1_4000_0000n | (1n << 30n));
  assert.equal(readU64(u), 0x1_4000_0000n | (1n << 30n));
  const s = new Uint8Array(8);
  writeVringState(s, { index: 1, num: 256 });
  assert.deepEqual(readVringState(s), { index: 1, num: 256 });
  const a = new Uint8Array(40);
  const addr = {
    index: 1,
    flags: 0,
    desc: 0x7f00_0000_1000n,
    used: 0x7f00_0000_3000n,
    avail: 0x7f00_0000_2000n,
    log: 0n,
  };
  writeVringAddr(a, addr);
  assert.deepEqual(readVringAddr(a), addr);
});

Deno.test("vhost-user wire: headers of another version or with a huge payload are refused", () => {
  const h = new Uint8Array(VHOST_USER_HEADER);
  writeHeader(h, { request: 1, flags: 0x2, size: 0 });
  assert.throws(() => readHeader(h), refused(/version 2, not 1/));
  writeHeader(h, { request: 5, flags: 1, size: VHOST_USER_MAX_PAYLOAD + 1 });
  assert.throws(() => readHeader(h), refused(/payload of 4097 bytes is too large/));
  assert.throws(() => readHeader(h.subarray(0, 11)), refused(/header is 12 bytes, got 11/));
  assert.throws(() => readVringState(new Uint8Array(7)), refused(/vring state payload is 8 bytes, got 7/));
  assert.throws(
    () => readVringAddr(new Uint8Array(48)),
    refused(/vring address payload is 40 bytes, got 48/),
  );
});

Deno.test("vhost-user wire: KICK/CALL/ERR carry an index and a no-fd bit, and nothing else", () => {
  const u = new Uint8Array(8);
  writeU64(u, 3n);
  assert.deepEqual(readVringFd(u, "kick"), { index: 3, noFd: false });
  writeU64(u, BigInt(VHOST_USER_VRING_NOFD | 1));
  assert.deepEqual(readVringFd(u, "call"), { index: 1, noFd: true });
  writeU64(u, 0x200n | 1n);
  assert.throws(() => readVringFd(u, "err"), refused(/err: unknown bits in 0x201/));
});

Deno.test("vhost-user wire: a memory table is checked against its descriptors, 2^64 and overlaps", () => {
  const p = new Uint8Array(8 + 32 * 8);
  const region = (guestAddr: bigint, size: bigint, userAddr: bigint, mmapOffset = 0n): MemRegion => ({
    guestAddr,
    size,
    userAddr,
    mmapOffset,
  });
  const two = [
    region(0n, 0xa0000n, 0x7f00_0000_0000n),
    region(0x100000n, 0x3ff00000n, 0x7f00_0010_0000n, 0x100000n),
  ];
  const n = writeMemTable(p, two);
  assert.equal(n, 72);
  assert.deepEqual(readMemTable(p.subarray(0, n), 2), two);
  assert.throws(() => readMemTable(p.subarray(0, n), 1), refused(/2 regions came with 1 descriptors/));
  assert.throws(
    () => readMemTable(p.subarray(0, n + 8), 2),
    refused(/memory table payload is 72 bytes, got 80/),
  );
  const bad = (regions: MemRegion[], re: RegExp) => {
    const k = writeMemTable(p, regions);
    assert.throws(() => readMemTable(p.subarray(0, k), regions.length), refused(re));
  };
  bad([region(0n, 0n, 0x1000n)], /region 0 is empty/);
  bad([region(2n ** 64n - 0x1000n, 0x2000n, 0x1000n)], /region 0: guest range wraps past 2\^64/);
  bad([region(0n, 0x2000n, 2n ** 64n - 0x1000n)], /region 0: user range wraps/);
  bad([region(0n, 0x2000n, 0x1000n, 2n ** 64n - 1n)], /region 0: mmap range wraps/);
  bad(
    [region(0n, 0x2000n, 0x10000n), region(0x1000n, 0x2000n, 0x20000n)],
    /regions 0 and 1 overlap in guest memory/,
  );
  bad(
    [region(0n, 0x2000n, 0x10000n), region(0x4000n, 0x2000n, 0x11000n)],
    /regions 0 and 1 overlap in QEMU's memory/,
  );
  const nine = Array.from({ length: 9 }, (_, i) => region(BigInt(i) << 20n, 0x1000n, BigInt(i + 1) << 20n));
  const big = new Uint8Array(8 + 32 * 9);
  writeMemTable(big, nine);
  assert.throws(() => readMemTable(big, 9), refused(/9 regions \(1\.\.8\)/));
  new DataView(p.buffer).setUint32(0, 0, true);
  assert.throws(() => readMemTable(p.subarray(0, 8), 0), refused(/0 regions/));
});

Deno.test("vhost memory: copies find their region whichever was used last, and nothing outside any", async () => {
  const { VhostMemory } = await import("../../drivers/virtio/vhost_memory.ts");
  const { LINUX_FD_OPS } = await import("../../ffi/unix.ts");
  const maps: Uint8Array[] = [];
  const ops = {
    ...LINUX_FD_OPS,
    map: (_fd: number, size: number) => {
      const bytes = new Uint8Array(size);
      maps.push(bytes);
      return { bytes, unmap() {} };
    },
  };
  // Guest 0x0000..0x1000 and 0x3000..0x5000, with a hole between.
  const mem = new VhostMemory(
    [
      { guestAddr: 0n, size: 0x1000n, userAddr: 0x10000n, mmapOffset: 0n },
      { guestAddr: 0x3000n, size: 0x2000n, userAddr: 0x20000n, mmapOffset: 0n },
    ],
    [3, 4],
    ops,
  );
  maps[0].fill(1);
  maps[1].fill(2);
  const dst = new Uint8Array(16);
  for (const [addr, want] of [[0x10, 1], [0x3ff0, 2], [0xff0, 1], [0x4ff0, 2]] as const) {
    mem.copyOut(addr, 16, dst, 0);
    assert.deepEqual([...new Set(dst)], [want], `0x${addr.toString(16)}`);
  }
  // Right after the second region was used: a range past its end, in the hole, straddling the first's end.
  for (const addr of [0x4ff1, 0x2000, 0xff8, 0x2ff8]) {
    mem.copyOut(0x3000, 16, dst, 0);
    assert.throws(() => mem.copyOut(addr, 16, dst, 0), /outside the shared memory/, `0x${addr.toString(16)}`);
    assert.throws(() => mem.copyIn(addr, dst, 0, 16), /outside the shared memory/);
  }
  mem.copyIn(0x20, new Uint8Array(4).fill(9), 0, 4);
  assert.deepEqual([...maps[0].subarray(0x1f, 0x25)], [1, 9, 9, 9, 9, 1]);
  mem.release();
  assert.throws(() => mem.copyOut(0x10, 16, dst, 0), /outside the shared memory/, "nothing after release");
});
