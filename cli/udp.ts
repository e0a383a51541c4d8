/**
 * `deno task udp <nic> echo|send|recv`: UDP over a pvdrv NIC's IPv4 host, with test datagrams checked byte for byte.
 * @module
 */
import { openNic } from "../drivers/table.ts";
import type { Nic } from "../drivers/net/nic.ts";
import { ipText } from "../net/ipv4.ts";
import { checkDatagram, echoRun, MIN_DATAGRAM, recvRun, writeDatagram } from "../apps/datagrams.ts";
import { frameSize } from "../apps/traffic.ts";
import { tick } from "../hal/event_loop.ts";
import { intArg, parse, runMain, UsageError } from "./common.ts";
import { mtuArg, NIC_OPTIONS, NIC_USAGE, nicArg } from "./nic_args.ts";
import { endpointArg, HOST_OPTIONS, HOST_USAGE, hostArgs, hostIrqArg, startHost } from "./host_args.ts";

const USAGE = `usage: deno task udp <nic> echo|send|recv [options]
  echo              answer every datagram to --port with the same bytes (until --count or Ctrl-C)
  send IP:PORT      send --count test datagrams (sequence number + pattern); with --echo, check each reply
  recv              receive test datagrams on --port and check every byte
  --port N          local port (echo, recv: default 7; send: ephemeral)
  --count N         datagrams (send: default 1000; echo, recv: default 0 = no limit)
  --size N | --sizes MIN-MAX   payload bytes (default 64; at least ${MIN_DATAGRAM})
  --echo            send: expect each datagram back, byte for byte
  --window N        send --echo: datagrams in flight (default 32)
  --timeout MS      send --echo: wait per window; recv: stop after this long idle (default 2000)
${HOST_USAGE}
${NIC_USAGE.replace("(default poll)", "(default: interrupts)")}`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    port: { type: "string" },
    count: { type: "string" },
    size: { type: "string" },
    sizes: { type: "string" },
    echo: { type: "boolean" },
    window: { type: "string" },
    timeout: { type: "string" },
    ...HOST_OPTIONS,
    ...NIC_OPTIONS,
  });
  if (values.help) return void console.log(USAGE);
  const [nicName, mode, target, ...rest] = positionals;
  if (rest.length) throw new UsageError(`unexpected argument '${rest[0]}'`);
  if (!nicName || !mode) throw new UsageError("expected a NIC and a mode: echo, send or recv");
  if (!["echo", "send", "recv"].includes(mode)) {
    throw new UsageError(`mode must be echo, send or recv, got '${mode}'`);
  }
  if (mode === "send" && !target) throw new UsageError("send needs a destination IP:PORT");
  if (mode !== "send" && target) throw new UsageError(`unexpected argument '${target}'`);
  const name = nicArg([nicName]);
  const to = mode === "send" ? endpointArg("the destination", target) : null;
  const port = intArg("port", values.port, mode === "send" ? 0 : 7, mode === "send" ? 0 : 1, 65535);
  const count = intArg("count", values.count, mode === "send" ? 1000 : 0, mode === "send" ? 1 : 0, 2 ** 31);
  if (values.size !== undefined && values.sizes !== undefined) {
    throw new UsageError("give --size or --sizes, not both");
  }
  let min = intArg("size", values.size, 64, MIN_DATAGRAM, 65000), max = min;
  if (values.sizes !== undefined) {
    const m = values.sizes.match(/^(\d+)-(\d+)$/);
    if (!m || Number(m[1]) < MIN_DATAGRAM || Number(m[1]) > Number(m[2])) {
      throw new UsageError(
        `--sizes must be MIN-MAX with ${MIN_DATAGRAM} <= MIN <= MAX, got '${values.sizes}'`,
      );
    }
    min = Number(m[1]), max = Number(m[2]);
  }
  const window = intArg("window", values.window, 32, 1, 4096);
  const timeoutMs = intArg("timeout", values.timeout, 2000, 1, 3_600_000);
  const addr = hostArgs(values);
  const irq = hostIrqArg(values.irq, name);
  const nic: Nic = await openNic(name, { irq, mtu: mtuArg(values.mtu, name) });
  let stopping = false;
  try {
    if (max > nic.mtu - 28) {
      throw new UsageError(`datagrams can be at most ${nic.mtu - 28} bytes (MTU ${nic.mtu})`);
    }
    const host = await startHost(nic, addr, irq);
    // Ctrl-C or SIGTERM ends the run like --count would: the summary is printed, the NIC closed.
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => void (stopping = true));
    }
    const sock = host.udp(port);
    const stop = () => stopping;
    let result: Record<string, unknown>, ok: boolean;
    if (mode === "echo") {
      let echoed = 0, bad = 0;
      let done: () => void = () => {};
      const finished = new Promise<void>((r) => done = r);
      sock.onDatagram = (d) => {
        if (checkDatagram(d.bytes, d.offset, d.length) < 0) bad++; // not a test datagram: echoed all the same
        if (sock.reply(d)) echoed++;
        if (count && echoed >= count) done();
      };
      console.error(`udp: echoing on ${host.address.split("/")[0]}:${port}`);
      const t = setInterval(() => stopping && done(), 100);
      await finished;
      clearInterval(t);
      result = { mode, port, echoed, nonTest: bad };
      ok = true;
    } else if (mode === "send") {
      if (values.echo) {
        const r = await echoRun(host, sock, to!.ip, to!.port, { count, min, max, window, timeoutMs, stop });
        result = { mode, to: `${ipText(to!.ip)}:${to!.port}`, ...r };
        ok = r.echoed === count && r.corrupt === 0;
      } else {
        const buf = new Uint8Array(max);
        let sent = 0;
        for (let seq = 0; seq < count && !stopping; seq++) {
          const size = frameSize(seq, min, max);
          writeDatagram(buf, seq, size);
          while (!sock.sendBytes(buf, 0, size, to!.ip, to!.port)) await tick(); // ring full: completions free it
          sent++;
          if (sent % 256 === 0) await tick();
        }
        result = { mode, to: `${ipText(to!.ip)}:${to!.port}`, sent };
        ok = sent === count;
      }
    } else {
      console.error(`udp: receiving on ${host.address.split("/")[0]}:${port}`);
      const r = await recvRun(sock, { count, idleMs: timeoutMs, stop });
      result = { mode, port, ...r };
      ok = r.corrupt === 0 && (count === 0 || r.received === count);
    }
    result.host = { ...host.stats };
    await host.close();
    if (values.json) console.log(JSON.stringify(result));
    else {console.log(
        Object.entries(result).filter(([k]) => k !== "host").map(([k, v]) => `${k} ${v}`).join(", "),
      );}
    return ok ? 0 : 1;
  } finally {
    await nic.close();
  }
});
