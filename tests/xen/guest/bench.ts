// The Xen lab's benchmark, run in the PV domU after the tests (tests/xen/lab.ts): TX and RX packets per second of
// pvdrv's netfront, then of the kernel's own xen-netfront on the same vif, with dom0's pvpeer as the peer. Each
// step is announced in xenstore (data/pvdrv-bench) and starts once dom0 acknowledges it (data/pvdrv-bench-ack).
// Prints "PVDRV-BENCH <step> {json}" for what the domU measures; dom0 prints what it counts.
import { Netfront, XenbusState } from "../../../drivers/xen/netfront.ts";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { Evtchn, Gntalloc } from "../../../ffi/xen.ts";
import { parseMac } from "../../../drivers/nic.ts";
import { generate, receive } from "../../../cli/traffic.ts";

const S = Number(Deno.env.get("PVDRV_BENCH_SECONDS") ?? 4);
const DST = "fe:ff:ff:ff:ff:ff";
const xs = new XenStore(new XenbusDevice());

async function step(name: string): Promise<void> {
  await xs.write("data/pvdrv-bench", name);
  await xs.waitFor("data/pvdrv-bench-ack", (v) => v === name, 60_000);
}

function report(name: string, v: Record<string, number>): void {
  console.log(`PVDRV-BENCH ${name} ${JSON.stringify(v)}`);
}

async function sh(cmd: string, args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args, stderr: "inherit" }).output();
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")} failed (exit ${r.code})`);
  return new TextDecoder().decode(r.stdout);
}

// 1. pvdrv's netfront: TX, then RX busy-polling and RX waiting on the event channel.
{
  const grants = new Gntalloc();
  const nf = await Netfront.open(xs, grants, new Evtchn(), { timeoutMs: 60_000 });
  try {
    await step("tx-pvdrv");
    const tx = await generate(nf, {
      count: 2 ** 31 - 1,
      minSize: 60,
      maxSize: 60,
      dst: parseMac(DST),
      durationMs: S * 1000,
    });
    report("tx-pvdrv", { sent: tx.sent, pps: Math.round(tx.pps) });
    for (const [name, interrupts] of [["rx-pvdrv", false], ["rx-pvdrv-irq", true]] as const) {
      const rx = receive(nf, { count: 0, idleTimeoutMs: 5000, interrupts });
      await step(name);
      const r = await rx;
      report(name, { received: r.received, corrupt: r.corrupt, pps: Math.round(r.pps), waits: r.waits });
    }
  } finally {
    await nf.shutdown();
    grants.close();
  }
}

// 2. The kernel's xen-netfront on the same vif: the frontend goes back to Initialising (netback answers InitWait),
// then the module binds vif-0 and connects it.
await xs.write("device/vif/0/state", String(XenbusState.Initialising));
const backend = await xs.read("device/vif/0/backend");
await xs.waitFor(`${backend}/state`, (v) => v === String(XenbusState.InitWait), 60_000);
for (const m of (Deno.env.get("PVDRV_KERNEL_NETFRONT") ?? "").split(" ").filter(Boolean)) {
  await sh("insmod", [`/lib/modules/${m}.ko`]);
}
let ifname = "";
for (let i = 0; i < 600 && !ifname; i++) {
  ifname = [...Deno.readDirSync("/sys/class/net")].map((e) => e.name).find((n) => n !== "lo") ?? "";
  if (!ifname) await new Promise((r) => setTimeout(r, 100));
}
if (!ifname) throw new Error("the kernel's xen-netfront made no interface");
await sh("ip", ["link", "set", ifname, "up"]);
await xs.waitFor("device/vif/0/state", (v) => v === String(XenbusState.Connected), 60_000);
console.log(`bench: kernel xen-netfront connected as ${ifname}`);

await step("tx-kernel");
const ktx = JSON.parse(
  (await sh("pvpeer", ["txrate", ifname, String(S), "60", DST])).trim().split("\n").pop()!,
);
report("tx-kernel", { sent: ktx.sent, pps: ktx.pps });

const peer = new Deno.Command("pvpeer", { args: ["rxrate", ifname, String(S)], stdout: "piped" }).spawn();
const lines = peer.stdout.pipeThrough(new TextDecoderStream()).getReader();
let out = "";
while (!out.includes("ready")) {
  const { value, done } = await lines.read();
  if (done) break;
  out += value;
}
await step("rx-kernel");
for (;;) {
  const { value, done } = await lines.read();
  if (done) break;
  out += value;
}
await peer.status;
const krx = JSON.parse(out.trim().split("\n").pop()!);
report("rx-kernel", { received: krx.received, pps: krx.pps });
await xs.write("data/pvdrv-bench", "done");
await xs.close();
