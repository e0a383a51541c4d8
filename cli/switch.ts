/**
 * `deno task switch --port SPEC --port SPEC ...`: an L2 learning switch joining QEMU guests' virtio-net (pvdrv as
 * their vhost-user backend), TAP interfaces and UDP frame links. Per-port counters live on a terminal, once at the
 * end otherwise (`--json` for one JSON line); `--pcap FILE` captures every frame switched. Ctrl-C or SIGTERM stop it.
 * @module
 */
import { Switch, type SwitchPort } from "../apps/switch.ts";
import { PcapWriter } from "../apps/pcap.ts";
import type { VhostUserNet } from "../drivers/virtio/vhost_net.ts";
import { NicPort } from "../apps/switch.ts";
import { intArg, isTerminal, parse, runMain, UsageError } from "./lib/common.ts";
import { openPort, PORT_USAGE } from "./lib/switch_ports.ts";

const USAGE = `usage: deno task switch --port SPEC --port SPEC [...] [options]
${PORT_USAGE}
  --pcap FILE       capture every frame switched
  --seconds N       stop after N seconds (default: run until Ctrl-C or SIGTERM)
  --stats FILE      keep FILE holding the counters as JSON, rewritten every second
  --json            print the counters as one JSON line at the end`;

function portState(p: SwitchPort): Record<string, unknown> {
  const out: Record<string, unknown> = { port: p.name, ...p.counters };
  if (p instanceof NicPort && "session" in p.nic) {
    const v = p.nic as VhostUserNet;
    Object.assign(out, { link: v.linkUp(), ...v.counters, lastError: v.session?.lastError ?? undefined });
  }
  return out;
}

function line(sw: Switch): string {
  return sw.ports.map((p) => `${p.name} rx ${p.counters.rx} tx ${p.counters.tx} drop ${p.counters.dropped}`)
    .join(" | ");
}

await runMain(USAGE, async () => {
  const { values } = parse(Deno.args, {
    port: { type: "string", multiple: true },
    pcap: { type: "string" },
    stats: { type: "string" },
    seconds: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean" },
  }, false);
  if (values.help) return void console.log(USAGE);
  const specs = values.port ?? [];
  if (specs.length < 1) throw new UsageError("give at least one --port");
  const seconds = intArg("seconds", values.seconds, 0, 0, 86400 * 365);
  const ports: SwitchPort[] = [];
  let stopping = false;
  try {
    for (const [i, s] of specs.entries()) ports.push(openPort(s, i));
    const sw = new Switch(ports);
    const pcap = values.pcap ? new PcapWriter(values.pcap) : undefined;
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => void (stopping = true));
    }
    const end = seconds ? performance.now() + seconds * 1000 : Infinity;
    const live = isTerminal();
    const result = () => ({
      ports: ports.map(portState),
      ...sw.counters,
      learned: sw.learned,
      pcap: pcap?.count,
    });
    console.log(`switch: ready, ${ports.map((p) => p.name).join(", ")}`);
    await sw.run({
      stop: () => stopping || performance.now() >= end,
      pcap,
      onReport: () => {
        if (live) Deno.stderr.writeSync(new TextEncoder().encode(`\r${line(sw)}   `));
        if (values.stats) {
          // Whole or not at all for a reader: written aside, then renamed over.
          Deno.writeTextFileSync(`${values.stats}.tmp`, JSON.stringify(result()));
          Deno.renameSync(`${values.stats}.tmp`, values.stats);
        }
      },
    });
    pcap?.close();
    if (values.json) console.log(JSON.stringify(result()));
    else console.log(`${live ? "\n" : ""}switch: stopped; ${line(sw)}`);
    return 0;
  } finally {
    for (const p of ports) await p.close();
  }
});
