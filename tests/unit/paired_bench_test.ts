import assert from "assert";
import { pairedRun, pairedTable } from "../../bench/paired.ts";

Deno.test("in-process paired rounds: every case runs in every round, each ratio against its own round's baseline", () => {
  // A fake clock that each call advances by its case's cost; round r runs everything (r + 1) times slower (drift).
  let now = 0, reads = 0;
  const cases = [["c", "tx", 100, true], ["ts", "tx", 300, false], ["c rx", "rx", 50, true], [
    "ts rx",
    "rx",
    400,
    false,
  ]] as const;
  const slowdown = () => 1 + Math.floor(reads / (2 * cases.length));
  const clock = () => (reads++, now);
  const res = pairedRun(
    cases.map(([name, group, ns, baseline]) => ({
      name,
      group,
      baseline,
      fn: () => void (now += ns * slowdown() / 1e6),
    })),
    3,
    1,
    clock,
  );
  assert.deepEqual(res.map((r) => r.name), ["c", "ts", "c rx", "ts rx"]);
  assert.deepEqual(res.map((r) => r.ratios.length), [3, 3, 3, 3], "one ratio per round");
  for (const r of res[1].ratios) assert.ok(Math.abs(r - 3) < 1e-6, `ts/c is 3 whatever the drift (${r})`);
  for (const r of res[3].ratios) assert.ok(Math.abs(r - 8) < 1e-6, `rx against the rx baseline (${r})`);
  assert.ok(Math.abs(res[0].ns - 200) < 1e-6, "ns per call: the median round (the second, twice as slow)");
  assert.match(pairedTable(res), /\| tx \| ts \| 600 \| 3\.00× \(3\.00–3\.00\) \|/);
  assert.match(pairedTable(res), /\| tx \| c \| 200 \| 1 \(baseline\) \|/);
});

Deno.test("in-process paired rounds: a case that comes out short stops the run with its error", () => {
  const cases = [{ name: "c", group: "g", baseline: true, fn() {} }, {
    name: "bad",
    group: "g",
    fn() {
      throw new Error("TX batch short");
    },
  }];
  assert.throws(() => pairedRun(cases, 2, 1), /TX batch short/);
});
