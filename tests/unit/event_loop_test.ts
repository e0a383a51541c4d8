/** The one yield policy of every polling loop (hal/event_loop.ts). */
import assert from "assert";
import { EMPTY_POLLS_PER_YIELD, ITEMS_PER_YIELD, Pacer } from "../../hal/event_loop.ts";

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
