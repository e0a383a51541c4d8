/** Disk verification (apps/disk_verify.ts): the plan both lab sides share, and a check that catches one bad byte. */
import assert from "assert";
import { checkDisk, fillWrite, patternByte, verifyDisk, verifyPlan } from "../../apps/disk_verify.ts";
import { VirtioBlk } from "../../drivers/virtio/blk.ts";
import { VirtioBlkModel } from "../models/virtio_blk_device.ts";

Deno.test("verify plan: seeded, block-aligned, 1 block to 1 MiB, covering the region; the same on both sides", () => {
  const a = verifyPlan(4 << 20, 4096, 7), b = verifyPlan(4 << 20, 4096, 7), c = verifyPlan(4 << 20, 4096, 8);
  assert.deepEqual(a.writes, b.writes);
  assert.deepEqual(a.expected, b.expected);
  assert.notDeepEqual(a.writes, c.writes);
  for (const [off, len] of a.writes) {
    assert.ok(off % 4096 === 0 && len % 4096 === 0 && len >= 4096 && len <= 1 << 20 && off + len <= 4 << 20);
  }
  assert.ok(a.writes.reduce((n, [, l]) => n + l, 0) >= 12 << 20, "the region, then about twice over");
  assert.deepEqual(a.writes.slice(0, 4), [[0, 1 << 20], [1 << 20, 1 << 20], [2 << 20, 1 << 20], [
    3 << 20,
    1 << 20,
  ]]);
  // The expected bytes are what replaying the writes in order leaves.
  const replay = new Uint8Array(4 << 20);
  a.writes.forEach(([off, len], k) => fillWrite(replay.subarray(off, off + len), off, k));
  assert.deepEqual(replay, a.expected);
});

Deno.test("verify: fillWrite's sector rows are patternByte, at any start and length, past 2 GiB and 4 GiB too", () => {
  const cases: [number, number, number][] = [
    [0, 4096, 0],
    [1, 1, 5],
    [511, 1027, 9],
    [1 << 20, 1 << 20, 300],
    [(1 << 31) - 700, 5000, 77],
    [2 ** 32 - 300, 2000, 12345],
    [2 ** 33 + 512 * 3 + 17, 1500, 2],
  ];
  for (const [off, n, k] of cases) {
    const out = new Uint8Array(n).fill(0xee);
    fillWrite(out, off, k);
    for (let i = 0; i < n; i++) {
      assert.equal(out[i], patternByte(off + i, k), `write ${k} at ${off}: byte ${i}`);
    }
  }
});

Deno.test("verify: a pvdrv disk passes whatever it held before; one flipped byte is found at its offset", async () => {
  const model = new VirtioBlkModel({ sectors: 8192 });
  model.disk.fill(0xa5); // an earlier run's leftovers
  const disk = VirtioBlk.openPci(model.pci());
  const plan = verifyPlan(2 << 20, 512, 3);
  const r = await verifyDisk(disk, plan);
  assert.equal(r.mismatchAt, -1);
  assert.equal(r.checked, 2 << 20);
  assert.deepEqual(model.durable.subarray(0, 2 << 20), plan.expected, "flushed: durable on the device");
  model.disk[123457] ^= 1;
  assert.equal(await checkDisk(disk, plan.expected), 123457);
  await disk.close();
});
