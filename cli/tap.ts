/**
 * `deno task tap <nic>`: a TAP interface whose frames go out and come in through a pvdrv NIC, so the kernel's own
 * stack (TCP, any server, ping, wget) runs over pvdrv's driver. Live counters; Ctrl-C or SIGTERM tear it down.
 * @module
 */
import type { BridgeStats } from "../apps/bridge.ts";
import { isTerminal, parse, runMain } from "./lib/common.ts";
import { NIC_OPTIONS, NIC_USAGE, nicArg } from "./lib/nic_args.ts";
import { bridgeConfig, bridgeLine, startBridge } from "./lib/tap_bridge.ts";

const USAGE = `usage: deno task tap <nic> [options]
  <nic>             PCI address of a virtio-net device bound to vfio-pci or uio_pci_generic, or vif/N (Xen)
  --name NAME       TAP interface name (default pvtap%d: the kernel numbers it)
  --ip CIDR         give the TAP this address (default: none, configure it yourself)
  --dhcp            lease the TAP's address with pvdrv's DHCP client on the NIC (renewed while running)
  --gw IP           default route through the TAP
${NIC_USAGE.replace("(default poll)", "(default: interrupts)")}`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    name: { type: "string" },
    ip: { type: "string" },
    gw: { type: "string" },
    dhcp: { type: "boolean" },
    ...NIC_OPTIONS,
  });
  if (values.help) return void console.log(USAGE);
  const nic = nicArg(positionals);
  const b = await startBridge(
    bridgeConfig(values, nic, false),
    (a) => console.error(`tap: ${b.tap} now has ${a} (new lease)`),
  );
  console.log(
    `tap: ${b.tap} (${b.mac}) bridged to ${b.nic}` + (b.address ? `, address ${b.address}` : "") +
      (b.gateway ? `, default via ${b.gateway}` : ""),
  );
  let stopping: Promise<BridgeStats> | null = null;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => void (stopping ??= b.stop()));
  }
  const live = isTerminal();
  const timer = setInterval(() => {
    if (live) Deno.stderr.writeSync(new TextEncoder().encode(`\r${bridgeLine(b.stats())}   `));
  }, 1000);
  try {
    const s = await b.done;
    if (values.json) console.log(JSON.stringify({ tap: b.tap, nic: b.nic, ...s, nicStats: b.nicStats() }));
    else console.log(`${live ? "\n" : ""}tap: ${b.tap} removed; ${bridgeLine(s)}`);
    return 0;
  } finally {
    clearInterval(timer);
  }
});
