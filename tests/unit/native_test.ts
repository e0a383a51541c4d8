import assert from "assert";
import { buildNative, check64, isStale, native, NativeError } from "../../ffi/lib.ts";
import { allocHostMemory, virtToPhys } from "../../ffi/dma.ts";
import { MappedRegion } from "../../ffi/mmio.ts";
import { EventFd, EventFdIrq, irqWaiter } from "../../ffi/irq.ts";
import { ModelDmaAllocator } from "../../hal/dma.ts";
import { ModelRegion, RegionBoundsError, SubRegion, write64Split } from "../../hal/mmio.ts";

const isRoot = Deno.uid() === 0;

Deno.test("shim: volatile MMIO accessors and fences on anonymous memory", () => {
  const n = native();
  const mem = allocHostMemory(4096, false);
  try {
    const r = new MappedRegion("anon", mem.ptr, 4096);
    r.write32(0x10, 0xdeadbeef);
    assert.equal(r.read32(0x10), 0xdeadbeef);
    assert.equal(r.read16(0x10), 0xbeef);
    assert.equal(r.read8(0x13), 0xde);
    r.write8(0x11, 0x55);
    assert.equal(mem.bytes[0x11], 0x55);
    r.write16(0x20, 0xabcd);
    assert.equal(mem.bytes[0x20] | mem.bytes[0x21] << 8, 0xabcd);
    n.pvdrv_write64(mem.ptr, 0x40, 0x11223344, 0x55667788);
    assert.equal(n.pvdrv_read64_lo(mem.ptr, 0x40), 0x11223344);
    assert.equal(n.pvdrv_read64_hi(), 0x55667788);
    write64Split(r, 0x50, 0x1_2345_6789);
    assert.deepEqual([r.read32(0x50), r.read32(0x54)], [0x23456789, 1]);
    n.pvdrv_mb();
    n.pvdrv_wmb();
    n.pvdrv_rmb();
    assert.throws(() => r.read32(4094), RegionBoundsError);
    assert.throws(() => r.read32(2), RegionBoundsError); // unaligned
    assert.throws(() => r.write8(-1, 0), RegionBoundsError);
    const sub = new SubRegion(r, 0x100, 0x20, "sub");
    sub.write32(0x1c, 7);
    assert.equal(r.read32(0x11c), 7);
    assert.throws(() => sub.read32(0x20), RegionBoundsError);
    r.close();
    assert.throws(() => r.read32(0), /closed/);
  } finally {
    mem.free();
  }
});

Deno.test("bounds: no offset a device can supply reaches a native pointer unchecked", () => {
  const mem = allocHostMemory(4096, false);
  try {
    const r = new MappedRegion("anon", mem.ptr, 4096);
    const hostile = [-1, -4, 4096, 4095, 4093, 4092.5, NaN, Infinity, -Infinity, 2 ** 32, 2 ** 53, 1.5, 0.1];
    for (const off of hostile) {
      for (
        const [w, read, write] of [
          [1, (o: number) => r.read8(o), (o: number) => r.write8(o, 1)],
          [2, (o: number) => r.read16(o), (o: number) => r.write16(o, 1)],
          [4, (o: number) => r.read32(o), (o: number) => r.write32(o, 1)],
        ] as const
      ) {
        const inside = Number.isInteger(off) && off >= 0 && off + w <= 4096 && off % w === 0;
        if (inside) continue;
        assert.throws(() => read(off), RegionBoundsError, `read${8 * w} at ${off}`);
        assert.throws(() => write(off), RegionBoundsError, `write${8 * w} at ${off}`);
      }
    }
    // Windows (virtio capabilities inside a BAR) are checked when made and at every access.
    for (
      const [base, size] of [[NaN, 4], [0, NaN], [-4, 8], [4092, 8], [1.5, 4], [0, Infinity], [2 ** 53, 4]]
    ) {
      assert.throws(() => new SubRegion(r, base, size, "cap"), RangeError, `window ${base}+${size}`);
    }
    const sub = new SubRegion(r, 0x100, 0x10, "cap");
    for (const off of [-1, 0x10, 0x0e + 0.5, NaN, 0x0f]) {
      assert.throws(() => sub.read16(off), RegionBoundsError);
    }
    assert.deepEqual(mem.bytes.subarray(0, 4096).some((b) => b !== 0), false, "nothing was written");
    r.close();
  } finally {
    mem.free();
  }
});

Deno.test("model region: hooks see writes, override reads", () => {
  const writes: number[][] = [];
  const r = new ModelRegion("m", 64, {
    read: (off) => (off === 8 ? 42 : undefined),
    write: (o, w, v) => writes.push([o, w, v]),
  });
  r.write16(2, 0x1234);
  assert.equal(r.read16(2), 0x1234);
  assert.equal(r.read32(8), 42);
  assert.deepEqual(writes, [[2, 2, 0x1234]]);
});

Deno.test({
  name: "dma: locked host memory translates to physical addresses (root)",
  ignore: !isRoot,
  fn() {
    const mem = allocHostMemory(8192, false);
    try {
      const p0 = virtToPhys(mem.ptr);
      assert.ok(p0 > 0 && p0 % 4096 === 0, `phys ${p0}`);
    } finally {
      mem.free();
    }
  },
});

Deno.test("dma: model allocator resolves only mapped addresses", () => {
  const a = new ModelDmaAllocator();
  const r = a.alloc(100);
  assert.equal(r.size, 4096);
  assert.ok(r.deviceAddress >= 2 ** 32);
  a.resolve(r.deviceAddress + 4000, 96)[0] = 9;
  assert.equal(r.bytes[4000], 9);
  assert.throws(() => a.resolve(r.deviceAddress + 4000, 97), /DMA fault/);
  r.free();
  assert.throws(() => a.resolve(r.deviceAddress, 1), /DMA fault/);
});

Deno.test("irq: eventfd signals wake the shared waiter; many sources, one parked poll", async () => {
  const a = new EventFdIrq(), b = new EventFdIrq();
  try {
    assert.equal(a.poll(), false);
    const order: string[] = [];
    const pa = a.wait().then(() => order.push("a"));
    const pb = b.wait().then(() => order.push("b"));
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(order, []);
    b.efd.signal();
    await pb;
    assert.deepEqual(order, ["b"]);
    a.efd.signal();
    await pa;
    assert.deepEqual(order, ["b", "a"]);
    // A signal before the wait is not lost.
    a.efd.signal();
    await a.wait();
  } finally {
    a.close();
    b.close();
  }
  const e = new EventFd();
  const p = irqWaiter().waitReadable(e.fd);
  irqWaiter().remove(e.fd, true);
  await assert.rejects(p, /closed/);
});

Deno.test("shim: built when missing, left alone when current, rebuilt when forced", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pvdrv-shim-" }), lib = `${dir}/libpvdrv.so`;
  const before = Deno.env.get("PVDRV_LIB");
  Deno.env.set("PVDRV_LIB", lib);
  try {
    assert.equal(buildNative({ quiet: true }), lib);
    const old = new Date(Date.now() + 60_000); // newer than the source: current
    Deno.utimeSync(lib, old, old);
    buildNative({ quiet: true });
    assert.equal(Deno.statSync(lib).mtime!.getTime(), old.getTime(), "a current shim is not rebuilt");
    buildNative({ quiet: true, force: true });
    assert.notEqual(Deno.statSync(lib).mtime!.getTime(), old.getTime(), "forced, it is");
  } finally {
    if (before === undefined) Deno.env.delete("PVDRV_LIB");
    else Deno.env.set("PVDRV_LIB", before);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("check64: zero and positive results pass, negative ones are the errno", () => {
  assert.equal(check64("a zero result", 0n), 0n);
  assert.equal(check64("a result", 7n), 7n);
  assert.throws(() => check64("reading", -2n), (e: Error) => e instanceof NativeError && e.errno === 2);
});

Deno.test("isStale: a missing output, or one older than its source, is stale; a newer one is not", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pvdrv-stale-" });
  try {
    Deno.writeTextFileSync(`${dir}/src.c`, "int x;");
    assert.equal(isStale(`${dir}/missing.so`, `${dir}/src.c`), true);
    Deno.writeTextFileSync(`${dir}/out.so`, "");
    const later = new Date(Date.now() + 60_000);
    Deno.utimeSync(`${dir}/out.so`, later, later);
    assert.equal(isStale(`${dir}/out.so`, `${dir}/src.c`), false);
    const earlier = new Date(Date.now() - 60_000);
    Deno.utimeSync(`${dir}/out.so`, earlier, earlier);
    assert.equal(isStale(`${dir}/out.so`, `${dir}/src.c`), true, "an output older than its source is stale");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("shim: close and munmap run once — success is 0, a second close is EBADF", () => {
  // NEG_ERRNO once named its argument twice: every close() ran twice (the second could close a descriptor another
  // thread had just been given) and every munmap() too (unmapping what was mapped there meanwhile).
  const n = native(), fd = n.pvdrv_eventfd(0, 0);
  assert.ok(fd >= 0);
  assert.equal(n.pvdrv_close(fd), 0, "closed once, successfully");
  assert.equal(n.pvdrv_close(fd), -9, "the second close is the caller's: EBADF");
  const len = 4096n, addr = check64("mmap", n.pvdrv_mmap(len, 3, 0x22, -1, 0n)); // MAP_PRIVATE | MAP_ANONYMOUS
  assert.equal(n.pvdrv_munmap(n.pvdrv_ptr(addr), len), 0);
});
