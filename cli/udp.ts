/**
 * `deno task udp <nic> echo|send|recv`: UDP over a pvdrv NIC's IPv4 host, with test datagrams checked byte for byte.
 * @module
 */
import { MIN_DATAGRAM } from "../apps/datagrams.ts";
import { intArg, parse, runMain, UsageError } from "./lib/common.ts";
import { cpuArg, mtuArg, NIC_OPTIONS, NIC_USAGE, nicArg, ringArg } from "./lib/nic_args.ts";
import {
  endpointArg,
  HOST_OPTIONS,
  HOST_USAGE,
  hostArgs,
  hostIrqArg,
  payloadSizes,
} from "./lib/host_args.ts";
import { runUdp, type UdpMode } from "./lib/udp_run.ts";

const USAGE = `usage: deno task udp <nic> echo|send|recv [options]
  echo              answer every datagram to --port with the same bytes (until --count or Ctrl-C)
  send IP:PORT      send --count test datagrams (sequence number + pattern); with --echo, check each reply
  recv              receive test datagrams on --port and check every byte
  --port N          local port (echo, recv: default 7; send: ephemeral)
  --count N         datagrams (send: default 1000; echo, recv: default 0 = no limit)
  --size N | --sizes MIN-MAX   payload bytes (default 64; at least ${MIN_DATAGRAM})
  --echo            send: expect each datagram back, byte for byte
  --rate PPS        send without --echo: datagrams per second (default: as fast as the ring takes them)
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
    rate: { type: "string" },
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
  const [min, max] = payloadSizes(values.size, values.sizes);
  const window = intArg("window", values.window, 32, 1, 4096);
  const timeoutMs = intArg("timeout", values.timeout, 2000, 1, 3_600_000);
  return await runUdp({
    name,
    mode: mode as UdpMode,
    to,
    port,
    count,
    min,
    max,
    echo: !!values.echo,
    rate: intArg("rate", values.rate, 0, 1, 100_000_000),
    window,
    timeoutMs,
    addr: hostArgs(values),
    irq: hostIrqArg(values.irq, name),
    mtu: mtuArg(values.mtu, name),
    ring: ringArg(values.ring, name),
    cpu: cpuArg(values.cpu),
    json: !!values.json,
  });
});
