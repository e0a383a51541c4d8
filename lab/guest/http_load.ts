/**
 * A small HTTP load generator for the network benchmark: CONCURRENCY loops of keep-alive GETs of URL for SECONDS,
 * each body read and its length checked. Prints one JSON line: requests, errors, requests per second.
 *
 *   deno run -A lab/guest/http_load.ts URL SECONDS CONCURRENCY BYTES
 * @module
 */
const [url, seconds, concurrency, bytes] = Deno.args;
const end = performance.now() + Number(seconds) * 1000, want = Number(bytes);
let requests = 0, errors = 0;
const t0 = performance.now();
await Promise.all(Array.from({ length: Number(concurrency) }, async () => {
  while (performance.now() < end) {
    try {
      const r = await fetch(url);
      const b = await r.arrayBuffer();
      if (r.ok && b.byteLength === want) requests++;
      else errors++;
    } catch {
      errors++;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}));
const secs = (performance.now() - t0) / 1000;
console.log(JSON.stringify({ requests, errors, seconds: secs, rps: requests / secs }));
