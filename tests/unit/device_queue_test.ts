/**
 * The device side of the split virtqueue against pvdrv's own driver side (both written from virtio 1.2 §2.7), and
 * against a driver that breaks the rules: every check a device must make.
 */
import assert from "assert";
import { ModelDmaAllocator } from "../../hal/dma.ts";
import { SplitQueue } from "../../drivers/virtio/virtqueue.ts";
import { Chain, DeviceQueue, DeviceQueueError } from "../../drivers/virtio/device_queue.ts";
import {
  AVAIL_F_NO_INTERRUPT,
  availEntry,
  DESC,
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  DESC_SIZE,
  RING,
  usedEventOffset,
} from "../../drivers/virtio/split_ring.ts";

function pair(size = 8, eventIdx = false) {
  const dma = new ModelDmaAllocator();
  let kicks = 0;
  const drv = new SplitQueue(dma, 0, size, eventIdx, () => void kicks++);
  const a = drv.addresses;
  const dev = new DeviceQueue(0, size, (addr, len) => dma.resolve(addr, len), a, eventIdx);
  const desc = new DataView(dma.resolve(a.desc, DESC_SIZE * size).buffer, dma.resolve(a.desc, 1).byteOffset);
  const avail = new DataView(dma.resolve(a.driver, 4 + 2 * size).buffer, dma.resolve(a.driver, 1).byteOffset);
  return { dma, drv, dev, desc, avail, kicks: () => kicks };
}

Deno.test("device queue: takes the driver's chains as written, puts used, and the driver gets them back", () => {
  const { dma, drv, dev } = pair();
  const buf = dma.alloc(4096), base = Number(buf.deviceAddress);
  const h1 = drv.addChain([{ addr: base, len: 100, write: false }, {
    addr: base + 100,
    len: 50,
    write: true,
  }]);
  const h2 = drv.addChain([{ addr: base + 200, len: 60, write: true }]);
  drv.kick();
  assert.equal(dev.available(), 2);
  const c = new Chain();
  assert.ok(dev.peek(c, 1));
  assert.equal(c.head, h2);
  assert.ok(dev.take(c));
  assert.deepEqual([c.head, c.count, c.readable, c.writable], [h1, 2, 100, 50]);
  assert.deepEqual([c.addr[0], c.len[0], c.write[0], c.addr[1], c.write[1]], [
    base,
    100,
    false,
    base + 100,
    true,
  ]);
  assert.ok(dev.putUsed(c.head, 50), "no suppression asked: interrupt");
  assert.equal(drv.pending(), 1);
  assert.equal(drv.popUsed(), h1);
  assert.equal(drv.lastLen, 50);
  assert.ok(dev.take(c));
  assert.equal(dev.take(c), false);
});

Deno.test("device queue: interrupts follow NO_INTERRUPT, or used_event with EVENT_IDX (§2.7.7, §2.7.10)", () => {
  const plain = pair(8, false);
  plain.avail.setUint16(RING.FLAGS, AVAIL_F_NO_INTERRUPT, true);
  assert.equal(plain.dev.putUsed(0, 0), false);
  plain.avail.setUint16(RING.FLAGS, 0, true);
  assert.equal(plain.dev.putUsed(0, 0), true);
  const ev = pair(8, true);
  ev.avail.setUint16(usedEventOffset(8), 0, true); // interrupt once used.idx passes 0
  assert.equal(ev.dev.putUsed(0, 0), true);
  assert.equal(ev.dev.putUsed(0, 0), false, "used_event already passed");
  ev.avail.setUint16(usedEventOffset(8), 5, true);
  assert.equal(ev.dev.putUsed(0, 0), false, "2 → 3: not yet");
  ev.dev.jumpUsed(2); // used.idx 5
  assert.equal(ev.dev.putUsed(0, 0), true, "5 → 6 passes used_event 5");
  // avail_event tells the driver when to notify: after the device took what it had.
  const q = pair(8, true);
  const b = Number(q.dma.alloc(4096).deviceAddress);
  q.drv.addChain([{ addr: b, len: 10, write: true }]);
  assert.ok(q.drv.kick(), "avail_event 0 was crossed");
  q.dev.take(new Chain());
  q.dev.publishAvailEvent();
  q.drv.addChain([{ addr: b, len: 10, write: true }]);
  assert.ok(q.drv.kick(), "the device asked to be told at index 1");
  q.drv.addChain([{ addr: b, len: 10, write: true }]);
  assert.equal(q.drv.kick(), false, "and not again until it takes more");
});

Deno.test("device queue: a driver that breaks the rules is refused with the rule it broke", () => {
  const cases: [string, (q: ReturnType<typeof pair>) => void, RegExp][] = [
    [
      "avail.idx past the ring",
      (q) => q.avail.setUint16(RING.IDX, 9, true),
      /avail\.idx is 9 ahead of a ring of 8/,
    ],
    ["head out of range", (q) => {
      q.avail.setUint16(availEntry(0), 8, true);
      q.avail.setUint16(RING.IDX, 1, true);
    }, /head 8 out of range/],
    ["next out of range", (q) => {
      q.desc.setUint16(DESC.FLAGS, DESC_F_NEXT, true);
      q.desc.setUint16(DESC.NEXT, 99, true);
      q.avail.setUint16(RING.IDX, 1, true);
    }, /next 99 out of range/],
    ["a loop", (q) => {
      q.desc.setUint16(DESC.FLAGS, DESC_F_NEXT, true);
      q.desc.setUint16(DESC.NEXT, 0, true);
      q.avail.setUint16(RING.IDX, 1, true);
    }, /loops/],
    ["readable after writable", (q) => {
      q.desc.setUint16(DESC.FLAGS, DESC_F_NEXT | DESC_F_WRITE, true);
      q.desc.setUint16(DESC.NEXT, 1, true);
      q.desc.setUint16(DESC_SIZE + DESC.FLAGS, 0, true);
      q.avail.setUint16(RING.IDX, 1, true);
    }, /readable descriptor 1 after a writable one/],
    ["indirect without the feature", (q) => {
      q.desc.setUint16(DESC.FLAGS, DESC_F_INDIRECT, true);
      q.avail.setUint16(RING.IDX, 1, true);
    }, /indirect descriptor 0/],
  ];
  for (const [what, make, re] of cases) {
    const q = pair();
    make(q);
    assert.throws(
      () => q.dev.take(new Chain()),
      (e: Error) => e instanceof DeviceQueueError && re.test(e.message),
      what,
    );
  }
  // A chain past the device's byte limit.
  const dma = new ModelDmaAllocator(), drv = new SplitQueue(dma, 3, 8, false, () => {});
  const dev = new DeviceQueue(3, 8, (a, l) => dma.resolve(a, l), drv.addresses, false, 1000);
  const b = Number(dma.alloc(4096).deviceAddress);
  drv.addChain([{ addr: b, len: 600, write: true }, { addr: b + 600, len: 600, write: true }]);
  drv.kick();
  assert.throws(() => dev.take(new Chain()), /queue 3: the chain at 0 holds more than 1000 bytes/);
  assert.throws(
    () => new DeviceQueue(0, 6, (a, l) => dma.resolve(a, l), drv.addresses, false),
    /power of two/,
  );
});

Deno.test("device queue: ring areas must be aligned as §2.7 says (descriptors 16, avail 2, used 4)", () => {
  const dma = new ModelDmaAllocator(), drv = new SplitQueue(dma, 0, 8, false, () => {});
  const a = drv.addresses, mem = (x: number, l: number) => dma.resolve(x, l);
  for (
    const [what, addrs, re] of [
      [
        "descriptor table",
        { ...a, desc: a.desc + 8 },
        /descriptor table at 0x[0-9a-f]+ is not 16-byte aligned/,
      ],
      ["avail ring", { ...a, driver: a.driver + 1 }, /avail ring at 0x[0-9a-f]+ is not 2-byte aligned/],
      ["used ring", { ...a, device: a.device + 2 }, /used ring at 0x[0-9a-f]+ is not 4-byte aligned/],
    ] as const
  ) {
    assert.throws(
      () => new DeviceQueue(0, 8, mem, addrs, false),
      (e: Error) => e instanceof DeviceQueueError && re.test(e.message),
      what,
    );
  }
  assert.ok(new DeviceQueue(0, 8, mem, a, false), "the driver's own layout is aligned");
});

Deno.test("device queue: avail.idx is read once per batch, and a device resumed at a base sees nothing past it", () => {
  // Resumed at 65530 (a restarted backend, vhost-user's SET_VRING_BASE) with the driver at the same index.
  const q = pair();
  q.avail.setUint16(RING.IDX, 65530, true);
  q.dev.lastAvail = 65530;
  q.dev.usedIdx = 65530;
  const c = new Chain();
  assert.equal(q.dev.peek(c), false, "nothing is available at the base");
  assert.equal(q.dev.peek(c, 3), false);
  // The driver publishes three heads across the wrap; the device takes them, then hears of no more.
  for (let k = 0; k < 3; k++) q.avail.setUint16(availEntry((65530 + k) & 7), k, true);
  q.avail.setUint16(RING.IDX, (65530 + 3) & 0xffff, true);
  assert.ok(q.dev.peek(c, 2));
  assert.equal(c.head, 2);
  // The driver now lies (avail.idx far past the ring): the three seen are still taken; the next read refuses.
  q.avail.setUint16(RING.IDX, 65530 + 3 + 20 - 65536, true);
  for (let k = 0; k < 3; k++) {
    assert.ok(q.dev.take(c));
    assert.equal(c.head, k);
  }
  assert.throws(() => q.dev.take(c), /avail\.idx is 20 ahead of a ring of 8/);
});

Deno.test("device queue: peekSingles reads a run of one-descriptor chains of one direction, taking none", () => {
  const { dma, drv, dev } = pair(8);
  const b = Number(dma.alloc(4096).deviceAddress);
  const h = [
    drv.addChain([{ addr: b, len: 100, write: false }]),
    drv.addChain([{ addr: b + 100, len: 60, write: false }]),
    drv.addChain([{ addr: b + 200, len: 12, write: false }, { addr: b + 212, len: 60, write: false }]),
    drv.addChain([{ addr: b + 300, len: 2048, write: true }]),
    drv.addChain([{ addr: b + 400, len: 64, write: false }]),
  ];
  drv.kick();
  const heads = new Uint16Array(8), addrs = new Float64Array(8), lens = new Uint32Array(8);
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, false), 2, "stops at the two-descriptor chain");
  assert.deepEqual([...heads.subarray(0, 2)], [h[0], h[1]]);
  assert.deepEqual([...addrs.subarray(0, 2)], [b, b + 100]);
  assert.deepEqual([...lens.subarray(0, 2)], [100, 60]);
  assert.equal(dev.peekSingles(heads, addrs, lens, 1, false), 1, "no more than asked");
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, false, 1), 1, "from `ahead` on");
  assert.equal(heads[0], h[1]);
  assert.equal(dev.available(), 5, "nothing taken");
  dev.skip(2);
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, false), 0);
  const c = new Chain();
  assert.ok(dev.take(c));
  assert.equal(c.count, 2, "the chain is peek's");
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, false), 0, "a writable buffer is not a readable one");
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, true), 1);
  assert.deepEqual([heads[0], addrs[0], lens[0]], [h[3], b + 300, 2048]);
  dev.skip(1);
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, false), 1);
  dev.skip(1);
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, false), 0, "none left");
});

Deno.test("device queue: peekSingles stops before what peek refuses, and peek names the fault", () => {
  const cases: [string, (q: ReturnType<typeof pair>) => void, RegExp][] = [
    ["head out of range", (q) => q.avail.setUint16(availEntry(1), 8, true), /head 8 out of range/],
    [
      "indirect",
      (q) => q.desc.setUint16(DESC_SIZE + DESC.FLAGS, DESC_F_INDIRECT, true),
      /indirect descriptor 1/,
    ],
  ];
  for (const [what, make, re] of cases) {
    const q = pair();
    for (let k = 0; k < 3; k++) {
      q.desc.setUint32(k * DESC_SIZE + DESC.LEN, 64, true);
      q.avail.setUint16(availEntry(k), k, true);
    }
    q.avail.setUint16(RING.IDX, 3, true);
    make(q);
    const heads = new Uint16Array(8), addrs = new Float64Array(8), lens = new Uint32Array(8);
    assert.equal(q.dev.peekSingles(heads, addrs, lens, 8, false), 1, what);
    q.dev.skip(1);
    assert.throws(() => q.dev.peek(new Chain()), re, what);
  }
  // Past the device's byte limit, and avail.idx past the ring.
  const dma = new ModelDmaAllocator(), drv = new SplitQueue(dma, 3, 8, false, () => {});
  const dev = new DeviceQueue(3, 8, (a, l) => dma.resolve(a, l), drv.addresses, false, 1000);
  const b = Number(dma.alloc(4096).deviceAddress);
  drv.addChain([{ addr: b, len: 1001, write: false }]);
  drv.kick();
  const heads = new Uint16Array(8), addrs = new Float64Array(8), lens = new Uint32Array(8);
  assert.equal(dev.peekSingles(heads, addrs, lens, 8, false), 0);
  assert.throws(() => dev.take(new Chain()), /holds more than 1000 bytes/);
  const q = pair();
  q.avail.setUint16(RING.IDX, 9, true);
  assert.throws(
    () => q.dev.peekSingles(heads, addrs, lens, 8, false),
    /avail\.idx is 9 ahead of a ring of 8/,
  );
});
