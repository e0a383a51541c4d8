/**
 * `deno task build`: compile the native shim into build/libpvdrv.so.
 * @module
 */
import { buildNative } from "../ffi/lib.ts";
import { ensureCompiler } from "../lab/outer/guest_image.ts";
import { parse, runMain } from "./lib/common.ts";

await runMain("usage: deno task build [--force]", async () => {
  const { values } = parse(Deno.args, { force: { type: "boolean" } }, false);
  await ensureCompiler();
  console.log(buildNative({ force: values.force ?? true }));
});
