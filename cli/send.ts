/**
 * `deno task send <nic> [options]`: generate pvdrv test frames on a NIC.
 * @module
 */
import { openNic } from "../system/table.ts";
import { parseMac, totalStats } from "../drivers/net/nic.ts";
import { generate } from "../apps/traffic.ts";
import { intArg, isTerminal, parse, runMain, UsageError } from "./lib/common.ts";
import {
  cpuArg,
  irqArg,
  mtuArg,
  NIC_OPTIONS,
  NIC_USAGE,
  nicArg,
  onSignals,
  pinNicTask,
  ringArg,
} from "./lib/nic_args.ts";
import {
  endpointArg,
  HOST_OPTIONS,
  HOST_USAGE,
  hostArgs,
  hostIrqArg,
  payloadSizes,
} from "./lib/host_args.ts";
import { runUdp } from "./lib/udp_run.ts";

const USAGE = `usage: deno task send <nic> [options]
  <nic>             PCI address of a virtio-net device bound to vfio-pci or uio_pci_generic, or vif/N (Xen)
  --count N         frames to send (default 10000)
  --size N          frame size in bytes, 60..the NIC's largest frame (default 60)
  --sizes MIN-MAX   cycle sizes through MIN..MAX instead
  --rate PPS        frames per second (default: flood)
  --dst MAC         destination MAC (default ff:ff:ff:ff:ff:ff)
  --batch N         frames per doorbell, 1..256 (default 32)
  --queue Q         queue pair (default 0)
  --udp IP:PORT     send pvdrv's test datagrams in real IPv4/UDP frames from pvdrv's IPv4 host instead (needs
                    --ip CIDR or --dhcp; --size/--sizes are then payload bytes, at least 4; --rate paces them;
                    --echo checks each reply instead)
${HOST_USAGE}
${NIC_USAGE}`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    count: { type: "string" },
    size: { type: "string" },
    sizes: { type: "string" },
    rate: { type: "string" },
    dst: { type: "string" },
    batch: { type: "string" },
    queue: { type: "string" },
    udp: { type: "string" },
    echo: { type: "boolean" },
    ...HOST_OPTIONS,
    ...NIC_OPTIONS,
  });
  if (values.help) return void console.log(USAGE);
  const name = nicArg(positionals);
  if (values.udp !== undefined) {
    // Real IPv4/UDP: the same run as `deno task udp <nic> send IP:PORT`.
    for (const o of ["dst", "batch", "queue"] as const) {
      if (values[o] !== undefined) throw new UsageError(`--${o} does not apply with --udp`);
    }
    const [min, max] = payloadSizes(values.size, values.sizes);
    return await runUdp({
      name,
      mode: "send",
      to: endpointArg("--udp", values.udp),
      port: 0,
      count: intArg("count", values.count, 10000, 1, 2 ** 31),
      min,
      max,
      echo: !!values.echo,
      rate: intArg("rate", values.rate, 0, 1, 100_000_000),
      window: 32,
      timeoutMs: 2000,
      addr: hostArgs(values),
      irq: hostIrqArg(values.irq, name),
      mtu: mtuArg(values.mtu, name),
      ring: ringArg(values.ring, name),
      json: !!values.json,
    });
  }
  if (values.echo || values.ip !== undefined || values.dhcp || values.gw !== undefined) {
    throw new UsageError("--echo, --ip, --dhcp and --gw go with --udp");
  }
  const count = intArg("count", values.count, 10000, 1, 2 ** 31);
  if (values.size !== undefined && values.sizes !== undefined) {
    throw new UsageError("--size and --sizes exclude each other: give one");
  }
  let min = intArg("size", values.size, 60, 60, 65531), max = min;
  if (values.sizes !== undefined) {
    const m = values.sizes.match(/^(\d+)-(\d+)$/);
    if (!m) throw new UsageError(`--sizes must look like 60-1514, got '${values.sizes}'`);
    [min, max] = [Number(m[1]), Number(m[2])];
    if (min < 60 || max > 65531 || min > max) {
      throw new UsageError("--sizes must be within 60-65531, MIN <= MAX");
    }
  }
  const rate = intArg("rate", values.rate, 0, 1, 100_000_000);
  const batch = intArg("batch", values.batch, 32, 1, 256);
  const queue = intArg("queue", values.queue, 0, 0, 255);
  let dst: Uint8Array;
  try {
    dst = parseMac(values.dst ?? "ff:ff:ff:ff:ff:ff");
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const cpu = cpuArg(values.cpu);
  const nic = await openNic(name, {
    irq: irqArg(values.irq),
    queues: queue + 1,
    mtu: mtuArg(values.mtu, name),
    ring: ringArg(values.ring, name),
  });
  onSignals(() => nic.close());
  try {
    pinNicTask(name, cpu);
    if (queue >= nic.queues) {
      throw new UsageError(`--queue ${queue}: the device has ${nic.queues} queue pair(s)`);
    }
    if (max > nic.maxFrame) throw new UsageError(`frames above ${nic.maxFrame} bytes do not fit this NIC`);
    const r = await generate(nic, {
      count,
      minSize: min,
      maxSize: max,
      dst,
      batch,
      rate,
      queue,
      onProgress: isTerminal()
        ? (sent, s) =>
          Deno.stderr.writeSync(
            new TextEncoder().encode(`\rsent ${sent} (${(sent / s / 1000).toFixed(1)} kpps)   `),
          )
        : undefined,
    });
    const summary = { nic: nic.name, ...r, stats: totalStats(nic.stats()) };
    if (values.json) console.log(JSON.stringify(summary));
    else {console.log(
        `\nsent ${r.sent} frames, ${r.bytes} bytes in ${r.seconds.toFixed(2)} s: ${
          (r.pps / 1000).toFixed(1)
        } kpps`,
      );}
  } finally {
    await nic.close();
  }
});
