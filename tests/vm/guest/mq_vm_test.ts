/**
 * Real multi-queue: 0000:00:0a.0 is a QEMU virtio-net with 4 queue pairs on a multi-queue TAP device whose host
 * side lives in a network namespace made for the run, where lab/c/mqpeer.c verifies every frame. tun picks the
 * queue of a frame for the guest by flow hash, and steers a flow's replies to the queue the flow was sent from.
 */
import assert from "assert";
import { checkFlowFrame, FrameCheck, writeFlowFrame } from "../../../apps/frames.ts";
import type { PacketBuffer } from "../../../drivers/net/packet_pool.ts";
import { VirtioNet } from "../../../drivers/virtio/net.ts";
import { VfioPciFunction } from "../../../ffi/pci.ts";
import { MqPeerClient } from "../../../lab/guest/mq_peer.ts";
import { MQ_QUEUES } from "../../../lab/topology.ts";
import { ensureBound, guestTest, LAB, OUT } from "./env.ts";

function openMq(irq: "poll" | "msix" = "poll"): VirtioNet {
  ensureBound(LAB.multiQueueTap.pci, "vfio-pci");
  return VirtioNet.openPci(VfioPciFunction.open(LAB.multiQueueTap.pci), {
    ownsPci: true,
    queues: MQ_QUEUES,
    irq,
  });
}

/** Received flow frames, checked, with the queue each flow arrived on. */
class FlowTally {
  received = 0;
  corrupt = 0;
  /** Frames of a flow that arrived on another queue than the flow's first frame (or than `expectQueue` says). */
  misplaced = 0;
  readonly perQueue = new Array<number>(MQ_QUEUES).fill(0);
  readonly flowQueue = new Map<number, number>();
  readonly #seen = new Set<number>();
  readonly #out = new Uint32Array(2);
  readonly #bufs: PacketBuffer[] = [];

  constructor(readonly expectQueue?: (flow: number) => number) {}

  /** Poll every queue once; returns the frames taken. */
  poll(nic: VirtioNet): number {
    let got = 0;
    for (let q = 0; q < nic.queues; q++) {
      const n = nic.receiveBatch(this.#bufs, 32, q);
      for (let i = 0; i < n; i++) this.#take(this.#bufs[i], q);
      nic.release(this.#bufs, n, q);
      got += n;
    }
    return got;
  }

  #take(b: PacketBuffer, q: number): void {
    const c = checkFlowFrame(b.data, b.length, this.#out);
    if (c === FrameCheck.Foreign) return;
    if (c === FrameCheck.Corrupt || this.#seen.has(this.#out[0])) {
      this.corrupt++;
      return;
    }
    const [seq, flow] = this.#out;
    this.#seen.add(seq);
    this.received++;
    this.perQueue[q]++;
    const want = this.expectQueue?.(flow) ?? this.flowQueue.get(flow) ?? q;
    this.flowQueue.set(flow, want);
    if (want !== q) this.misplaced++;
  }

  /** Poll until `count` frames arrived or nothing came for `idleMs`. */
  async until(nic: VirtioNet, count: number, idleMs = 5000): Promise<void> {
    let last = performance.now(), spins = 0;
    while (this.received < count && performance.now() - last < idleMs) {
      if (this.poll(nic) > 0) last = performance.now();
      if (++spins % 256 === 0) await new Promise((r) => setTimeout(r, 0));
    }
  }
}

guestTest(
  "multi-queue TAP (4 queue pairs, host side in its own namespace): every queue's flows reach the wire peer, " +
    "and each flow's replies come back on the queue that sent it",
  async () => {
    const nic = openMq();
    try {
      assert.equal(nic.queues, MQ_QUEUES, "the device granted 4 queue pairs");
      const peer = new MqPeerClient(nic);
      await peer.command("zero");
      await peer.command("listen 1");
      const peerMac = (await peer.stats()).mac;
      const FLOWS = 16, ROUNDS = 16; // per queue: flows q*16 .. q*16+15, one frame of each per round
      const tally = new FlowTally((flow) => Math.floor(flow / FLOWS));
      const bufs: PacketBuffer[] = [];
      let sent = 0;
      for (let r = 0; r < ROUNDS; r++) {
        for (let q = 0; q < MQ_QUEUES; q++) {
          assert.equal(nic.allocTx(bufs, FLOWS, q), FLOWS);
          for (let f = 0; f < FLOWS; f++) {
            const seq = sent + f, len = 60 + ((seq * 149) % (1514 - 60 + 1));
            writeFlowFrame(bufs[f].data, len, seq, q * FLOWS + f, peerMac, nic.mac);
            bufs[f].length = len;
          }
          assert.equal(nic.sendBatch(bufs, FLOWS, q), FLOWS);
          sent += FLOWS;
        }
        await tally.until(nic, sent);
        assert.equal(tally.received, sent, `round ${r}: every reflected frame came back`);
      }
      const s = await peer.stats();
      assert.deepEqual(
        { valid: s.valid, corrupt: s.corrupt, reflected: s.reflected },
        { valid: sent, corrupt: 0, reflected: sent },
        "the wire peer verified and reflected every frame",
      );
      assert.deepEqual({ corrupt: tally.corrupt, misplaced: tally.misplaced }, { corrupt: 0, misplaced: 0 });
      assert.deepEqual(tally.perQueue, new Array(MQ_QUEUES).fill(FLOWS * ROUNDS));
      for (let q = 0; q < MQ_QUEUES; q++) nic.reclaimTx(q);
      const perQueue = new Array(MQ_QUEUES).fill(FLOWS * ROUNDS);
      perQueue[0] += peer.sent; // control frames go out on queue 0
      assert.deepEqual(nic.stats().map((s) => s.txPackets), perQueue);
      Deno.writeTextFileSync(`${OUT}/mq-expect.json`, JSON.stringify({ valid: sent }));
    } finally {
      await nic.close();
    }
  },
);

guestTest(
  "multi-queue TAP: 4,000 frames of 64 new flows from the host spread over the queues, each flow on one queue",
  async () => {
    const nic = openMq();
    try {
      const peer = new MqPeerClient(nic);
      await peer.stats(); // the peer learns our MAC
      const COUNT = 4000;
      await peer.blast({ count: COUNT, flows: 64, first: 5000, size: 128, pps: 4000 });
      const tally = new FlowTally();
      await tally.until(nic, COUNT, 3000);
      assert.deepEqual({ received: tally.received, corrupt: tally.corrupt }, { received: COUNT, corrupt: 0 });
      assert.equal(tally.misplaced, 0, "every flow stayed on one queue");
      assert.equal(tally.flowQueue.size, 64);
      const used = tally.perQueue.filter((n) => n > 0).length;
      assert.ok(used >= 3, `64 flows landed on ${used} of ${MQ_QUEUES} queues (${tally.perQueue.join("/")})`);
      console.log(`frames per queue: ${tally.perQueue.join(" / ")}`);
    } finally {
      await nic.close();
    }
  },
);

guestTest(
  "multi-queue TAP over MSI-X: each queue pair's own vector wakes its receiver (1,000 frames, 64 flows, 2k/s)",
  async () => {
    const nic = openMq("msix");
    try {
      const peer = new MqPeerClient(nic);
      await peer.stats();
      const COUNT = 1000;
      await peer.blast({ count: COUNT, flows: 64, first: 7000, size: 200, pps: 2000 });
      const tally = new FlowTally();
      const t0 = performance.now();
      while (tally.received < COUNT && performance.now() - t0 < 10000) {
        // Sleep on each queue's interrupt in turn (briefly), then take whatever arrived anywhere.
        for (let q = 0; q < nic.queues; q++) nic.sleepRx(2, q);
        tally.poll(nic);
      }
      assert.deepEqual({ received: tally.received, corrupt: tally.corrupt }, { received: COUNT, corrupt: 0 });
      const irqs = nic.stats().map((s) => s.interrupts);
      for (let q = 0; q < nic.queues; q++) {
        if (tally.perQueue[q] > 0) assert.ok(irqs[q] > 0, `queue ${q} got frames but no interrupt (${irqs})`);
      }
      assert.ok(irqs.filter((n) => n > 0).length >= 3, `interrupts per queue: ${irqs.join("/")}`);
    } finally {
      await nic.close();
    }
  },
);
