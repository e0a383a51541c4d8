/**
 * Inside the lab guest, for `lab/ping_trace.ts`: first the guest kernel's own ping on 0000:00:04.0 (its summary
 * as `KERNEL {json}`), then, after a pause the trace shows as a gap, `deno task ping`'s loop in-process through
 * pvdrv (VFIO, MSI-X) on the same NIC, both against the guest kernel's stack on 0000:00:05.0. pvdrv's replies are
 * printed as `PING seq sentAt rtt` (sentAt in ms of the guest's wall clock, so the outer side can line the pings
 * up with QEMU's trace of the same run).
 * Usage: `deno run -A lab/guest/ping_wall.ts [COUNT] [INTERVAL_MS]`.
 * @module
 */
import { LAB } from "../topology.ts";
import { NetNs } from "../netns.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { bindDevice } from "../../system/bind.ts";
import { pingRun, summarizePings } from "../../apps/ping.ts";
import { openNic } from "../../system/table.ts";
import { NetHost } from "../../net/host.ts";
import { parseIp } from "../../net/ipv4.ts";
import { kernelAddress, kernelPing } from "./kernel_peer.ts";

const PCI = LAB.vfioKernelPeer.pci, PEER = LAB.kernelPeer.pci;
const PV = "10.0.0.2", K = "10.0.0.1";
const COUNT = Number(Deno.args[0] ?? 500), INTERVAL = Number(Deno.args[1] ?? 10);
const HOT = Deno.args[2] === undefined ? undefined : Number(Deno.args[2]); // NetHost's hotMs (default its own)
const wall = () => performance.timeOrigin + performance.now();

const ns = await NetNs.create();
try {
  await ns.adopt(readDevice(PEER).netInterfaces[0], `${K}/24`);
  const k = await kernelAddress(PCI, `${PV}/24`);
  console.log(`KERNEL ${JSON.stringify(summarizePings(COUNT, await kernelPing(K, COUNT, INTERVAL)))}`);
  await k.release();
  await new Promise((r) => setTimeout(r, 3000)); // the gap that tells the two runs apart in the trace
  bindDevice(PCI, "vfio-pci");
  const nic = await openNic(PCI, { irq: "msix" });
  const host = NetHost.start(nic, { ip: `${PV}/24`, interrupts: true, hotMs: HOT });
  try {
    const o = { intervalMs: INTERVAL, size: 56, timeoutMs: 1000 };
    await pingRun(host, parseIp(K), { ...o, count: 300 }); // warm: the JIT's first compiles are not the question
    const lines: string[] = [];
    await pingRun(host, parseIp(K), {
      ...o,
      count: COUNT,
      onReply: (seq, r) =>
        void (r && lines.push(`PING ${seq} ${(wall() - r.rtt).toFixed(3)} ${r.rtt.toFixed(3)}`)),
    });
    console.log(lines.join("\n"));
  } finally {
    await host.close();
    await nic.close();
  }
} finally {
  await ns.close();
  bindDevice(PCI, "kernel");
}
