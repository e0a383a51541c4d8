/**
 * The in-guest half of `deno task bench`: the same NIC (0000:00:04.0) first driven by the guest kernel's
 * virtio_net (AF_PACKET sendmmsg/recvmmsg through pvpeer, and pktgen), then by pvdrv over VFIO, in one boot.
 * Prints one JSON line.
 * @module
 */
import process from "node:process";
import { bindDevice } from "../drivers/pci/bind.ts";
import { VfioPciFunction } from "../ffi/pci.ts";
import { VirtioNet } from "../drivers/virtio/net.ts";
import { parseMac } from "../drivers/net/nic.ts";
import { generate, receive } from "../apps/traffic.ts";
import { LAB } from "../lab/qemu.ts";
import { kernelInterface, Peer } from "../lab/kernel_peer.ts";

const SECONDS = Number(Deno.env.get("PVDRV_BENCH_SECONDS") ?? 10);
const RATE = Number(Deno.env.get("PVDRV_BENCH_RATE") ?? 5000);
const SIZE = 64;
const log = (s: string) => console.error(`bench: ${s}`);
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function pktgen(ifname: string, dst: string, seconds: number): Promise<{ pps: number; sent: number }> {
  const w = (f: string, s: string) => Deno.writeTextFileSync(`/proc/net/pktgen/${f}`, s + "\n");
  w("kpktgend_0", "rem_device_all");
  w("kpktgend_0", `add_device ${ifname}`);
  for (
    const c of ["count 0", `pkt_size ${SIZE + 4}`, `dst_mac ${dst}`, "burst 32", "delay 0", "clone_skb 0"]
  ) w(ifname, c);
  const run = new Deno.Command("sh", { args: ["-c", "echo start > /proc/net/pktgen/pgctrl"] }).spawn();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  w("pgctrl", "stop");
  await run.status;
  const out = Deno.readTextFileSync(`/proc/net/pktgen/${ifname}`);
  const pps = Number(out.match(/(\d+)pps/)?.[1] ?? 0),
    sent = Number(out.match(/pkts-sofar: (\d+)/)?.[1] ?? 0);
  return { pps, sent };
}

const k04 = await kernelInterface(LAB.vfioKernelPeer.pci);
const k05 = await kernelInterface(LAB.kernelPeer.pci);
const k06 = await kernelInterface(LAB.vfioHostPeer.pci);
const HOST = "02:00:00:00:00:fe";
const results: Record<string, Record<string, number>> = {};
const mark = (what: string) => Deno.writeTextFileSync("/out/bench-phase", what); // the host counts per phase

// TX: 0000:00:06.0 into a UDP sink on the host (nothing in the guest pays for receiving).
mark("kernelTx");
log(`kernel AF_PACKET TX on ${k06.name} for ${SECONDS} s`);
results.kernelTx = await new Peer(["txrate", k06.name, String(SECONDS), String(SIZE), HOST]).result();
mark("pktgenTx");
log(`kernel pktgen TX on ${k06.name}`);
try {
  results.pktgenTx = await pktgen(k06.name, HOST, SECONDS);
} catch (e) {
  log(`pktgen unavailable: ${(e as Error).message}`);
}
mark("idle");
log(`kernel AF_PACKET RX on ${k04.name} while ${k05.name} floods`);
{
  const rx = new Peer(["rxrate", k04.name, String(SECONDS)]);
  await rx.ready;
  const tx = new Peer(["txrate", k05.name, String(SECONDS + 1), String(SIZE), k04.mac]);
  results.kernelRx = await rx.result();
  results.kernelRxOffered = await tx.result();
}
log(`kernel AF_PACKET TX at a fixed ${RATE} pps`);
results.kernelTxFixed = await new Peer(["txrate", k06.name, "5", String(SIZE), HOST, String(RATE)]).result();

// This guest's own lab NICs: safe to take from the kernel.
bindDevice(LAB.vfioHostPeer.pci, "vfio-pci", { force: true });
bindDevice(LAB.vfioKernelPeer.pci, "vfio-pci", { force: true });
{
  const nic = VirtioNet.openPci(VfioPciFunction.open(LAB.vfioHostPeer.pci), { ownsPci: true });
  try {
    const dst = parseMac(HOST);
    const flood = { count: 2 ** 31 - 1, minSize: SIZE, maxSize: SIZE, dst, durationMs: SECONDS * 1000 };
    for (const batch of [32, 256]) {
      mark(`pvdrvTx${batch}`);
      log(`pvdrv TX flood, batch ${batch}, for ${SECONDS} s`);
      const c0 = cpu();
      const tx = await generate(nic, { ...flood, batch });
      results[`pvdrvTx${batch}`] = {
        sent: tx.sent,
        seconds: tx.seconds,
        pps: tx.pps,
        cpuSeconds: cpu() - c0,
      };
    }
    mark("idle");
    log(`pvdrv TX at a fixed ${RATE} pps`);
    const c0 = cpu();
    const fixed = await generate(nic, { ...flood, rate: RATE, durationMs: 5000 });
    results.pvdrvTxFixed = {
      sent: fixed.sent,
      seconds: fixed.seconds,
      pps: fixed.pps,
      cpuSeconds: cpu() - c0,
    };
  } finally {
    nic.close();
  }
}
{
  const nic = VirtioNet.openPci(VfioPciFunction.open(LAB.vfioKernelPeer.pci), { ownsPci: true });
  try {
    log(`pvdrv RX while ${k05.name} floods`);
    const flood = new Peer(["txrate", k05.name, String(SECONDS), String(SIZE), nic.macString]);
    const rx = await receive(nic, { count: 0, idleTimeoutMs: 3000 });
    const got = rx.received + rx.duplicate; // the flood repeats 32 sequence numbers
    results.pvdrvRx = { received: got, seconds: rx.seconds, pps: got / rx.seconds };
    results.pvdrvRxOffered = await flood.result();
  } finally {
    nic.close();
  }
}
console.log("PVDRV-BENCH " + JSON.stringify(results));
