/**
 * The benchmark machinery: window rates from host samples, medians, the report's ratios and CPU rows, the SVG plot,
 * and the driver-side loops the VM benchmark runs (countFrames in polling and interrupt mode, forward, headerOnly).
 */
import assert from "assert";
import { summarize, windowRates, type WireSample } from "../../lab/outer/wire_traffic.ts";
import { markdownTables, pairedRatios, svgPlot } from "../../lab/outer/bench_report.ts";
import type { VmBenchResult } from "../../lab/outer/vm_bench.ts";
import { FULL_PLAN } from "../../lab/bench_plan.ts";
import { countFrames, forward, generate, receive } from "../../apps/traffic.ts";
import { checkFrame, FrameCheck, writeFrame } from "../../apps/frames.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { vhostTable } from "../../lab/outer/vhost_bench.ts";

/** Samples every 20 ms from t=100 s for `secs`, sink1 growing at `rate(t)`. */
function samples(secs: number, rate: (t: number) => number): WireSample[] {
  const out: WireSample[] = [];
  let n = 0;
  for (let t = 100; t <= 100 + secs + 1e-9; t += 0.02) {
    out.push({ t, sink1: Math.round(n), sink2: 0, blasted: Math.round(2 * n) });
    n += rate(t) * 0.02;
  }
  return out;
}

Deno.test("windowRates: per-window rates from cumulative samples; windows past the samples are left out", () => {
  const s = samples(3, (t) => (t < 101 ? 1000 : t < 102 ? 2000 : 4000));
  const w = windowRates(s, (x) => x.sink1, 100, 103, 3);
  assert.equal(w.length, 3);
  for (const [i, want] of [1000, 2000, 4000].entries()) {
    assert.ok(Math.abs(w[i] - want) / want < 0.03, `window ${i}: ${w[i]} vs ${want}`);
  }
  assert.ok(Math.abs(windowRates(s, (x) => x.blasted, 100, 101, 1)[0] - 2000) < 60);
  // A window reaching past the last sample has no right edge.
  assert.equal(windowRates(s, (x) => x.sink1, 102, 106, 2).length, 0);
});

Deno.test("summarize: median of odd and even counts, min and max", () => {
  assert.deepEqual(summarize([3, 1, 2]), { median: 2, min: 1, max: 3, windows: [3, 1, 2] });
  assert.equal(summarize([4, 1, 3, 2]).median, 2.5);
  assert.equal(summarize([]).median, 0);
});

function result(): VmBenchResult {
  const row = (
    test: "tx" | "rx" | "fwd",
    driver: "pvdrv" | "testpmd" | "kernel",
    batch: number,
    w: number[],
    round = 1,
  ) => ({
    test,
    driver,
    size: 64,
    batch,
    round,
    windows: w,
    countedBy: "test",
    offered: test === "tx" ? undefined : 300_000,
  });
  return {
    plan: { ...FULL_PLAN, windows: 3, rounds: 1 },
    date: "",
    dpdk: "22.11",
    rows: [
      row("tx", "pvdrv", 32, [40_000, 50_000, 60_000]),
      row("tx", "testpmd", 32, [100_000, 90_000, 110_000]),
      row("tx", "kernel", 32, [25_000, 25_000, 25_000]),
      row("rx", "pvdrv", 32, [70_000, 80_000, 75_000]),
      row("rx", "testpmd", 32, [75_000, 75_000, 75_000]),
    ],
    cpu: [
      { mode: "idle", rate: 0, received: 0, seconds: 2, busySeconds: 0.2 }, // 10% busy when idle
      { mode: "kernel", rate: 10_000, received: 30_000, seconds: 3, busySeconds: 1.5 }, // (1.5-0.3)/30k = 40 µs
      { mode: "pvdrv-irq", rate: 10_000, received: 30_000, seconds: 3, busySeconds: 0.9 }, // 20 µs
    ],
  };
}

Deno.test("markdownTables: medians with min–max, ratios from the medians, CPU less the idle guest", () => {
  const md = markdownTables(result());
  assert.match(md, /\| 32 \| 50k \(40k–60k\) \| 100k \(90k–110k\) \| 25k \(25k–25k\) \| 0\.50x \| 2\.00x \|/);
  assert.match(md, /\| 32 \| 75k \(70k–80k\) \| 75k \(75k–75k\) \| 1\.00x \| 300k \|/);
  assert.match(md, /\| 10k \| kernel \| 10k \| 40\.0 \| 1\.00x \|/);
  assert.match(md, /\| 10k \| pvdrv-irq \| 10k \| 20\.0 \| 0\.50x \|/);
  assert.doesNotMatch(md, /\| idle \|/);
});

Deno.test("markdownTables: pvdrv/testpmd is the median of paired rounds' ratios, not the ratio of pooled medians", () => {
  const r = result();
  const row = (driver: "pvdrv" | "testpmd", round: number, w: number[]) => ({
    test: "fwd" as const,
    driver,
    size: 64,
    batch: 8,
    round,
    windows: w,
    countedBy: "test",
    offered: 300_000,
  });
  // The machine slows down from round to round; each round's pair moves together.
  r.rows.push(
    row("pvdrv", 1, [110_000, 110_000]),
    row("testpmd", 1, [100_000, 100_000]),
    row("pvdrv", 2, [60_000, 60_000]),
    row("testpmd", 2, [50_000, 50_000]),
    row("pvdrv", 3, [36_000, 36_000]),
    row("testpmd", 3, [40_000, 40_000]),
  );
  r.plan = { ...r.plan, windows: 2, rounds: 3 };
  assert.deepEqual(
    pairedRatios(r.rows, "fwd", 64, 8, "pvdrv", "testpmd").map((x) => x.toFixed(2)),
    ["1.10", "1.20", "0.90"],
  );
  const md = markdownTables(r);
  // Pooled medians would give 60k/50k = 1.20x; the paired median is 1.10x, with the rounds' spread.
  assert.match(md, /\| 8 \| 60k \(36k–110k\) \| 50k \(40k–100k\) \| 1\.10x \(0\.90–1\.20\) \| 300k \|/);
  assert.match(md, /median of 6 windows, min–max; pvdrv\/testpmd: median of 3 paired rounds/);
  // One row per driver and batch in the plot, whatever the rounds.
  assert.equal((svgPlot(r).match(/<path /g) ?? []).length, 7); // tx 3, rx 2, fwd 2
});

Deno.test("svgPlot: one panel per test and size, one line per driver with data", () => {
  const svg = svgPlot(result());
  assert.ok(svg.startsWith("<svg") && svg.trimEnd().endsWith("</svg>"));
  assert.equal((svg.match(/<path /g) ?? []).length, 5); // tx: 3 drivers, rx: 2
  assert.match(svg, /TX \(host-counted\), 64 B/);
  assert.match(svg, /RX \(receiver-counted, host offers\), 64 B/);
});

function frame(seq: number, dst: Uint8Array): Uint8Array {
  const f = new Uint8Array(60);
  writeFrame(f, 60, seq, dst, new Uint8Array([2, 0, 0, 0, 0, 0xfe]));
  return f;
}

Deno.test("countFrames: counts every frame at its marks, polling and on interrupts (NAPI-style sleepRx)", async () => {
  for (const irq of ["poll", "msix"] as const) {
    const model = new VirtioNetModel();
    const nic = VirtioNet.openPci(model.pci(), { irq });
    let delivered = 0;
    const burst = () => {
      for (let i = 0; i < 5; i++) delivered += model.deliver(frame(delivered, nic.mac)) ? 1 : 0;
    };
    // Polling: frames arrive between loop turns; interrupt mode: while the driver sleeps on the vector.
    const feeder = setInterval(burst, 5);
    if (irq === "msix") model.vectors[model.queue(0).vector].whileBlocked = burst;
    try {
      const t0 = performance.now();
      const counts = await countFrames(nic, {
        batch: 8,
        marks: [t0 + 30, t0 + 120, t0 + 200],
        interrupts: irq === "msix",
      });
      assert.equal(counts.length, 3);
      assert.ok(counts[0] <= counts[1] && counts[1] <= counts[2], `${irq}: ${counts}`);
      assert.ok(counts[2] - counts[0] >= 20, `${irq}: frames counted between marks: ${counts}`);
      assert.ok(counts[2] <= delivered, "never more than was delivered");
      // Interrupt mode slept on the interrupt and was woken by it; polling never arms it.
      assert.equal(
        nic.stats()[0].interrupts > 0,
        irq === "msix",
        `${irq}: ${nic.stats()[0].interrupts} wake-ups`,
      );
    } finally {
      clearInterval(feeder);
      await nic.close();
    }
  }
});

Deno.test("receive on interrupts sleeps in this thread (sleepRx), woken by the vector, and flushes acks first", async () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci(), { irq: "msix" });
  let delivered = 0, acked = 0;
  // The device delivers only while the driver sleeps on the vector, and only once the last ack went out.
  model.vectors[model.queue(0).vector].whileBlocked = () => {
    if (delivered - acked >= 10) return;
    for (let i = 0; i < 5 && delivered < 100; i++) {
      delivered += model.deliver(frame(delivered, nic.mac)) ? 1 : 0;
    }
  };
  try {
    const r = await receive(nic, {
      count: 100,
      idleTimeoutMs: 2000,
      interrupts: true,
      progressEvery: 5,
      onProgress: (ok) => queueMicrotask(() => acked = ok), // delivered when the loop yields
    });
    assert.deepEqual({ received: r.received, corrupt: r.corrupt }, { received: 100, corrupt: 0 });
    assert.ok(
      r.waits >= 10 && nic.stats()[0].interrupts >= 10,
      `waits ${r.waits}, ${nic.stats()[0].interrupts}`,
    );
  } finally {
    await nic.close();
  }
});

Deno.test("sleepRx: true at once with frames waiting, false after the timeout without; refused when polling", () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci(), { irq: "msix" });
  try {
    assert.equal(nic.sleepRx(1), false);
    model.deliver(frame(1, nic.mac));
    assert.equal(nic.sleepRx(1000), true);
  } finally {
    nic.close();
  }
  const polled = VirtioNet.openPci(new VirtioNetModel().pci());
  assert.throws(() => polled.sleepRx(1), /polling mode/);
  polled.close();
});

Deno.test("forward: every frame received on one NIC leaves the other unchanged", async () => {
  const a = new VirtioNetModel(), b = new VirtioNetModel();
  const from = VirtioNet.openPci(a.pci()), to = VirtioNet.openPci(b.pci());
  try {
    for (let i = 0; i < 40; i++) a.deliver(frame(i, from.mac));
    const r = await forward(from, to, { batch: 16, until: performance.now() + 50 });
    assert.deepEqual(r, { forwarded: 40, dropped: 0 });
    const sent = b.sent[0];
    assert.equal(sent.length, 40);
    const seq = new Uint32Array(1);
    for (let i = 0; i < 40; i++) {
      assert.equal(checkFrame(sent[i], sent[i].length, seq), FrameCheck.Ok);
      assert.equal(seq[0], i);
    }
  } finally {
    await from.close();
    await to.close();
  }
});

for (const ring of ["split", "packed"] as const) {
  Deno.test(`forward: allocates nothing per frame (200 frames of 60 and 1000 bytes per round, heap around forward) [${ring}]`, async () => {
    const a = new VirtioNetModel(), b = new VirtioNetModel({ autoProcess: false });
    const from = VirtioNet.openPci(a.pci(), { ring }), to = VirtioNet.openPci(b.pci(), { ring });
    assert.equal(to.ring, ring);
    try {
      const small = frame(1, from.mac), big = new Uint8Array(1000);
      writeFrame(big, 1000, 2, from.mac, new Uint8Array([2, 0, 0, 0, 0, 0xfe]));
      const deltas: number[] = [];
      for (let round = 0; round < 40; round++) {
        for (let i = 0; i < 200; i++) assert.ok(a.deliver(i % 2 ? big : small));
        const h0 = Deno.memoryUsage().heapUsed;
        const r = await forward(from, to, { batch: 32, until: Infinity, frames: 200 });
        const h1 = Deno.memoryUsage().heapUsed;
        assert.deepEqual(r, { forwarded: 200, dropped: 0 });
        assert.equal(b.fastComplete(1, 0), 200); // the TX ring is free again (outside the measurement)
        if (round >= 10) deltas.push(h1 - h0); // after warm-up (compilation allocates)
      }
      deltas.sort((x, y) => x - y);
      // A view per frame would be >= 200 x 56 bytes; the call's own arrays and promise are a few hundred.
      assert.ok(
        deltas[deltas.length >> 1] < 2000,
        `median heap growth per 200 frames: ${deltas[deltas.length >> 1]} B`,
      );
    } finally {
      await from.close();
      await to.close();
    }
  });
}

Deno.test("generate headerOnly: writes the header and sequence only, the payload stays as it was", async () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci());
  try {
    const dst = new Uint8Array([2, 0, 0, 0, 0, 1]);
    await generate(nic, { count: 300, minSize: 100, maxSize: 100, dst, headerOnly: true });
    const sent = model.sent[0];
    assert.equal(sent.length, 300);
    const seq = new Uint32Array(1);
    // Never-written buffers still hold zeros: a headerOnly frame fails the payload check but names its sequence.
    assert.equal(checkFrame(sent[0], 100, seq), FrameCheck.Corrupt);
    assert.deepEqual([...sent[299].subarray(0, 6)], [...dst]);
    assert.equal(new DataView(sent[299].buffer, sent[299].byteOffset).getUint32(18), 299);
    assert.ok(sent[0].subarray(24).every((x) => x === 0));
  } finally {
    await nic.close();
  }
});

Deno.test("forward: with no deadline it runs until its frame count, however many polls that takes", async () => {
  const a = new VirtioNetModel(), b = new VirtioNetModel();
  const from = VirtioNet.openPci(a.pci()), to = VirtioNet.openPci(b.pci());
  try {
    for (let i = 0; i < 100; i++) assert.ok(a.deliver(frame(i, from.mac)));
    // One frame per batch: 100 polls, past the 64 after which the clock is first read.
    const r = await forward(from, to, { batch: 1, until: Infinity, frames: 100 });
    assert.deepEqual(r, { forwarded: 100, dropped: 0 });
  } finally {
    await from.close();
    await to.close();
  }
});

Deno.test("receive: stops at exactly its count, and counts a repeated sequence number as a duplicate", async () => {
  const model = new VirtioNetModel();
  const nic = VirtioNet.openPci(model.pci());
  try {
    for (const seq of [0, 1, 1, 2, 3, 4]) assert.ok(model.deliver(frame(seq, nic.mac)));
    // A frame that arrives once the count is reached is not the run's: it stays in the ring.
    const onFrame = (_b: unknown, _c: unknown, seq: number) =>
      void (seq === 4 && model.deliver(frame(9, nic.mac)));
    const r = await receive(nic, { count: 5, idleTimeoutMs: 200, onFrame });
    assert.equal(r.received, 5);
    assert.equal(r.duplicate, 1);
    const out: PacketBuffer[] = [];
    assert.equal(nic.receiveBatch(out, 8), 1, "the late frame is still there");
    nic.release(out, 1);
  } finally {
    await nic.close();
  }
});

Deno.test("bench --vhost: the table has each cell, a ratio to DPDK, and CPU per packet from the windows", () => {
  const row = (
    backend: string,
    dir: "tx" | "rx",
    size: number,
    pps: number,
    rate = 0,
    cpuSeconds?: number,
  ) => ({
    backend,
    dir,
    size,
    rate,
    frames: pps * 2,
    seconds: 2,
    pps,
    cpuSeconds,
  });
  const t = vhostTable([
    row("pvdrv", "tx", 60, 50_000),
    row("dpdk", "tx", 60, 40_000),
    row("qemu", "tx", 60, 30_000),
    row("pvdrv", "tx", 60, 10_000, 10_000, 0.2),
    row("dpdk", "tx", 60, 10_000, 10_000, 2),
  ]);
  assert.match(t, /guest TX 60 B \(frames\/s\) +\| 50\.0k \| 40\.0k \| 30\.0k \| 1\.25× \|/);
  assert.match(t, /guest RX 1514 B \(frames\/s\) +\| – \| – \| – \| – \|/);
  // 0.2 s over 20,000 frames: 10 µs; DPDK's 2 s: 100 µs.
  assert.match(t, /CPU per packet at 10k\/s \(µs\) +\| 10\.0 \| 100\.0 \| – \| 0\.10× \|/);
});

for (const ring of ["split", "packed"] as const) {
  Deno.test(`model fastComplete: a reset and a new driver get new ring views, not the old ones [${ring}]`, async () => {
    const model = new VirtioNetModel({ autoProcess: false });
    const bufs: PacketBuffer[] = new Array(8);
    for (let open = 0; open < 2; open++) {
      const nic = VirtioNet.openPci(model.pci(), { ring });
      try {
        for (let round = 0; round < 3; round++) {
          const k = nic.allocTx(bufs, 8);
          assert.equal(k, 8);
          for (let i = 0; i < k; i++) bufs[i].length = 60;
          assert.equal(nic.sendBatch(bufs, k), 8);
          assert.equal(model.fastComplete(1, 0), 8, `open ${open}, round ${round}`);
          assert.equal(nic.reclaimTx(), 8); // the driver sees them in its own (new) used ring
        }
      } finally {
        await nic.close();
      }
    }
  });
}
