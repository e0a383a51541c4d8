/** The one yield policy of every polling loop (hal/event_loop.ts). */
import assert from "assert";
import { EMPTY_POLLS_PER_YIELD, ITEMS_PER_YIELD, Pacer, PollClock } from "../../hal/event_loop.ts";

Deno.test("pacer: yields once per ITEMS_PER_YIELD items, or per EMPTY_POLLS_PER_YIELD empty polls", () => {
  const p = new Pacer();
  let yields = 0;
  for (let i = 0; i < ITEMS_PER_YIELD / 64; i++) if (p.due(64)) yields++;
  assert.equal(yields, 1, "a full stream of 64-frame batches yields once per ITEMS_PER_YIELD frames");
  for (let i = 0; i < EMPTY_POLLS_PER_YIELD - 1; i++) assert.equal(p.due(0), false);
  assert.equal(p.due(0), true, "an idle ring yields on the EMPTY_POLLS_PER_YIELD-th empty poll");
  // A yield starts both counts again.
  assert.equal(p.due(ITEMS_PER_YIELD - 1), false);
  assert.equal(p.due(0), false);
  assert.equal(p.due(1), true);
  const stalled = new Pacer(1024);
  let k = 0;
  while (!stalled.due(0)) k++;
  assert.equal(k, 1023, "a stalled sender's pacer waits its own count");
});

Deno.test("PollClock: reads the clock about every 4 ms of polling, whatever a poll costs", () => {
  const realNow = performance.now.bind(performance);
  let polls = 0, reads = 0;
  for (const usPerPoll of [1, 50]) {
    polls = reads = 0;
    performance.now = () => (reads++, polls * usPerPoll / 1000);
    try {
      const clock = new PollClock();
      let worst = 0;
      for (; polls < 1_000_000; polls++) {
        clock.advance();
        worst = Math.max(worst, polls * usPerPoll / 1000 - clock.now);
      }
      const ms = polls * usPerPoll / 1000;
      // Once adapted: 4000 polls between reads at 1 µs a poll, 80 at 50 µs; about one read per 4 ms either way.
      const want = ms / 4;
      assert.ok(
        reads > want * 0.8 && reads < want * 1.25 + 10,
        `${usPerPoll} µs/poll: ${reads} reads in ${ms} ms`,
      );
      assert.ok(worst < 4.5, `${usPerPoll} µs/poll: the clock lagged ${worst} ms`);
      polls += 123;
      assert.equal(clock.read(), polls * usPerPoll / 1000, "read() is the exact time");
      assert.equal(clock.now, polls * usPerPoll / 1000);
      const before = reads;
      assert.equal(clock.read(7), 7, "a time the caller just read is taken as is");
      assert.equal(reads, before, "without reading the clock again");
    } finally {
      performance.now = realNow;
    }
  }
});

Deno.test("driver tasks: deno.json and the lab's task runner give V8 the same young generation", async () => {
  const { DRIVER_V8_FLAGS } = await import("../../hal/event_loop.ts");
  const { denoRunArgs } = await import("../../lab/guest/tasks.ts");
  const flag = `--v8-flags=${DRIVER_V8_FLAGS.join(",")}`;
  assert.deepEqual(DRIVER_V8_FLAGS, ["--min-semi-space-size=16", "--max-semi-space-size=16"]);
  const tasks: Record<string, string> = JSON.parse(
    Deno.readTextFileSync(new URL("../../deno.json", import.meta.url)),
  ).tasks;
  // Every task that runs a driver loop (a NIC, a disk, a switch, a Xen agent) asks for it.
  for (const t of ["send", "recv", "ping", "udp", "tap", "switch", "serve", "blk", "nbd", "xen-agent"]) {
    assert.ok(tasks[t].split(" ").includes(flag), `deno task ${t}: ${tasks[t]}`);
  }
  const args = denoRunArgs("cli/ping.ts", ["x"]);
  assert.ok(args.includes(flag), "the lab runs tasks as deno.json does");
  assert.ok(
    args.indexOf(flag) < args.findIndex((a) => a.endsWith("cli/ping.ts")),
    "a flag of deno's, not the script's",
  );
});
