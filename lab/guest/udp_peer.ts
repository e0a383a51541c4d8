/**
 * The kernel's side of the UDP tests, run inside a lab namespace with `deno run`: a UDP echo server, or a client
 * that sends pvdrv's test datagrams (apps/datagrams.ts) and checks every echo byte for byte. Prints one JSON line.
 *
 *   deno run -A lab/guest/udp_peer.ts echo IP:PORT COUNT
 *   deno run -A lab/guest/udp_peer.ts client LOCAL_IP IP:PORT COUNT MIN MAX [WINDOW]
 *   deno run -A lab/guest/udp_peer.ts send LOCAL_IP IP:PORT COUNT MIN MAX     (paced: a 1 ms pause every 32)
 *   deno run -A lab/guest/udp_peer.ts recv IP:PORT COUNT IDLE_MS              (every byte checked)
 * @module
 */
import { checkDatagram, writeDatagram } from "../../apps/datagrams.ts";
import { frameSize } from "../../apps/traffic.ts";

const [mode, a, b, c, d, e, f] = Deno.args;

function endpoint(s: string): { hostname: string; port: number } {
  const [hostname, port] = s.split(":");
  return { hostname, port: Number(port) };
}

if (mode === "echo") {
  const sock = Deno.listenDatagram({ transport: "udp", ...endpoint(a) });
  const count = Number(b);
  console.log("ready");
  let n = 0;
  for (; n < count;) {
    const [data, from] = await sock.receive();
    await sock.send(data, from);
    n++;
  }
  sock.close();
  console.log(JSON.stringify({ echoed: n }));
} else if (mode === "client") {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: a, port: 0 });
  const to = { transport: "udp" as const, ...endpoint(b) };
  const count = Number(c), min = Number(d), max = Number(e), window = Number(f ?? 16);
  const buf = new Uint8Array(max);
  const got = new Uint8Array(count);
  let sent = 0, echoed = 0, corrupt = 0, lost = 0, outstanding = 0;
  const t0 = performance.now();
  // Replies are read by one loop; the sender keeps `window` in flight and counts a silent window as lost.
  let wake = null as (() => void) | null;
  const reader = (async () => {
    for (;;) {
      let data: Uint8Array;
      try {
        [data] = await sock.receive();
      } catch {
        return;
      }
      const seq = checkDatagram(data, 0, data.length);
      if (seq < 0 || seq >= count || got[seq] || data.length !== frameSize(seq, min, max)) corrupt++;
      else got[seq] = 1, echoed++, outstanding--;
      wake?.();
    }
  })();
  while (sent < count || outstanding > 0) {
    while (sent < count && outstanding < window) {
      const size = frameSize(sent, min, max);
      writeDatagram(buf, sent, size);
      await sock.send(buf.subarray(0, size), to);
      sent++, outstanding++;
    }
    const before = echoed;
    await new Promise<void>((r) => {
      const t = setTimeout(() => (wake = null, r()), 2000);
      wake = () => (clearTimeout(t), wake = null, r());
    });
    if (echoed === before && outstanding > 0) lost += outstanding, outstanding = 0;
  }
  sock.close();
  await reader;
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ sent, echoed, corrupt, lost, seconds }));
} else if (mode === "send") {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: a, port: 0 });
  const to = { transport: "udp" as const, ...endpoint(b) };
  const count = Number(c), min = Number(d), max = Number(e), buf = new Uint8Array(max);
  for (let seq = 0; seq < count; seq++) {
    const size = frameSize(seq, min, max);
    writeDatagram(buf, seq, size);
    await sock.send(buf.subarray(0, size), to);
    if (seq % 32 === 31) await new Promise((r) => setTimeout(r, 1));
  }
  sock.close();
  console.log(JSON.stringify({ sent: count }));
} else if (mode === "recv") {
  const sock = Deno.listenDatagram({ transport: "udp", ...endpoint(a) });
  const count = Number(b), idle = Number(c), seen = new Uint8Array(count);
  let received = 0, corrupt = 0, duplicate = 0;
  console.log("ready");
  while (received < count) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      sock.receive(),
      new Promise<null>((res) => timer = setTimeout(() => res(null), idle)),
    ]);
    clearTimeout(timer);
    if (!r) break;
    const seq = checkDatagram(r[0], 0, r[0].length);
    if (seq < 0 || seq >= count) corrupt++;
    else if (seen[seq]) duplicate++;
    else seen[seq] = 1, received++;
  }
  sock.close();
  console.log(JSON.stringify({ received, corrupt, duplicate }));
} else {
  console.error(
    "usage: udp_peer.ts echo IP:PORT COUNT | client LOCAL_IP IP:PORT COUNT MIN MAX [WINDOW] | " +
      "send LOCAL_IP IP:PORT COUNT MIN MAX | recv IP:PORT COUNT IDLE_MS",
  );
  Deno.exit(2);
}
