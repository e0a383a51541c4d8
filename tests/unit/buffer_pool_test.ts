/**
 * The buffer pool's batch steps against its one-at-a-time ones: a batch take fills the caller's array where asked,
 * a batch release (releaseOwned over putRun) gives back runs from several pools, refuses what put refuses with the
 * buffers before it back, and frees a retired pool's memory with the last buffer.
 */
import assert from "assert";
import { releaseOwned } from "../../drivers/core/buffer_pool.ts";
import { type PacketBuffer, PacketPool } from "../../drivers/net/packet_pool.ts";

function pool(name: string, n = 8): PacketPool & { freed: () => boolean } {
  let freed = false;
  const p = new PacketPool(
    name,
    { bytes: new Uint8Array(n * 256), free: () => void (freed = true) },
    n,
    256,
    0,
  );
  return Object.assign(p, { freed: () => freed });
}

Deno.test("buffer pool: takeMany fills from the index asked and resets each buffer", () => {
  const p = pool("a");
  const out: PacketBuffer[] = new Array(6);
  assert.equal(p.takeMany(out, 2), 2);
  out[0].length = 99;
  p.put(out[0], "app");
  assert.equal(p.takeMany(out, 4, 2), 4);
  assert.equal(out[1].pool, p);
  assert.equal(new Set(out.slice(1, 6)).size, 5, "five different buffers, out[1] kept");
  assert.ok(out.slice(2, 6).every((b) => b.length === 0 && p.owner(b) === "app"));
  assert.equal(p.available, 3);
  assert.equal(p.takeMany(out, 6, 0), 3, "no more than are free");
});

Deno.test("buffer pool: releaseOwned gives back runs from each pool, refusing as put refuses", () => {
  const a = pool("a"), b = pool("b"), c = pool("c");
  const owned = new WeakSet([a, b]);
  const bufs: PacketBuffer[] = new Array(8);
  a.takeMany(bufs, 3);
  b.takeMany(bufs, 2, 3);
  a.takeMany(bufs, 3, 5);
  releaseOwned(bufs, 8, owned, "dev", "nic");
  assert.equal(a.available, 8);
  assert.equal(b.available, 8);
  // A buffer given back twice stops the batch there: those before it are back, those after it are not.
  a.takeMany(bufs, 4);
  releaseOwned(bufs, 1, owned, "dev", "nic", 0);
  assert.throws(() => releaseOwned(bufs, 4, owned, "dev", "nic", 0), /buffer \d returned twice/);
  assert.equal(a.available, 5, "the first (already back) is refused before any other moved");
  releaseOwned(bufs, 4, owned, "dev", "nic", 1);
  assert.equal(a.available, 8);
  // Refused mid-run: the ones before it are back.
  a.takeMany(bufs, 3);
  bufs[3] = bufs[1];
  assert.throws(() => releaseOwned(bufs, 4, owned, "dev", "nic"), /buffer \d returned twice/);
  assert.equal(a.available, 8, "the three before the repeat went back");
  // From a pool not the device's: refused before it is touched.
  const x: PacketBuffer[] = new Array(2);
  a.takeMany(x, 1);
  c.takeMany(x, 1, 1);
  assert.throws(() => releaseOwned(x, 2, owned, "dev", "nic"), /pool c is not ours/);
  assert.equal(a.available, 8, "the run before it went back");
  assert.equal(c.available, 7);
});

Deno.test("buffer pool: a retired pool's memory goes with the last buffer the batch gives back", () => {
  const a = pool("a");
  const bufs: PacketBuffer[] = new Array(3);
  a.takeMany(bufs, 3);
  a.retire();
  assert.equal(a.freed(), false, "three buffers still held");
  releaseOwned(bufs, 2, new WeakSet([a]), "dev", "nic");
  assert.equal(a.freed(), false);
  releaseOwned(bufs, 3, new WeakSet([a]), "dev", "nic", 2);
  assert.equal(a.freed(), true);
});

Deno.test("buffer pool: putRun frees what the holder named holds, and refuses what it does not", () => {
  const a = pool("a");
  const bufs: PacketBuffer[] = new Array(4);
  a.takeMany(bufs, 4);
  a.toDeviceMany(bufs, 4);
  assert.throws(() => a.putRun(bufs, 0, 4), /returned twice or by the wrong owner/, "the device holds them");
  assert.equal(a.available, 4);
  assert.equal(a.putRun(bufs, 0, 3, "device"), 3);
  assert.equal(a.available, 7);
  assert.equal(a.owner(bufs[3]), "device");
  const dup = [bufs[3], bufs[3]];
  assert.throws(() => a.toDeviceMany([bufs[0]], 1), /not held by the application/, "a free buffer");
  a.toApp(bufs[3]);
  assert.throws(() => a.toDeviceMany(dup, 2), /not held by the application/, "one buffer twice in a batch");
  assert.equal(a.owner(bufs[3]), "app", "refused whole: none handed over");
});

Deno.test("buffer pool: audit finds a buffer freed twice, and takeIndices / putIds keep the records whole", () => {
  const p = pool("a");
  const ids = new Uint16Array(8);
  assert.equal(p.audit(), null);
  assert.equal(p.takeIndices(ids, 3), 3);
  assert.ok([...ids.subarray(0, 3)].every((i) => p.owners[i] === 1), "the application's");
  assert.equal(p.audit(), null);
  assert.throws(() => p.putIds(Uint16Array.of(ids[0], 60000), 0, 2), /not a buffer index/);
  assert.equal(p.owners[ids[0]], 0, "the one before the refused index is back");
  assert.throws(() => p.putIds(Uint16Array.of(ids[0]), 0, 1), /returned twice/);
  p.putIds(ids, 1, 3);
  assert.equal(p.audit(), null);
  assert.equal(p.available, 8);
  // What a driver bug would do: a device buffer recycled twice puts it on the free list twice.
  assert.equal(p.takeIndicesForDevice(ids, 2), 2);
  p.recycle(ids[0]);
  p.recycle(ids[0]);
  assert.match(p.audit() ?? "", /buffer \d is on the free list twice/);
  p.recycle(ids[1]);
  p.recycle(ids[1]);
  assert.match(p.audit() ?? "", /10 on a free list of 8/);
});
