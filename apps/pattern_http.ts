/**
 * The fixed byte pattern `deno task serve` answers GET /bytes/N with (and the benchmark's kernel-side server too),
 * so a client can check what it fetched without a copy of the file.
 * @module
 */

/** Byte `i` of GET /bytes/N. */
export function servedByte(i: number): number {
  return (i * 7 + (i >>> 8)) & 255;
}

/** N bytes of {@link servedByte}, in 64 KiB chunks. */
export function patternStream(n: number): ReadableStream<Uint8Array> {
  let off = 0;
  return new ReadableStream({
    pull(c) {
      if (off >= n) return c.close();
      const len = Math.min(65536, n - off), chunk = new Uint8Array(len);
      for (let i = 0; i < len; i++) chunk[i] = servedByte(off + i);
      off += len;
      c.enqueue(chunk);
    },
  });
}

/** The response to GET /bytes/N, or null when `path` is not one (400 above 1 GiB). */
export function bytesResponse(path: string): Response | null {
  const m = path.match(/^\/bytes\/(\d{1,10})$/);
  if (!m) return null;
  const n = Number(m[1]);
  if (n > 2 ** 30) return new Response("at most 1 GiB\n", { status: 400 });
  return new Response(patternStream(n), { headers: { "content-length": String(n) } });
}
