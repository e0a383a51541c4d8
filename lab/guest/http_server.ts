/**
 * The kernel-driver side of the HTTP benchmark: the same GET /bytes/N handler `deno task serve` has, on an address
 * the kernel's own interface holds. Prints "listening" when ready; runs until killed.
 *
 *   deno run -A lab/guest/http_server.ts HOST PORT
 * @module
 */
import { bytesResponse } from "../../apps/pattern_http.ts";

const [hostname, port] = Deno.args;
Deno.serve({ hostname, port: Number(port), onListen: () => console.log("listening") }, (req) => {
  return bytesResponse(new URL(req.url).pathname) ?? new Response("not found\n", { status: 404 });
});
