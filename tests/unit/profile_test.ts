/** bench/profile.ts: self time per function from a V8 CPU profile, and a real profile of a busy function. */
import assert from "assert";
import { profiled, profileTable, selfTime } from "../../lab/profile.ts";

Deno.test("profile: self time is counted per function from the samples, largest first", () => {
  const node = (id: number, functionName: string, url = "", lineNumber = 0) => ({
    id,
    callFrame: { functionName, url, lineNumber },
  });
  const rows = selfTime({
    nodes: [
      { ...node(1, "(root)"), children: [2, 3] },
      node(2, "post", "file:///x/drivers/virtio/net.ts", 320),
      node(3, ""),
      node(4, "post", "file:///x/drivers/virtio/net.ts", 320),
    ],
    samples: [2, 2, 3, 4, 1, 2, 9],
  });
  const want = [["post net.ts:321", 4], ["(anonymous) ← (root)", 1], ["(root)", 1]];
  assert.deepEqual(rows.map((r) => [r.where, r.samples]), want, "ties in the order first sampled");
  assert.equal(rows[0].share, 4 / 7);
  assert.match(profileTable(rows), /\| 57\.1% \| post net\.ts:321 \|/);
});

Deno.test("profile: a busy function shows up in a real profile", async () => {
  function spinForProfile(ms: number): number {
    const end = Date.now() + ms;
    let x = 0;
    while (Date.now() < end) x = (x * 31 + 7) | 0;
    return x;
  }
  const p = await profiled(() => Promise.resolve(spinForProfile(200)));
  const rows = selfTime(p, 5);
  assert.ok(rows.some((r) => r.where.startsWith("spinForProfile") && r.share > 0.2), JSON.stringify(rows));
});
