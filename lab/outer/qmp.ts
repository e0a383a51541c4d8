/**
 * QEMU's monitor (QMP) for a lab run, and the request folder the guest uses to reach it: a guest test writes
 * `/out/qmp-requests/NAME.json` (`{ "execute": …, "arguments": … }`); the outer side runs it on the run's QMP
 * socket and writes `NAME.done` with QEMU's answer. So a test can ask for what only the outside can do — grow a
 * disk with `block_resize` — and wait for it.
 * @module
 */

/** The folder (inside the run's /out) that carries requests. */
export const QMP_REQUESTS = "qmp-requests";

/** Run one QMP command on the socket at `path`: the greeting, qmp_capabilities, then `cmd`; QEMU's answer. */
export async function qmp(path: string, cmd: Record<string, unknown>): Promise<unknown> {
  const conn = await Deno.connect({ transport: "unix", path });
  const dec = new TextDecoder();
  let buf = "";
  const line = async (): Promise<Record<string, unknown>> => {
    while (true) {
      const i = buf.indexOf("\n");
      if (i >= 0) {
        const l = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const m = JSON.parse(l);
        if (!("event" in m)) return m;
        continue;
      }
      const b = new Uint8Array(4096);
      const n = await conn.read(b);
      if (n === null) throw new Error("QMP closed the connection");
      buf += dec.decode(b.subarray(0, n));
    }
  };
  try {
    await line(); // greeting
    await conn.write(new TextEncoder().encode(JSON.stringify({ execute: "qmp_capabilities" }) + "\n"));
    await line();
    await conn.write(new TextEncoder().encode(JSON.stringify(cmd) + "\n"));
    return await line();
  } finally {
    conn.close();
  }
}

/** What the outer side does itself for a request named `pvdrv-…` (kill and restart the host's switch). */
export type LocalRequests = Record<string, (args?: Record<string, unknown>) => Promise<unknown>>;

/**
 * Serve the guest's requests in `outDir` on the QMP socket `path` until `stop()`; an `execute` named in `local` is
 * done by the outer side instead of QEMU.
 */
export function serveQmpRequests(
  outDir: string,
  path: string,
  local: LocalRequests = {},
): { stop(): Promise<void> } {
  const dir = `${outDir}/${QMP_REQUESTS}`;
  Deno.mkdirSync(dir, { recursive: true });
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const e of Deno.readDirSync(dir)) {
        if (!e.name.endsWith(".json")) continue;
        const base = `${dir}/${e.name.slice(0, -5)}`;
        let answer: unknown;
        try {
          const cmd = JSON.parse(Deno.readTextFileSync(`${dir}/${e.name}`));
          const own = local[String(cmd.execute)];
          answer = own ? { return: await own(cmd.arguments) } : await qmp(path, cmd);
        } catch (err) {
          answer = { error: { desc: (err as Error).message } };
        }
        Deno.removeSync(`${dir}/${e.name}`);
        Deno.writeTextFileSync(`${base}.done`, JSON.stringify(answer));
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop.catch(() => {});
    },
  };
}
