import assert from "assert";
import {
  alignPings,
  type Chain,
  chains,
  devices,
  parsePings,
  parseTrace,
  peerAnswers,
  splitRuns,
} from "../../lab/ping_trace.ts";

// Two NICs as QEMU traces them: P (pvdrv: no TX interrupts) and K (the kernel's virtio_net: TX interrupts).
const P = "0x5500000000a0", K = "0x5500000000b0";
const vq = (dev: string, q: number) => `0x7f${dev.slice(-2)}${q}000`;
const at = (ms: number) => {
  const us = Math.round(ms * 1000);
  return `42@${1700000000 + Math.floor(us / 1e6)}.${String(us % 1e6).padStart(6, "0")}`;
};
const bell = (ms: number, dev: string, q: number) =>
  `${at(ms)}:virtio_queue_notify vdev ${dev} n ${q} vq ${vq(dev, q)}`;
const flush = (ms: number, dev: string, q: number) => `${at(ms)}:virtqueue_flush vq ${vq(dev, q)} count 1`;
const irq = (ms: number, dev: string, q: number) => `${at(ms)}:virtio_notify vdev ${dev} vq ${vq(dev, q)}`;

// Each driver's first RX fill rings the doorbell: that is where the trace names each RX queue's pointer.
const RX_FILLS = [bell(2, P, 0), bell(3, K, 0)];

/** One ping: pvdrv's doorbell at `t0`, the reply in its RX ring `total` ms later, its interrupt if `armed`. */
function ping(t0: number, total: number, armed: boolean): string[] {
  const out = [
    bell(t0, P, 1),
    flush(t0 + 0.03, P, 1),
    flush(t0 + 0.04, K, 0),
    irq(t0 + 0.05, K, 0),
    bell(t0 + total - 0.05, K, 1),
    flush(t0 + total - 0.04, K, 1),
    irq(t0 + total - 0.03, K, 1),
    flush(t0 + total, P, 0),
  ];
  if (armed) out.push(irq(t0 + total + 0.002, P, 0));
  return out;
}

Deno.test("ping trace: each ping's chain is cut into QEMU's steps, the interrupt told when raised", () => {
  const text = [
    "a line that is not a trace event",
    bell(1, "0x55000000ffff", 0), // another device (a 9p share) is left out
    ...RX_FILLS,
    ...ping(10, 0.3, false),
    ...ping(20, 2.5, true),
  ].join("\n");
  const ev = parseTrace(text);
  assert.equal(ev.length, 3 + 8 + 9);
  const c = chains(ev);
  assert.equal(c.length, 2);
  assert.ok(Math.abs(c[0].total - 0.3) < 1e-3, `${c[0].total}`);
  assert.equal(c[0].irqAfter, null); // pvdrv was polling: no interrupt
  assert.ok(Math.abs(c[1].total - 2.5) < 1e-3);
  assert.ok(Math.abs(c[1].steps.peerDoorbell - (2.5 - 0.05 - 0.05)) < 1e-3); // the peer's own time
  assert.ok(c[1].irqAfter !== null && Math.abs(c[1].irqAfter - 0.002) < 1e-3);
});

Deno.test("ping trace: the devices are told apart by their TX interrupts, whichever comes first", () => {
  // The same exchange with the kernel's NIC doorbelling more often than pvdrv's: still pvdrv's chains.
  const text = [...RX_FILLS, bell(1, K, 1), flush(1.01, K, 1), irq(1.02, K, 1), ...ping(10, 0.4, true)].join(
    "\n",
  );
  const c = chains(parseTrace(text));
  assert.equal(c.length, 1);
  assert.ok(Math.abs(c[0].total - 0.4) < 1e-3);
  assert.throws(() => chains(parseTrace(bell(1, P, 1))), /no pair of NICs/);
  // A flush of a queue whose doorbell the trace never named is left out, not guessed.
  assert.equal(parseTrace(flush(5, P, 0)).length, 0);
});

Deno.test("ping trace: the guest's reply lines", () => {
  assert.deepEqual(parsePings(["PING 3 1796645740948.005 0.761", "noise", " PING 4 1.5 12.25 "]), [
    { seq: 3, sentAt: 1796645740948.005, rtt: 0.761 },
    { seq: 4, sentAt: 1.5, rtt: 12.25 },
  ]);
});

Deno.test("ping trace: pings line up with their chains through a drifting clock and an extra frame", () => {
  const chain = (doorbell: number, total = 0.3): Chain => ({
    doorbell,
    steps: { txDone: 0, peerRx: 0, peerIrq: 0, peerDoorbell: 0, replyRx: 0 },
    irqAfter: null,
    total,
  });
  // Warm-up chains, then 100 pings 10 ms apart on the guest's clock; the host's clock runs 2% faster (20 ms over
  // the run); an ARP reply rings pvdrv's doorbell 4 ms after ping 50 and after the run; every tenth ping is slow (5 ms in
  // QEMU, 5.5 ms in all), which tells one start from its neighbours.
  const slow = (i: number) => i % 10 === 7;
  const pings = Array.from(
    { length: 100 },
    (_, i) => ({ seq: i, sentAt: 500 + 10 * i, rtt: slow(i) ? 5.5 : 0.5 }),
  );
  const bells = pings.map((_, i) => 2000 + 10.2 * i);
  const own = bells.map((b, i) => chain(b, slow(i) ? 5 : 0.3));
  const all = [
    ...[1000, 1010, 1020].map((b) => chain(b)),
    ...own.slice(0, 51),
    chain(bells[50] + 4),
    ...own.slice(51),
    chain(bells[99] + 10.2),
  ];
  const m = alignPings(pings, all);
  m.forEach((c, i) => assert.equal(c?.doorbell, bells[i], `ping ${i}`));
  // A ping whose chain is missing from the trace gets none, and its neighbours keep theirs.
  const gap = alignPings(pings, all.filter((c) => c.doorbell !== bells[70]));
  assert.equal(gap[70], null);
  assert.equal(gap[71]?.doorbell, bells[71]);
});

Deno.test("ping trace: pvdrv's run starts after the last pause of over a second", () => {
  const c = (doorbell: number): Chain => ({
    doorbell,
    steps: { txDone: 0, peerRx: 0, peerIrq: 0, peerDoorbell: 0, replyRx: 0 },
    irqAfter: null,
    total: 0,
  });
  // A 15 ms hiccup inside a run is not a pause; the last pause of over a second starts pvdrv's run.
  const [a, b] = splitRuns([0, 2000, 2010, 2025, 6035, 6045, 6060].map(c));
  assert.deepEqual(a.map((x) => x.doorbell), [0, 2000, 2010, 2025]);
  assert.deepEqual(b.map((x) => x.doorbell), [6035, 6045, 6060]);
  assert.deepEqual(splitRuns([10, 25, 35].map(c))[1].length, 3); // no pause: all of it is the run
  assert.deepEqual(splitRuns([]), [[], []]);
});

Deno.test("ping trace: the peer's answers are timed from its receive interrupt to its next TX doorbell", () => {
  const ev = parseTrace(
    [...RX_FILLS, ...ping(10, 0.3, true), ...ping(20, 2.5, false), ...ping(30, 0.4, true)].join("\n"),
  );
  assert.deepEqual(devices(ev), { pinger: P, peer: K });
  const T0 = 1700000000 * 1000; // the traces' epoch above
  const xs = peerAnswers(ev, K, T0, T0 + 100);
  assert.equal(xs.length, 3);
  [0.3 - 0.1, 2.5 - 0.1, 0.4 - 0.1].forEach((want, i) =>
    assert.ok(Math.abs(xs[i] - want) < 1e-3, `${xs[i]}`)
  );
  assert.equal(peerAnswers(ev, K, T0 + 15, T0 + 25).length, 1); // only the window's
});

Deno.test("ping trace: a doorbell whose steps were not traced borrows nothing from a later ping", () => {
  // The kernel's packed rings: doorbells and interrupts, no flushes; two seconds later pvdrv's pings.
  const untraced = [bell(5, P, 1), irq(5.05, K, 0), bell(5.3, K, 1), irq(5.4, P, 0)];
  const text = [...RX_FILLS, ...untraced, ...ping(2000, 0.3, true)].join("\n");
  const c = chains(parseTrace(text));
  assert.equal(c.length, 1);
  assert.ok(Math.abs(c[0].total - 0.3) < 1e-3);
});
