import assert from "assert";
import { type RingFormat, VirtioNet } from "../../../drivers/virtio/net.ts";
import { UioPciFunction, VfioPciFunction } from "../../../ffi/pci.ts";
import { parseMac, totalStats } from "../../../drivers/net/nic.ts";
import { echoExchange, receive, type RecvResult } from "../../../apps/traffic.ts";
import { ensureBound, guestTest, LAB, OUT } from "./env.ts";
import { exchangeWithKernel, kernelInterface, Peer } from "../../../lab/guest/kernel_peer.ts";
import type { PciFunction } from "../../../hal/pci.ts";
import { pinDriver } from "../../../ffi/cpu.ts";

const N = 100_000;
// Frames in flight: the lab's links are UDP sockets on the host (rmem_default 208 KiB, and a queued datagram costs
// about 2.3 KiB of it): 64 in flight always fit, so a backed-up peer slows the sender instead of losing frames.
const WINDOW = 64;

function vfio(pci: string): PciFunction {
  ensureBound(pci, "vfio-pci");
  return VfioPciFunction.open(pci);
}
function uio(pci: string): PciFunction {
  ensureBound(pci, "uio_pci_generic");
  return UioPciFunction.open(pci);
}

async function kernelExchangeTest(
  nicPci: string,
  peerPci: string,
  open: (p: string) => PciFunction,
  transport: "modern" | "legacy",
  ring: RingFormat = "split",
) {
  const k = await kernelInterface(peerPci);
  const nic = VirtioNet.openPci(open(nicPci), { ownsPci: true, transport, ring });
  try {
    assert.equal(nic.transport, transport);
    assert.equal(nic.ring, ring, "the lab's modern NICs offer packed rings (packed=on)");
    assert.equal(nic.macString, transport === "modern" ? LAB.vfioKernelPeer.mac : LAB.uioKernelPeer.mac);
    assert.ok(nic.linkUp());
    const x = await exchangeWithKernel(nic, k, N, WINDOW);
    // pvdrv → kernel: every frame verified by the kernel-side peer.
    assert.equal(x.tx.sent, N);
    const kr = x.kernelReceived;
    assert.deepEqual(
      { received: kr.received, corrupt: kr.corrupt, duplicate: kr.duplicate, outside: kr.outside },
      { received: N, corrupt: 0, duplicate: 0, outside: 0 },
    );
    // kernel → pvdrv: every byte verified by pvdrv.
    assert.equal(x.kernelSent.sent, N);
    assert.deepEqual(
      { received: x.rx.received, corrupt: x.rx.corrupt, duplicate: x.rx.duplicate },
      { received: N, corrupt: 0, duplicate: 0 },
    );
    const st = totalStats(nic.stats());
    assert.equal(st.txPackets, N);
    assert.ok(st.notifications < 2 * N, "doorbells batched");
    console.log(
      `  ${transport} ${ring}: pvdrv→kernel ${(x.tx.pps / 1000).toFixed(1)} kpps, kernel→pvdrv ${
        (x.rx.pps / 1000).toFixed(1)
      } kpps`,
    );
  } finally {
    nic.close();
  }
}

guestTest(
  "virtio-net over VFIO ⇄ the guest kernel's virtio_net: 100k mixed-size frames each way, every byte checked",
  async () => {
    await kernelExchangeTest(LAB.vfioKernelPeer.pci, LAB.kernelPeer.pci, vfio, "modern");
  },
);

guestTest(
  "virtio-net packed rings over VFIO ⇄ the guest kernel's virtio_net: 100k mixed-size frames each way, checked",
  async () => {
    await kernelExchangeTest(LAB.vfioKernelPeer.pci, LAB.kernelPeer.pci, vfio, "modern", "packed");
  },
);

guestTest(
  "virtio-net over UIO (legacy transport) ⇄ the guest kernel: 100k mixed-size frames each way",
  async () => {
    await kernelExchangeTest(LAB.uioKernelPeer.pci, LAB.uioPeer.pci, uio, "legacy");
  },
);

guestTest(
  "virtio-net over VFIO ⇄ the host: 100k frames to a reflector on the host and back, checked both ends",
  async () => {
    const nic = VirtioNet.openPci(vfio(LAB.vfioWirePeer.pci), { ownsPci: true });
    try {
      const dst = parseMac("02:00:00:00:00:fe");
      const { tx, rx } = await echoExchange(nic, {
        count: N,
        minSize: 60,
        maxSize: 1514,
        dst,
        window: WINDOW,
      });
      assert.equal(tx.sent, N);
      assert.deepEqual(
        { received: rx.received, corrupt: rx.corrupt, duplicate: rx.duplicate },
        { received: N, corrupt: 0, duplicate: 0 },
      );
      Deno.writeTextFileSync(`${OUT}/host-peer-expect.json`, JSON.stringify({ valid: N }));
    } finally {
      nic.close();
    }
  },
);

/** 1000 frames from the kernel's interface `peer` to `nic`, received on its interrupts (the peer paced by acks). */
async function burstFromPeer(nic: VirtioNet, peer: string): Promise<RecvResult> {
  const tx = new Peer(["send", peer, "1000", "60", "600", nic.macString, String(WINDOW)]);
  const r = await receive(nic, {
    count: 1000,
    idleTimeoutMs: 10000,
    interrupts: true,
    progressEvery: 16,
    onProgress: (ok) => tx.ack(ok),
  });
  await tx.result();
  return r;
}

async function interruptBursts(
  nicPci: string,
  peerPci: string,
  open: (p: string) => PciFunction,
  irq: "msix" | "intx",
  ring: RingFormat = "split",
) {
  const k = await kernelInterface(peerPci);
  const nic = VirtioNet.openPci(open(nicPci), { ownsPci: true, irq, ring });
  try {
    assert.equal(nic.ring, ring);
    for (let burst = 0; burst < 3; burst++) {
      await new Promise((r) => setTimeout(r, 300)); // idle
      const r = await burstFromPeer(nic, k.name);
      assert.equal(r.received, 1000, `burst ${burst}: all frames`);
      assert.equal(r.corrupt, 0);
      assert.ok(r.waits >= 1 && r.waits < 1000, `burst ${burst}: slept ${r.waits} times`);
    }
    assert.ok(nic.stats()[0].interrupts >= 3, `interrupts ${nic.stats()[0].interrupts}`);
  } finally {
    nic.close();
  }
}

/** Interrupt counts of `irqs` by CPU, from /proc/interrupts (one column per CPU after "N:"). */
function irqCountsByCpu(irqs: number[]): number[] {
  const lines = Deno.readTextFileSync("/proc/interrupts").split("\n");
  const ncpu = lines[0].trim().split(/\s+/).length, sums = new Array(ncpu).fill(0);
  for (const l of lines.slice(1)) {
    const [head, rest] = [l.slice(0, l.indexOf(":")).trim(), l.slice(l.indexOf(":") + 1)];
    if (!irqs.includes(Number(head))) continue;
    rest.trim().split(/\s+/).slice(0, ncpu).forEach((v, i) => sums[i] += Number(v));
  }
  return sums;
}

guestTest(
  "--cpu over VFIO MSI-X: every vector of the NIC steered to one vCPU, and its interrupts arrive there",
  async () => {
    const cpu = 1;
    const k = await kernelInterface(LAB.kernelPeer.pci);
    const nic = VirtioNet.openPci(vfio(LAB.vfioKernelPeer.pci), { ownsPci: true, irq: "msix" });
    try {
      const r = pinDriver(LAB.vfioKernelPeer.pci, cpu, { pinProcess: false });
      assert.deepEqual(r.refused, []);
      assert.ok(r.irqs.length >= 2, `vectors ${r.irqs}: the config change and the queues'`);
      for (const irq of r.irqs) {
        assert.equal(Deno.readTextFileSync(`/proc/irq/${irq}/effective_affinity_list`).trim(), String(cpu));
      }
      const before = irqCountsByCpu(r.irqs);
      assert.equal((await burstFromPeer(nic, k.name)).received, 1000);
      const after = irqCountsByCpu(r.irqs);
      assert.ok(after[cpu] > before[cpu], `interrupts on CPU ${cpu}: ${before[cpu]} → ${after[cpu]}`);
      after.forEach((n, c) => c === cpu || assert.equal(n, before[c], `CPU ${c} took none of them`));
    } finally {
      nic.close();
    }
  },
);

guestTest(
  "virtio-net interrupt mode over VFIO MSI-X: idle → burst → idle, three times, nothing lost",
  async () => {
    await interruptBursts(LAB.vfioKernelPeer.pci, LAB.kernelPeer.pci, vfio, "msix");
  },
);

guestTest(
  "virtio-net packed rings, interrupt mode over VFIO MSI-X: idle → burst → idle, three times, nothing lost",
  async () => {
    await interruptBursts(LAB.vfioKernelPeer.pci, LAB.kernelPeer.pci, vfio, "msix", "packed");
  },
);

guestTest(
  "virtio-net interrupt mode over UIO INTx: idle → burst → idle, three times, nothing lost",
  async () => {
    await interruptBursts(LAB.uioKernelPeer.pci, LAB.uioPeer.pci, uio, "intx");
  },
);
