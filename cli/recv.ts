/**
 * `deno task recv <nic> [options]`: receive frames, verify pvdrv test frames, optionally print and capture them.
 * @module
 */
import { openNic } from "../system/table.ts";
import { macToString, type Nic, totalStats } from "../drivers/net/nic.ts";
import { PcapWriter } from "../apps/pcap.ts";
import { FrameCheck } from "../apps/frames.ts";
import { receive } from "../apps/traffic.ts";
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
import { HOST_OPTIONS, HOST_USAGE, hostArgs, hostIrqArg } from "./lib/host_args.ts";
import { runUdp } from "./lib/udp_run.ts";

const USAGE = `usage: deno task recv <nic> [options]
  <nic>             PCI address of a virtio-net device bound to vfio-pci or uio_pci_generic, or vif/N (Xen)
  --count N         stop after N valid pvdrv frames (default 0: until idle)
  --timeout SEC     stop after SEC seconds without traffic (default 10)
  --print           print one line per frame
  --pcap FILE       write every frame to FILE (pcap, for tshark/Wireshark)
  --promisc         promiscuous mode
  --udp PORT        receive pvdrv's test datagrams in real IPv4/UDP frames on PORT of pvdrv's IPv4 host instead
                    (needs --ip CIDR or --dhcp), every byte checked
${HOST_USAGE}
${NIC_USAGE}`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    count: { type: "string" },
    timeout: { type: "string" },
    print: { type: "boolean" },
    pcap: { type: "string" },
    promisc: { type: "boolean" },
    udp: { type: "string" },
    ...HOST_OPTIONS,
    ...NIC_OPTIONS,
  });
  if (values.help) return void console.log(USAGE);
  const name = nicArg(positionals);
  if (values.udp !== undefined) {
    for (const o of ["print", "pcap", "promisc"] as const) {
      if (values[o] !== undefined) throw new UsageError(`--${o} does not apply with --udp`);
    }
    return await runUdp({
      name,
      mode: "recv",
      to: null,
      port: intArg("udp", values.udp, 0, 1, 65535),
      count: intArg("count", values.count, 0, 0, 2 ** 31),
      min: 4,
      max: 65000,
      window: 1,
      timeoutMs: intArg("timeout", values.timeout, 10, 1, 86400) * 1000,
      addr: hostArgs(values),
      irq: hostIrqArg(values.irq, name),
      mtu: mtuArg(values.mtu, name),
      ring: ringArg(values.ring, name),
      json: !!values.json,
    });
  }
  if (values.ip !== undefined || values.dhcp || values.gw !== undefined) {
    throw new UsageError("--ip, --dhcp and --gw go with --udp");
  }
  const count = intArg("count", values.count, 0, 0, 2 ** 31);
  const timeout = intArg("timeout", values.timeout, 10, 1, 86400);
  const irq = irqArg(values.irq);
  const mtu = mtuArg(values.mtu, name);
  const cpu = cpuArg(values.cpu);
  // Every argument is checked and every file opened before a device is touched.
  let pcap: PcapWriter | undefined;
  if (values.pcap !== undefined) {
    try {
      pcap = new PcapWriter(values.pcap);
    } catch (e) {
      throw new Error(`cannot write --pcap ${values.pcap}: ${(e as Error).message}`);
    }
  }
  let nic: Nic;
  try {
    nic = await openNic(name, { irq, promiscuous: values.promisc, mtu, ring: ringArg(values.ring, name) });
  } catch (e) {
    pcap?.close();
    throw e;
  }
  try {
    pinNicTask(name, cpu);
  } catch (e) {
    await nic.close();
    pcap?.close();
    throw e;
  }
  console.error(`recv: listening on ${nic.name} (${macToString(nic.mac)}), ${irq} mode`);
  let stopping = false;
  onSignals(async () => {
    stopping = true;
    pcap?.close();
    await nic.close();
  });
  const live = isTerminal() && !values.print;
  try {
    const enc = new TextEncoder();
    let last = performance.now(), lastOk = 0;
    const r = await receive(nic, {
      count,
      idleTimeoutMs: timeout * 1000,
      interrupts: irq !== "poll",
      pcap,
      stop: () => stopping,
      progressEvery: 1024,
      onProgress: (ok) => {
        const now = performance.now();
        if (live && now - last > 1000) {
          Deno.stderr.writeSync(
            enc.encode(`\rreceived ${ok} (${((ok - lastOk) / (now - last)).toFixed(1)} kpps)   `),
          );
          last = now;
          lastOk = ok;
        }
      },
      onFrame: values.print
        ? (b, c, seq) => {
          const d = b.data;
          const type = ((d[12] << 8) | d[13]).toString(16).padStart(4, "0");
          const what = c === FrameCheck.Ok
            ? `pvdrv seq ${seq}`
            : c === FrameCheck.Corrupt
            ? `pvdrv CORRUPT`
            : `type 0x${type}`;
          console.log(
            `${macToString(d.subarray(6, 12))} > ${macToString(d.subarray(0, 6))} len ${b.length} ${what}`,
          );
        }
        : undefined,
    });
    const summary = { nic: nic.name, ...r, stats: totalStats(nic.stats()), pcap: values.pcap ?? null };
    if (values.json) console.log(JSON.stringify(summary));
    else {
      console.log(
        `\nreceived ${r.received} valid frames (${r.corrupt} corrupt, ${r.duplicate} duplicate, ${r.foreign} other) ` +
          `in ${r.seconds.toFixed(2)} s: ${(r.pps / 1000).toFixed(1)} kpps`,
      );
    }
    return r.corrupt ? 1 : 0;
  } finally {
    pcap?.close();
    await nic.close();
  }
});
