/**
 * The in-guest half of `deno task demo`: probe, bind, bring up virtio-net through VFIO, and move real packets to
 * the host and to the guest kernel's own network stack, printing what each side saw.
 * @module
 */
import { formatTable, probe } from "../../system/probe.ts";
import { bindDevice } from "../../system/bind.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { VfioPciFunction } from "../../ffi/pci.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { parseMac, totalStats } from "../../drivers/net/nic.ts";
import { echoExchange } from "../../apps/traffic.ts";
import { LAB } from "../topology.ts";
import { exchangeWithKernel, kernelInterface } from "./kernel_peer.ts";

const N = Number(Deno.env.get("PVDRV_DEMO_FRAMES") ?? 20000);
const WINDOW = 64;
const kpps = (x: number) => `${(x / 1000).toFixed(1)} kpps`;

console.log("== 1. deno task probe (inside the guest) ==");
console.log(formatTable(probe().filter((e) => e.kind.startsWith("virtio-net"))));

for (const pci of [LAB.vfioWirePeer.pci, LAB.vfioKernelPeer.pci]) {
  if (readDevice(pci).driver !== "vfio-pci") bindDevice(pci, "vfio-pci");
}
console.log(`\n== 2. bound ${LAB.vfioWirePeer.pci} and ${LAB.vfioKernelPeer.pci} to vfio-pci ==`);

const summary: Record<string, unknown> = {};
{
  const nic = VirtioNet.openPci(VfioPciFunction.open(LAB.vfioWirePeer.pci), { ownsPci: true });
  console.log(
    `\n== 3. ${nic.name} via VFIO: mac ${nic.macString}, mtu ${nic.mtu}, link ${
      nic.linkUp() ? "up" : "down"
    } ==`,
  );
  console.log(`   features: ${nic.featureNames().join(" ")}`);
  console.log(`   sending ${N} frames (60..1514 bytes) to the host, which checks each one and sends it back`);
  const dst = parseMac("02:00:00:00:00:fe");
  const { tx, rx } = await echoExchange(nic, { count: N, minSize: 60, maxSize: 1514, dst, window: WINDOW });
  console.log(
    `   pvdrv sent ${tx.sent} (${kpps(tx.pps)}), got ${rx.received} echoes back, ${rx.corrupt} corrupt`,
  );
  summary.host = { sent: tx.sent, echoed: rx.received, corrupt: rx.corrupt };
  nic.close();
}
{
  const k = await kernelInterface(LAB.kernelPeer.pci);
  const nic = VirtioNet.openPci(VfioPciFunction.open(LAB.vfioKernelPeer.pci), { ownsPci: true });
  console.log(`\n== 4. ${nic.name} ⇄ the guest kernel's virtio_net (${k.name}, ${k.mac}) ==`);
  const x = await exchangeWithKernel(nic, k, N, WINDOW);
  console.log(
    `   pvdrv → kernel: sent ${x.tx.sent} (${kpps(x.tx.pps)}); the kernel's AF_PACKET socket verified ` +
      `${x.kernelReceived.received}, ${x.kernelReceived.corrupt} corrupt`,
  );
  console.log(
    `   kernel → pvdrv: kernel sent ${x.kernelSent.sent}; pvdrv verified ${x.rx.received} (${
      kpps(x.rx.pps)
    }), ` +
      `${x.rx.corrupt} corrupt`,
  );
  const st = totalStats(nic.stats());
  console.log(`   doorbells: ${st.notifications} for ${st.txPackets + st.rxPackets} frames`);
  summary.kernel = {
    sent: x.tx.sent,
    kernelVerified: x.kernelReceived.received,
    kernelSent: x.kernelSent.sent,
    received: x.rx.received,
  };
  nic.close();
}
Deno.writeTextFileSync("/out/demo.json", JSON.stringify(summary));
