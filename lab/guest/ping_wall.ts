/**
 * Inside the lab guest, for `lab/ping_trace.ts`: `deno task ping`'s loop in-process through pvdrv (VFIO, MSI-X)
 * against the guest kernel's stack on 0000:00:05.0, printing each reply as `PING seq sentAt rtt` (sentAt in ms of
 * the guest's wall clock, so the outer side can line the pings up with QEMU's trace of the same run).
 * Usage: `deno run -A lab/guest/ping_wall.ts [COUNT] [INTERVAL_MS]`.
 * @module
 */
import { LAB } from "../topology.ts";
import { NetNs } from "../netns.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { bindDevice } from "../../system/bind.ts";
import { pingRun } from "../../apps/ping.ts";
import { openNic } from "../../system/table.ts";
import { NetHost } from "../../net/host.ts";
import { parseIp } from "../../net/ipv4.ts";

const PCI = LAB.vfioKernelPeer.pci, PEER = LAB.kernelPeer.pci;
const PV = "10.0.0.2", K = "10.0.0.1";
const COUNT = Number(Deno.args[0] ?? 500), INTERVAL = Number(Deno.args[1] ?? 10);
const wall = () => performance.timeOrigin + performance.now();

const ns = await NetNs.create();
try {
  await ns.adopt(readDevice(PEER).netInterfaces[0], `${K}/24`);
  bindDevice(PCI, "vfio-pci");
  const nic = await openNic(PCI, { irq: "msix" });
  const host = NetHost.start(nic, { ip: `${PV}/24`, interrupts: true });
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
