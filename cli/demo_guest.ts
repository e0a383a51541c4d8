/**
 * The in-guest half of `deno task demo`: probe, bind, bring up virtio-net through VFIO, and move real packets to
 * the host and to the guest kernel's own network stack, printing what each side saw.
 * @module
 */
import { formatTable, probe } from "../drivers/pci/probe.ts";
import { bindDevice } from "../drivers/pci/bind.ts";
import { readDevice } from "../drivers/pci/sysfs.ts";
import { VfioPciFunction } from "../drivers/pci/device.ts";
import { VirtioNet } from "../drivers/virtio/net.ts";
import { parseMac, totalStats } from "../drivers/nic.ts";
import { generate, receive } from "./traffic.ts";
import { LAB } from "../tests/vm/lab.ts";
import { kernelInterface, Peer } from "../tests/vm/guest/peer.ts";

const N = Number(Deno.env.get("PVDRV_DEMO_FRAMES") ?? 20000);
const WINDOW = 64;
const kpps = (x: number) => `${(x / 1000).toFixed(1)} kpps`;

console.log("== 1. deno task probe (inside the guest) ==");
console.log(formatTable(probe().filter((e) => e.kind.startsWith("virtio-net"))));

for (const pci of [LAB.vfioHostPeer.pci, LAB.vfioKernelPeer.pci]) {
  if (readDevice(pci).driver !== "vfio-pci") bindDevice(pci, "vfio-pci");
}
console.log(`\n== 2. bound ${LAB.vfioHostPeer.pci} and ${LAB.vfioKernelPeer.pci} to vfio-pci ==`);

const summary: Record<string, unknown> = {};
{
  const nic = VirtioNet.open(VfioPciFunction.open(LAB.vfioHostPeer.pci), { ownsPci: true });
  console.log(
    `\n== 3. ${nic.name} via VFIO: mac ${nic.macString}, mtu ${nic.mtu}, link ${
      nic.linkUp() ? "up" : "down"
    } ==`,
  );
  console.log(`   features: ${nic.featureNames().join(" ")}`);
  console.log(`   sending ${N} frames (60..1514 bytes) to the host, which checks each one and sends it back`);
  let echoed = 0;
  const waiters: (() => void)[] = [];
  const poke = setInterval(() => waiters.splice(0).forEach((w) => w()), 1);
  const back = receive(nic, {
    count: N,
    idleTimeoutMs: 15000,
    progressEvery: 16,
    onProgress: (ok) => echoed = ok,
  });
  const tx = await generate(nic, {
    count: N,
    minSize: 60,
    maxSize: 1514,
    dst: parseMac("02:00:00:00:00:fe"),
    window: { size: WINDOW, acked: () => echoed, changed: () => new Promise((r) => waiters.push(r)) },
  });
  const rx = await back;
  clearInterval(poke);
  console.log(
    `   pvdrv sent ${tx.sent} (${kpps(tx.pps)}), got ${rx.received} echoes back, ${rx.corrupt} corrupt`,
  );
  summary.host = { sent: tx.sent, echoed: rx.received, corrupt: rx.corrupt };
  nic.close();
}
{
  const k = await kernelInterface(LAB.kernelPeer.pci);
  const nic = VirtioNet.open(VfioPciFunction.open(LAB.vfioKernelPeer.pci), { ownsPci: true });
  console.log(`\n== 4. ${nic.name} ⇄ the guest kernel's virtio_net (${k.name}, ${k.mac}) ==`);
  const kr = new Peer(["recv", k.name, String(N), "10000", "16"]);
  await kr.ready;
  const tx = await generate(nic, {
    count: N,
    minSize: 60,
    maxSize: 1514,
    dst: parseMac(k.mac),
    window: kr.window(WINDOW),
  });
  const kernelSaw = await kr.result();
  console.log(
    `   pvdrv → kernel: sent ${tx.sent} (${
      kpps(tx.pps)
    }); the kernel's AF_PACKET socket verified ${kernelSaw.received}, ${kernelSaw.corrupt} corrupt`,
  );
  const ks = new Peer(["send", k.name, String(N), "60", "1514", nic.macString, String(WINDOW)]);
  const rx = await receive(nic, {
    count: N,
    idleTimeoutMs: 10000,
    progressEvery: 16,
    onProgress: (ok) => ks.ack(ok),
  });
  const kernelSent = await ks.result();
  console.log(
    `   kernel → pvdrv: kernel sent ${kernelSent.sent}; pvdrv verified ${rx.received} (${
      kpps(rx.pps)
    }), ${rx.corrupt} corrupt`,
  );
  const st = totalStats(nic.stats());
  console.log(`   doorbells: ${st.notifications} for ${st.txPackets + st.rxPackets} frames`);
  summary.kernel = {
    sent: tx.sent,
    kernelVerified: kernelSaw.received,
    kernelSent: kernelSent.sent,
    received: rx.received,
  };
  nic.close();
}
Deno.writeTextFileSync("/out/demo.json", JSON.stringify(summary));
