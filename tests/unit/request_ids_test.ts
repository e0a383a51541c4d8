/** Request ids (drivers/core/request_ids.ts): what a device or backend echoes is checked before it is used. */
import assert from "assert";
import { RequestIds } from "../../drivers/core/request_ids.ts";

Deno.test("request ids: taken with a value, completed once, anything else is -1", () => {
  const ids = new RequestIds(4);
  const got = [ids.take(10), ids.take(11), ids.take(12), ids.take(13)];
  assert.deepEqual(new Set(got).size, 4);
  assert.ok(got.every((id) => id >= 0 && id < 4));
  assert.equal(ids.take(14), -1, "none left");
  assert.equal(ids.available, 0);
  assert.equal(ids.valueOf(got[2]), 12);
  assert.equal(ids.complete(got[2]), 12);
  assert.equal(ids.complete(got[2]), -1, "completed twice");
  assert.equal(ids.complete(4), -1, "out of range");
  assert.equal(ids.complete(-1), -1);
  assert.equal(ids.complete(0xffff), -1);
  assert.equal(ids.available, 1);
  assert.equal(ids.take(20), got[2], "the freed id is reused");
  ids.reset();
  assert.equal(ids.available, 4);
  assert.equal(ids.complete(got[0]), -1, "nothing in flight after reset");
  assert.throws(() => new RequestIds(0), RangeError);
  assert.throws(() => new RequestIds(0x10001), RangeError);
});
