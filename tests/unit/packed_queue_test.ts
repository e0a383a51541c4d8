/**
 * The packed virtqueue (virtio 1.2 §2.8): pvdrv's driver side against its device side (both written from the
 * spec), the event-suppression arithmetic against a brute-force reference, and each side against a peer that
 * breaks the rules.
 */
import assert from "assert";
import { ModelDmaAllocator } from "../../hal/dma.ts";
import { PackedQueue } from "../../drivers/virtio/packed_queue.ts";
import { PackedDeviceQueue } from "../../drivers/virtio/packed_device_queue.ts";
import { Chain, DeviceQueueError } from "../../drivers/virtio/device_queue.ts";
import { VirtqueueError } from "../../drivers/virtio/virtqueue.ts";
import { PacketPool } from "../../drivers/net/packet_pool.ts";
import { OWNER } from "../../drivers/core/buffer_pool.ts";
import {
  advance,
  EVENT_FLAGS,
  isAvail,
  isUsed,
  offWrapOf,
  packedQueueBytes,
  passesEvent,
  PDESC_F,
  wrapOf,
} from "../../drivers/virtio/packed_ring.ts";

function pair(size = 8, eventIdx = false) {
  const dma = new ModelDmaAllocator();
  let kicks = 0;
  const drv = new PackedQueue(dma, 0, size, eventIdx, () => void kicks++);
  const a = drv.addresses;
  const dev = new PackedDeviceQueue(0, size, (addr, len) => dma.resolve(addr, len), a, eventIdx);
  const r = dma.resolve(a.desc, 16 * size);
  const d16 = new Uint16Array(r.buffer, r.byteOffset, 8 * size);
  const d32 = new Uint32Array(r.buffer, r.byteOffset, 4 * size);
  const ev = dma.resolve(a.driver, 8);
  const ev16 = new Uint16Array(ev.buffer, ev.byteOffset, 4); // driver area, then device area
  return { dma, drv, dev, d16, d32, ev16, kicks: () => kicks };
}

Deno.test("packed ring: cursors, flags and the layout follow §2.8", () => {
  assert.deepEqual(packedQueueBytes(256), { driverOff: 4096, deviceOff: 4100, total: 8192 });
  assert.equal(wrapOf(0, 8), 1);
  assert.equal(wrapOf(8, 8), 0);
  assert.equal(advance(15, 1, 8), 0);
  assert.equal(advance(6, 3, 8), 9);
  assert.ok(isAvail(PDESC_F.AVAIL, 3, 8) && !isAvail(PDESC_F.AVAIL, 11, 8) && isAvail(PDESC_F.USED, 11, 8));
  assert.ok(isUsed(PDESC_F.AVAIL | PDESC_F.USED, 3, 8) && isUsed(0, 11, 8) && !isUsed(0, 3, 8));
  assert.equal(offWrapOf(3, 8), 0x8003);
  assert.equal(offWrapOf(11, 8), 3);
});

Deno.test("packed ring: the event test agrees with counting every step, across laps", () => {
  for (const size of [2, 8, 16]) {
    // Walk a free-running position through several laps; the event at `ev` (as a free-running count) is due when
    // some step from old to new lands on it, which is what passesEvent must say from the 2-lap cursors alone.
    for (let old = 0; old < 6 * size; old++) {
      for (let n = 0; n < size; n++) {
        for (let ev = old - size; ev < old + size; ev++) {
          if (ev < 0) continue;
          const lin = (x: number) => x % (2 * size);
          const want = ev >= old && ev < old + n;
          const got = passesEvent(offWrapOf(lin(ev), size), lin(old + n), lin(old), size);
          assert.equal(got, want, `size ${size} old ${old} n ${n} ev ${ev}`);
        }
      }
    }
  }
  assert.equal(passesEvent(0x7fff, 1, 0, 8), true, "a slot outside the ring: signal rather than stall");
});

Deno.test("packed queue: chains go out whole, come back out of order, over many laps", () => {
  const { dma, drv, dev } = pair(8);
  const buf = dma.alloc(4096), base = buf.deviceAddress;
  const c = new Chain();
  for (let round = 0; round < 40; round++) {
    const a = drv.addChain([{ addr: base, len: 10, write: false }, {
      addr: base + 100,
      len: 20,
      write: true,
    }]);
    const b = drv.addChain([{ addr: base + 200, len: 30, write: true }]);
    const x = drv.addChain([{ addr: base + 300, len: 5, write: false }]);
    assert.ok(a >= 0 && b >= 0 && x >= 0);
    assert.equal(dev.available(), 0, "nothing visible before the kick");
    drv.kick();
    assert.equal(dev.available(), 3);
    assert.ok(dev.peek(c, 1));
    assert.deepEqual([c.head, c.count, c.writable], [b, 1, 30]);
    const got: number[] = [];
    while (dev.take(c)) got.push(c.head);
    assert.deepEqual(got, [a, b, x]);
    // Completed in another order: b, x, a.
    dev.putUsed(b, 30);
    dev.putUsed(x, 0);
    assert.equal(drv.pending(), 2);
    assert.equal(drv.popUsed(), b);
    assert.equal(drv.lastLen, 30);
    assert.equal(drv.popUsed(), x);
    dev.putUsed(a, 7);
    assert.equal(drv.pending(), 1);
    assert.equal(drv.popUsed(), a);
    assert.equal(drv.lastLen, 7);
    assert.equal(drv.inFlight, 0);
    assert.equal(drv.freeCount, 8);
  }
});

Deno.test("packed queue: a bound pool posts by index and checks every returned id against the owner record", () => {
  const { dma, drv, dev } = pair(8);
  const pool = new PacketPool("rx", dma.alloc(8 * 2048), 8, 2048, 12);
  drv.bindPool(pool, 2048, true);
  const ids = new Uint16Array(8);
  let n = pool.takeIndicesForDevice(ids, 8);
  drv.postSlots(ids, 3);
  drv.postSlots(ids.subarray(3), n - 3);
  assert.equal(dev.available(), 0, "a batch is held back whole until the kick");
  drv.kick();
  const c = new Chain();
  const taken: number[] = [];
  while (dev.take(c)) taken.push(c.head);
  assert.equal(taken.length, 8);
  for (const id of taken.slice(0, 3)) dev.putUsed(id, 100);
  n = drv.popSlots(ids, 8);
  assert.deepEqual([...ids.subarray(0, n)], taken.slice(0, 3));
  for (let k = 0; k < n; k++) assert.equal(pool.owners[ids[k]], OWNER.APP);
  for (const id of taken.slice(3, 6)) dev.putUsed(id, 200);
  const lens = new Uint32Array(8);
  assert.equal(drv.popSlots(ids, 2, lens), 2, "max bounds a pop");
  assert.deepEqual([...ids.subarray(0, 2)], taken.slice(3, 5));
  assert.deepEqual([...lens.subarray(0, 2)], [200, 200]);
  assert.equal(drv.pending(), 1, "what a pop left stays counted");
  assert.equal(drv.popSlot(), taken[5]);
  assert.equal(drv.inFlight, 2);
  assert.equal(drv.popSlots(ids, 8), 0);
  dev.putUsed(taken[1], 100); // already returned: the device no longer holds it
  assert.equal(drv.popSlots(ids, 8), 0);
  assert.match(drv.broken!.message, /does not own/);
  assert.throws(() => drv.pending(), VirtqueueError);
});

Deno.test("packed queue: a used descriptor the driver never published is not read", () => {
  const { dma, drv, dev } = pair(8);
  const buf = dma.alloc(4096);
  dev.putUsed(5, 0); // hostile: slot 0 marked used before anything was posted
  assert.equal(drv.pending(), 0);
  drv.addChain([{ addr: buf.deviceAddress, len: 10, write: true }]);
  assert.equal(drv.pending(), 0, "queued but not published: still not read");
  drv.kick();
  assert.equal(drv.pending(), 0, "the kick made it available again");
  const c = new Chain();
  assert.ok(dev.take(c), "and the device sees it available at its next slot");
});

Deno.test("packed queue: event suppression both ways (§2.8.10)", () => {
  const { dma, drv, dev, ev16, kicks } = pair(8, true);
  const buf = dma.alloc(4096), base = buf.deviceAddress;
  const c = new Chain();
  drv.addChain([{ addr: base, len: 1, write: true }]);
  drv.kick();
  assert.equal(kicks(), 1, "ENABLE at first: notified");
  dev.take(c);
  dev.setNotify(false);
  drv.addChain([{ addr: base, len: 1, write: true }]);
  drv.kick();
  assert.equal(kicks(), 1, "DISABLE: not notified");
  dev.take(c);
  dev.publishAvailEvent(); // at the next slot (2)
  assert.equal(ev16[3], EVENT_FLAGS.DESC);
  drv.addChain([{ addr: base, len: 1, write: true }]);
  drv.kick();
  assert.equal(kicks(), 2, "passing the event slot notifies");
  drv.addChain([{ addr: base, len: 1, write: true }]);
  drv.kick();
  assert.equal(kicks(), 2, "the next one does not");
  drv.disableInterrupts();
  assert.equal(dev.putUsed(0, 1), false, "interrupts disabled by the driver");
  assert.equal(drv.enableInterrupts(), true, "enabling reports what already waits");
  assert.equal(dev.putUsed(1, 1), true);
});

Deno.test("packed device queue: a driver that breaks the rules gets a clear error", () => {
  const cases: [string, (p: ReturnType<typeof pair>) => void, RegExp][] = [
    ["indirect", ({ d16 }) => void (d16[7] |= PDESC_F.INDIRECT), /indirect/],
    ["readable after writable", ({ d16 }) => {
      d16[7] = PDESC_F.AVAIL | PDESC_F.WRITE | PDESC_F.NEXT;
      d16[15] = PDESC_F.AVAIL;
    }, /readable descriptor/],
    ["chain past the ring", ({ d16 }) => {
      for (let s = 0; s < 8; s++) d16[8 * s + 7] = PDESC_F.AVAIL | PDESC_F.NEXT;
    }, /runs past/],
  ];
  for (const [name, breakIt, want] of cases) {
    const p = pair(8);
    const buf = p.dma.alloc(4096);
    p.drv.addChain([{ addr: buf.deviceAddress, len: 10, write: false }]);
    p.drv.addChain([{ addr: buf.deviceAddress, len: 10, write: false }]);
    p.drv.kick();
    breakIt(p);
    assert.throws(
      () => p.dev.take(new Chain()),
      (e: Error) => e instanceof DeviceQueueError && want.test(e.message),
      name,
    );
  }
  // An id made available again while the device holds it.
  const p = pair(8);
  const buf = p.dma.alloc(4096);
  p.drv.addChain([{ addr: buf.deviceAddress, len: 10, write: false }]);
  p.drv.addChain([{ addr: buf.deviceAddress, len: 10, write: false }]);
  p.drv.kick();
  p.d16[8 + 6] = p.d16[6];
  assert.ok(p.dev.take(new Chain()));
  assert.throws(() => p.dev.take(new Chain()), /while the device holds it/);
  // Misaligned areas.
  const dma = new ModelDmaAllocator(), r = dma.alloc(8192), m = (a: number, l: number) => dma.resolve(a, l);
  const at = r.deviceAddress;
  assert.throws(
    () => new PackedDeviceQueue(0, 8, m, { desc: at + 8, driver: at + 4096, device: at + 4100 }, false),
    DeviceQueueError,
  );
  assert.throws(
    () => new PackedDeviceQueue(0, 8, m, { desc: at, driver: at + 4098, device: at + 4100 }, false),
    DeviceQueueError,
  );
});
