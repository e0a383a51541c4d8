/**
 * The multi-queue benchmark, run inside the lab guest by `deno task bench --mq`: 0000:00:0a.0 (a multi-queue TAP
 * NIC whose host side, lab/c/mqpeer.c, lives in a namespace made for the run) opened by pvdrv with 1, 2 and 4 queue
 * pairs, one thread serving every queue. TX: 64-byte flow frames, batches of 32 round-robin over the queues (16
 * flows per queue), counted by the wire peer. RX: the peer floods 64 flows at the NIC and tun spreads them over
 * the queues the device enabled; counted by the receiver. Then the guest kernel's virtio_net on the same NIC with
 * its default of 2 queue pairs (one per vCPU) as the reference: TX from `pvpeer txrate` (AF_PACKET, one flow)
 * counted by the host's TAP, RX counted by the interface. Prints one "PVDRV-MQBENCH {json}" line per driver and
 * queue count.
 * @module
 */
import { checkFlowFrame, FrameCheck, writeFlowFrame } from "../../apps/frames.ts";
import type { PacketBuffer } from "../../drivers/net/packet_pool.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { bindDevice } from "../../system/bind.ts";
import { VfioPciFunction } from "../../ffi/pci.ts";
import { MqPeerClient } from "./mq_peer.ts";
import { LAB, MQ_QUEUES } from "../topology.ts";
import { kernelInterface, Peer } from "./kernel_peer.ts";
import { macToString } from "../../drivers/net/nic.ts";
import { summarize } from "../bench_stats.ts";
import { releaseUnsent } from "../../apps/traffic.ts";

const WARMUP_S = Number(Deno.env.get("PVDRV_MQBENCH_WARMUP") ?? 3);
const WINDOW_S = Number(Deno.env.get("PVDRV_MQBENCH_WINDOW") ?? 1);
const WINDOWS = 3, BATCH = 32, SIZE = 64, FLOWS_PER_QUEUE = 16;

/** The RX flood: 64 flows as fast as the TAP takes them, far longer than any run. */
const FLOOD = { count: 1e9, flows: 64, first: 100, size: SIZE, pps: 0 };

/** Run `step` for `seconds` without yielding to timers (it returns frames handled). */
function spin(seconds: number, step: () => number): number {
  const end = performance.now() + seconds * 1000;
  let n = 0;
  while (performance.now() < end) for (let i = 0; i < 64; i++) n += step();
  return n;
}

/**
 * TX windows: frames/s the TAP device took from QEMU (the host kernel's count, read by the peer, which does not
 * read the flood itself: the VM tests verify every byte), and frames/s the driver queued.
 */
async function txRates(
  nic: VirtioNet,
  peer: MqPeerClient,
): Promise<{ rates: number[]; sent: number[] }> {
  await peer.command("listen 0");
  const peerMac = (await peer.stats()).mac;
  const bufs: PacketBuffer[] = [];
  // A buffer's frame depends only on its queue and pool slot, so each is written once and resent as it is.
  const written = Array.from({ length: nic.queues }, () => new Uint8Array(65536));
  let q = 0;
  const step = () => {
    const n = nic.allocTx(bufs, BATCH, q);
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      if (!written[q][b.index]) {
        writeFlowFrame(
          b.data,
          SIZE,
          b.index,
          q * FLOWS_PER_QUEUE + (b.index % FLOWS_PER_QUEUE),
          peerMac,
          nic.mac,
        );
        written[q][b.index] = 1;
      }
      b.length = SIZE;
    }
    const sent = n ? nic.sendBatch(bufs, n, q) : 0;
    releaseUnsent(nic, bufs, sent, n, q);
    q = q + 1 === nic.queues ? 0 : q + 1;
    return sent;
  };
  spin(WARMUP_S, step);
  const rates: number[] = [], sentRates: number[] = [];
  let before = await peer.stats(), t0 = performance.now();
  for (let w = 0; w < WINDOWS; w++) {
    const sent = spin(WINDOW_S, step);
    const after = await peer.stats(), t1 = performance.now();
    const sec = (t1 - t0) / 1000;
    sentRates.push(sent / sec);
    rates.push((after.tapRx - before.tapRx) / sec);
    before = after;
    t0 = t1;
  }
  return { rates, sent: sentRates };
}

async function rxRates(nic: VirtioNet, peer: MqPeerClient): Promise<{ rates: number[]; perQueue: number[] }> {
  await peer.stats();
  await peer.blast(FLOOD);
  const bufs: PacketBuffer[] = [], out = new Uint32Array(2);
  const perQueue = new Array<number>(nic.queues).fill(0);
  let corrupt = 0, q = 0;
  const step = () => {
    const n = nic.receiveBatch(bufs, BATCH, q);
    let ok = 0;
    for (let i = 0; i < n; i++) {
      const c = checkFlowFrame(bufs[i].data, bufs[i].length, out);
      if (c === FrameCheck.Ok) ok++;
      else if (c === FrameCheck.Corrupt) corrupt++;
    }
    nic.release(bufs, n, q);
    perQueue[q] += ok;
    q = q + 1 === nic.queues ? 0 : q + 1;
    return ok;
  };
  spin(WARMUP_S, step);
  perQueue.fill(0);
  const rates: number[] = [];
  for (let w = 0; w < WINDOWS; w++) {
    const t0 = performance.now();
    const n = spin(WINDOW_S, step);
    rates.push(n / ((performance.now() - t0) / 1000));
  }
  await peer.stopBlast();
  if (corrupt) throw new Error(`${corrupt} corrupt frames received`);
  return { rates, perQueue };
}

const PCI = LAB.multiQueueTap.pci;
const openNic = (queues: number) => VirtioNet.openPci(VfioPciFunction.open(PCI), { ownsPci: true, queues });

/** With pvdrv on the NIC: `fn` (which may talk to the peer), then close it. */
async function withPvdrv<T>(
  queues: number,
  fn: (nic: VirtioNet, peer: MqPeerClient) => Promise<T>,
): Promise<T> {
  bindDevice(PCI, "vfio-pci", { force: true });
  const nic = openNic(queues);
  try {
    return await fn(nic, new MqPeerClient(nic));
  } finally {
    await nic.close();
  }
}

/** The guest kernel's virtio_net on the NIC (pvdrv tells the peer what to do before and after). */
async function kernelRates(): Promise<{ tx: number[]; rx: number[]; queues: number }> {
  const before = await withPvdrv(1, (_, peer) => peer.stats());
  bindDevice(PCI, "kernel", { force: true });
  let k = await kernelInterface(PCI);
  const tx = await new Peer([
    "txrate",
    k.name,
    String(WINDOWS * WINDOW_S),
    String(SIZE),
    macToString(before.mac),
  ])
    .result();
  const after = await withPvdrv(1, async (_, peer) => {
    const s = await peer.stats();
    await peer.blast(FLOOD);
    await peer.confirm(); // the NIC closes next
    return s;
  });
  bindDevice(PCI, "kernel", { force: true });
  k = await kernelInterface(PCI);
  const counter = `/sys/class/net/${k.name}/statistics/rx_packets`;
  const read = () => Number(Deno.readTextFileSync(counter));
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
  const rx: number[] = [];
  for (let w = 0; w < WINDOWS; w++) {
    const n0 = read(), t0 = performance.now();
    await new Promise((r) => setTimeout(r, WINDOW_S * 1000));
    rx.push((read() - n0) / ((performance.now() - t0) / 1000));
  }
  // The queue pairs the kernel enabled (/sys/class/net/X/queues has one rx-N per pair in use).
  const queues =
    [...Deno.readDirSync(`/sys/class/net/${k.name}/queues`)].filter((e) => e.name.startsWith("rx-"))
      .length;
  await withPvdrv(1, async (_, peer) => {
    await peer.stopBlast();
    await peer.confirm(); // the NIC closes next
  });
  return { tx: [(after.tapRx - before.tapRx) / tx.seconds], rx, queues };
}

for (const queues of [1, 2, MQ_QUEUES]) {
  const row = await withPvdrv(queues, async (nic, peer) => {
    const t = await txRates(nic, peer);
    const rx = await rxRates(nic, peer);
    return {
      tx: summarize(t.rates),
      txSent: summarize(t.sent),
      rx: summarize(rx.rates),
      rxPerQueue: rx.perQueue,
    };
  });
  console.log(`PVDRV-MQBENCH ${JSON.stringify({ driver: "pvdrv", queues, ...row })}`);
}
const kr = await kernelRates();
console.log(
  `PVDRV-MQBENCH ${
    JSON.stringify({ driver: "kernel", queues: kr.queues, tx: summarize(kr.tx), rx: summarize(kr.rx) })
  }`,
);
