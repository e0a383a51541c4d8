/**
 * `deno task ping <nic> <ip>`: ICMP echo from a pvdrv NIC, with ping(8)'s per-reply lines and summary.
 * @module
 */
import { openNic } from "../system/table.ts";
import { type Nic, settledStats } from "../drivers/net/nic.ts";
import { ipText } from "../net/ipv4.ts";
import { pingRun } from "../apps/ping.ts";
import { intArg, parse, runMain, UsageError } from "./lib/common.ts";
import {
  cpuArg,
  mtuArg,
  NIC_OPTIONS,
  NIC_USAGE,
  nicArg,
  onSignals,
  pinNicTask,
  ringArg,
} from "./lib/nic_args.ts";
import { HOST_OPTIONS, HOST_USAGE, hostArgs, hostIrqArg, ipArg, startHost } from "./lib/host_args.ts";

const USAGE = `usage: deno task ping <nic> <ip> [options]
  <nic>             PCI address of a virtio-net device bound to vfio-pci or uio_pci_generic, or vif/N (Xen)
  <ip>              address to ping
  --count N         requests (default 10)
  --interval MS     between requests (default 1000; 0: the next as soon as the last is answered)
  --size N          payload bytes (default 56)
  --timeout MS      wait for each reply (default 1000)
  --warmup N        send N requests first, left out of the output (default 0; benchmarks: the JIT's warm-up)
  --quiet           the summary only
${HOST_USAGE}
${NIC_USAGE.replace("(default poll)", "(default: interrupts)")}`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    count: { type: "string" },
    interval: { type: "string" },
    size: { type: "string" },
    timeout: { type: "string" },
    warmup: { type: "string" },
    quiet: { type: "boolean", short: "q" },
    ...HOST_OPTIONS,
    ...NIC_OPTIONS,
  });
  if (values.help) return void console.log(USAGE);
  if (positionals.length !== 2) throw new UsageError("expected a NIC and an address to ping");
  const name = nicArg(positionals.slice(0, 1));
  const dst = ipArg("the address to ping", positionals[1]);
  const count = intArg("count", values.count, 10, 1, 10_000_000);
  const intervalMs = intArg("interval", values.interval, 1000, 0, 3_600_000);
  const size = intArg("size", values.size, 56, 0, 65_000);
  const timeoutMs = intArg("timeout", values.timeout, 1000, 1, 600_000);
  const warmup = intArg("warmup", values.warmup, 0, 0, 10_000);
  const addr = hostArgs(values);
  const irq = hostIrqArg(values.irq, name);
  const cpu = cpuArg(values.cpu);
  const nic: Nic = await openNic(name, {
    irq,
    mtu: mtuArg(values.mtu, name),
    ring: ringArg(values.ring, name),
  });
  let stopping = false;
  try {
    if (size > nic.mtu - 28) throw new UsageError(`--size must be at most ${nic.mtu - 28} (MTU ${nic.mtu})`);
    pinNicTask(name, cpu);
    const host = await startHost(nic, addr, irq);
    onSignals(async () => {
      stopping = true;
      await host.close();
      await nic.close();
    });
    if (!values.quiet && !values.json) {
      console.log(`PING ${ipText(dst)} from ${host.address} on ${nic.name}: ${size} data bytes`);
    }
    const s = await pingRun(host, dst, {
      count,
      intervalMs,
      size,
      timeoutMs,
      warmup,
      stop: () => stopping || host.error !== null,
      onReply: values.quiet || values.json ? undefined : (seq, r) => {
        if (r) {
          console.log(
            `${r.bytes} bytes from ${ipText(dst)}: icmp_seq=${seq} ttl=${r.ttl} time=${r.rtt.toFixed(3)} ms`,
          );
        } else console.log(`no reply from ${ipText(dst)}: icmp_seq=${seq}`);
      },
    });
    host.checkHealth(); // a host whose NIC failed ends the task with that error, not a loss summary
    const stats = { ...host.stats }, nicStats = settledStats(nic);
    await host.close();
    if (values.json) {
      console.log(JSON.stringify({ dst: ipText(dst), src: host.address, ...s, host: stats, nicStats }));
    } else {
      console.log(`\n--- ${ipText(dst)} ping statistics ---`);
      console.log(
        `${s.transmitted} packets transmitted, ${s.received} received, ${
          s.lossPercent.toFixed(1)
        }% packet loss`,
      );
      if (s.received) {
        const f = (x: number) => x.toFixed(3);
        console.log(
          `rtt min/avg/max/p50/p99/mdev = ${f(s.min)}/${f(s.avg)}/${f(s.max)}/${f(s.p50)}/${f(s.p99)}/${
            f(s.mdev)
          } ms`,
        );
      }
    }
    return s.received ? 0 : 1; // as ping(8): success when anything answered
  } finally {
    await nic.close();
  }
});
