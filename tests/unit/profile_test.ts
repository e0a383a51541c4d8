/** bench/profile.ts: self time per function from a V8 CPU profile, and a real profile of a busy function. */
import assert from "assert";
import { allocationProfiled, allocationSites, profiled, profileTable, selfTime } from "../../lab/profile.ts";

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

Deno.test("profile: bytes allocated are summed per call site, largest first", () => {
  const f = (functionName: string, url = "", lineNumber = 0) => ({ functionName, url, lineNumber });
  const sites = allocationSites({
    head: {
      callFrame: f("(root)"),
      selfSize: 0,
      children: [
        { callFrame: f("expect", "file:///x/net/pinger.ts", 49), selfSize: 300, children: [] },
        {
          callFrame: f("loop", "file:///x/net/host.ts", 10),
          selfSize: 100,
          children: [{ callFrame: f("expect", "file:///x/net/pinger.ts", 49), selfSize: 500, children: [] }],
        },
        { callFrame: f("Promise"), selfSize: 200, children: [] },
      ],
    },
  });
  assert.deepEqual(sites, [
    { where: "expect pinger.ts:50", bytes: 800 },
    { where: "Promise", bytes: 200 },
    { where: "loop host.ts:11", bytes: 100 },
  ]);
});

Deno.test("profile: an allocating function shows up in a real allocation profile", async () => {
  function allocateForProfile(n: number): number {
    const a: { i: number }[] = [];
    for (let i = 0; i < n; i++) a.push({ i });
    return a.length; // dropped at once: the profile counts what was collected too
  }
  const p = await allocationProfiled(async () => {
    for (let k = 0; k < 50; k++) {
      allocateForProfile(2000);
      await null;
    }
  });
  const sites = allocationSites(p, 3);
  assert.equal(sites[0].where.split(" ")[0], "allocateForProfile", JSON.stringify(sites));
  assert.ok(sites[0].bytes > 50 * 2000 * 8, `${sites[0].bytes} B`);
});
