import assert from "assert";
import { copyBytes, WORD_COPY_MAX } from "../../drivers/core/copy.ts";

Deno.test("copyBytes: every length and alignment copies exactly the range, by words or by bytes", () => {
  const src = new Uint8Array(4096).map((_, i) => (i * 7 + 3) & 0xff), src32 = new Uint32Array(src.buffer);
  const dst = new Uint8Array(4096), dst32 = new Uint32Array(dst.buffer);
  const lens = [
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    12,
    13,
    60,
    64,
    65,
    WORD_COPY_MAX - 1,
    WORD_COPY_MAX,
    WORD_COPY_MAX + 1,
    1514,
  ];
  for (const len of lens) {
    for (let from = 0; from < 8; from++) {
      for (let at = 0; at < 8; at++) {
        for (const words of [true, false]) {
          dst.fill(0xee);
          copyBytes(src, words ? src32 : null, 100 + from, dst, words ? dst32 : null, 200 + at, len);
          const where = `len ${len}, from ${from}, at ${at}, words ${words}`;
          assert.deepEqual(
            dst.subarray(200 + at, 200 + at + len),
            src.subarray(100 + from, 100 + from + len),
            where,
          );
          assert.ok(dst.subarray(0, 200 + at).every((b) => b === 0xee), `${where}: nothing before`);
          assert.ok(dst.subarray(200 + at + len).every((b) => b === 0xee), `${where}: nothing after`);
        }
      }
    }
  }
});
