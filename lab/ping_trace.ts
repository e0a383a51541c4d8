/**
 * Where a slow ping through pvdrv spends its time, told by QEMU itself:
 * `deno run -A lab/ping_trace.ts [--count N] [--interval MS] [--hot-ms MS]`. One lab boot with QEMU's trace of
 * the virtqueue events (`virtio_queue_notify`, a doorbell; `virtqueue_flush`, buffers handed back;
 * `virtio_notify`, an interrupt raised), while `lab/guest/ping_wall.ts` pings the guest kernel's stack, first
 * from the guest kernel on the same NIC, then through pvdrv (`--hot-ms`: NetHost's `hotMs`). Each of pvdrv's
 * pings is cut into its steps as QEMU saw them — pvdrv's request doorbell, the request out of pvdrv's TX ring,
 * into the peer's RX ring, the peer's interrupt, the peer's reply doorbell, the reply into pvdrv's RX ring,
 * pvdrv's interrupt — and set beside the round trip pvdrv measured; the peer's answers are timed for both
 * pingers. Pings are matched by order (the guest's clock drifts from the host's under TCG).
 * `PVDRV_KEEP_TRACE=1` keeps QEMU's trace file (its path is printed) to be read again.
 * @module
 */
import { parseArgs } from "node:util";
import { runInGuest } from "./outer/qemu.ts";
import { DRIVER_V8_FLAGS } from "../hal/event_loop.ts";

/** One traced event: host time (ms), what, the device and the queue. */
export interface TraceEvent {
  t: number;
  what: "doorbell" | "flush" | "irq";
  dev: string;
  queue: number;
}

/**
 * QEMU's log-backend trace lines (`-msg timestamp=on`: `PID@SECONDS.MICROS:event args`) as events; a queue is
 * known by the `vq` pointer its doorbell named first (flush and notify name only the queue).
 */
export function parseTrace(text: string): TraceEvent[] {
  const byVq = new Map<string, [string, number]>(), out: TraceEvent[] = [];
  for (const line of text.split("\n")) {
    const m = /^\d+@(\d+)\.(\d{6}):(virtio_queue_notify|virtqueue_flush|virtio_notify) (.*)$/.exec(line);
    if (!m) continue;
    const t = Number(m[1]) * 1000 + Number(m[2]) / 1000, args = m[4]; // to 0.25 µs at today's epoch
    const kind = m[3];
    if (kind === "virtio_queue_notify") {
      const d = /vdev (\S+) n (\d+) vq (\S+)/.exec(args);
      if (!d) continue;
      byVq.set(d[3], [d[1], Number(d[2])]);
      out.push({ t, what: "doorbell", dev: d[1], queue: Number(d[2]) });
    } else {
      const q = byVq.get(/vq (\S+)/.exec(args)?.[1] ?? "");
      if (q) out.push({ t, what: kind === "virtqueue_flush" ? "flush" : "irq", dev: q[0], queue: q[1] });
    }
  }
  return out;
}

/** The steps of one ping's chain (ms each), as QEMU saw them; `irqAfter` null when pvdrv's RX was not armed. */
export interface Chain {
  doorbell: number;
  steps: { txDone: number; peerRx: number; peerIrq: number; peerDoorbell: number; replyRx: number };
  /** From the reply landing in pvdrv's RX ring to QEMU raising pvdrv's interrupt (null: none raised). */
  irqAfter: number | null;
  /** Doorbell to reply in pvdrv's RX ring. */
  total: number;
}

/**
 * The two NICs of the trace: the peer takes TX interrupts all along (the kernel's virtio_net), the pinger is the
 * other one that rings TX doorbells (pvdrv never asks for TX interrupts; the kernel's run on it comes first and
 * is shorter than the peer's whole boot).
 */
export function devices(ev: TraceEvent[]): { pinger: string; peer: string } {
  const irqs = new Map<string, number>(), doorbells = new Map<string, number>();
  for (const e of ev) {
    if (e.what === "irq" && e.queue === 1) irqs.set(e.dev, (irqs.get(e.dev) ?? 0) + 1);
    if (e.what === "doorbell" && e.queue === 1) doorbells.set(e.dev, (doorbells.get(e.dev) ?? 0) + 1);
  }
  const peer = [...irqs].sort((a, b) => b[1] - a[1])[0]?.[0];
  const pinger = [...doorbells].filter(([d]) => d !== peer).sort((a, b) => b[1] - a[1])[0]?.[0];
  if (!peer || !pinger) throw new Error("the trace has no pair of NICs exchanging frames");
  return { pinger, peer };
}

/**
 * How long the peer took to answer, whoever pinged: from each receive interrupt QEMU raised for it in
 * [`from`, `to`) to its next TX doorbell (ms). Needs no flush events, which QEMU 7.2 traces for split rings only
 * (the kernel's virtio_net takes the lab's packed rings).
 */
export function peerAnswers(ev: TraceEvent[], peer: string, from: number, to: number): number[] {
  const out: number[] = [];
  let irq = -1;
  for (const e of ev) {
    if (e.t < from || e.t >= to || e.dev !== peer) continue;
    if (e.what === "irq" && e.queue === 0) irq = e.t;
    else if (e.what === "doorbell" && e.queue === 1 && irq >= 0) out.push(e.t - irq), irq = -1;
  }
  return out;
}

/**
 * The chains of the run: the devices are told apart by their interrupts — the kernel's virtio_net takes TX
 * interrupts (queue 1), pvdrv never asks for them. Every doorbell of pvdrv's TX queue starts a chain.
 */
export function chains(ev: TraceEvent[]): Chain[] {
  const { peer, pinger: pv } = devices(ev);
  // A step is looked for within a second of the one before: a doorbell whose chain QEMU did not trace (flushes
  // are traced for split rings only) must not borrow the events of a later ping.
  const next = (from: number, what: TraceEvent["what"], dev: string, queue: number) => {
    for (let j = from + 1; j < ev.length && ev[j].t - ev[from].t < 1000; j++) {
      const e = ev[j];
      if (e.what === what && e.dev === dev && e.queue === queue) return j;
    }
    return -1;
  };
  const out: Chain[] = [];
  ev.forEach((e, i) => {
    if (e.what !== "doorbell" || e.dev !== pv || e.queue !== 1) return;
    const idx = [i];
    for (
      const [what, dev, q] of [
        ["flush", pv, 1],
        ["flush", peer, 0],
        ["irq", peer, 0],
        ["doorbell", peer, 1],
        [
          "flush",
          pv,
          0,
        ],
      ] as const
    ) {
      const j = next(idx[idx.length - 1], what, dev, q);
      if (j < 0) return;
      idx.push(j);
    }
    const t = idx.map((j) => ev[j].t), landed = idx[5];
    const irq = next(landed, "irq", pv, 0), nextBell = next(i, "doorbell", pv, 1);
    out.push({
      doorbell: t[0],
      steps: {
        txDone: t[1] - t[0],
        peerRx: t[2] - t[1],
        peerIrq: t[3] - t[2],
        peerDoorbell: t[4] - t[3],
        replyRx: t[5] - t[4],
      },
      irqAfter: irq >= 0 && (nextBell < 0 || irq < nextBell) ? ev[irq].t - t[5] : null,
      total: t[5] - t[0],
    });
  });
  return out;
}

/**
 * The chains before and after the last pause of over a second between doorbells: what came before pvdrv's run
 * (the boot's frames), then pvdrv's run (its warm-up, then the pings).
 */
export function splitRuns(all: Chain[]): [Chain[], Chain[]] {
  let at = 0;
  for (let i = 1; i < all.length; i++) if (all[i].doorbell - all[i - 1].doorbell > 1000) at = i;
  return [all.slice(0, at), all.slice(at)];
}

/** One reply the guest printed: its sequence number, when it was sent (guest wall clock, ms) and its round trip. */
export interface Ping {
  seq: number;
  sentAt: number;
  rtt: number;
}

/** The guest's `PING seq sentAt rtt` lines. */
export function parsePings(lines: string[]): Ping[] {
  return lines.flatMap((l) => {
    const m = /^PING (\d+) ([\d.]+) ([\d.]+)$/.exec(l.trim());
    return m ? [{ seq: Number(m[1]), sentAt: Number(m[2]), rtt: Number(m[3]) }] : [];
  });
}

/**
 * Each ping's chain, or null: the chain whose doorbell is nearest the ping's send time on the host's clock. The
 * guest's clock drifts from the host's under TCG (milliseconds over seconds), so the offset between them is
 * followed from ping to ping; a chain of no ping (an ARP frame) is skipped, and a ping with no chain within
 * `slackMs` gets null. Where the run starts among the chains is not known (a warm-up, an ARP frame come before),
 * so each start near "the last chains are the run's" is tried, and the one kept is the one that never pairs a
 * ping with a chain slower than its own round trip (QEMU's part cannot outlast the whole), then the one that
 * pairs the most.
 */
export function alignPings(pings: Ping[], all: Chain[], slackMs = 4): (Chain | null)[] {
  if (!pings.length || !all.length) return pings.map(() => null);
  const bells = all.map((c) => c.doorbell);
  const follow = (start: number) => {
    const n = Math.min(20, pings.length, bells.length - start);
    const offs = pings.slice(0, n).map((p, i) => bells[start + i] - p.sentAt).sort((a, b) => a - b);
    // The offset is the median of the last matches': one odd match (a send time read late) does not derail it.
    const recent = [offs[n >> 1]];
    let from = 0, impossible = 0, paired = 0;
    const out = pings.map((p) => {
      const sorted = recent.toSorted((a, b) => a - b), t = p.sentAt + sorted[sorted.length >> 1];
      let j = -1;
      for (let k = from; k < bells.length && bells[k] <= t + slackMs; k++) {
        if (j < 0 || Math.abs(bells[k] - t) < Math.abs(bells[j] - t)) j = k;
      }
      if (j < 0 || Math.abs(bells[j] - t) > slackMs) return null;
      recent.push(bells[j] - p.sentAt);
      if (recent.length > 15) recent.shift();
      from = j + 1;
      paired++;
      if (all[j].total > p.rtt + 0.5) impossible++;
      return all[j];
    });
    return { out, impossible, paired };
  };
  const guess = Math.max(0, all.length - pings.length);
  let best: ReturnType<typeof follow> | null = null;
  for (const d of [0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5]) { // the guess first: it wins a tie
    const start = guess + d;
    if (start < 0 || start >= bells.length) continue;
    const r = follow(start);
    if (
      !best || r.impossible < best.impossible || (r.impossible === best.impossible && r.paired > best.paired)
    ) {
      best = r;
    }
  }
  return best!.out;
}

if (import.meta.main) {
  const usage = (why: string): never => {
    console.error(`lab/ping_trace.ts: ${why}`);
    Deno.exit(2);
  };
  let values: { count?: string; interval?: string; "hot-ms"?: string } = {};
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: { count: { type: "string" }, interval: { type: "string" }, "hot-ms": { type: "string" } },
    }));
  } catch (e) {
    usage((e as Error).message.split("\n")[0]);
  }
  const count = Number(values.count ?? 500), interval = Number(values.interval ?? 10);
  const hot = values["hot-ms"] === undefined ? null : Number(values["hot-ms"]);
  if (!(Number.isInteger(count) && count >= 1) || !(interval > 0) || (hot !== null && !(hot >= 0))) {
    usage("--count takes a whole number >= 1, --interval and --hot-ms milliseconds");
  }
  const trace = Deno.makeTempFileSync({ prefix: "pvdrv-qemu-trace-" });
  const lines: string[] = [];
  const events = ["virtio_queue_notify", "virtqueue_flush", "virtio_notify"].flatMap((e) => ["-trace", e]);
  const r = await runInGuest(
    `deno run -A --no-check --v8-flags=${
      DRIVER_V8_FLAGS.join(",")
    } lab/guest/ping_wall.ts ${count} ${interval} ${hot ?? ""}`,
    { extraArgs: ["-msg", "timestamp=on", ...events, "-D", trace], onLine: (l) => lines.push(l) },
  );
  if (r.code !== 0) {
    throw new Error(`the guest's ping failed (exit ${r.code}):\n${lines.slice(-30).join("\n")}`);
  }
  const pings = parsePings(lines), ev = parseTrace(Deno.readTextFileSync(trace)), dev = devices(ev);
  const [, all] = splitRuns(chains(ev));
  if (!Deno.env.get("PVDRV_KEEP_TRACE")) Deno.removeSync(trace);
  else console.log(`trace kept: ${trace}`);
  const matched = alignPings(pings, all);
  const pairs = pings.flatMap((p, i) => matched[i] ? [{ p, c: matched[i]! }] : []);
  if (pairs.length < pings.length * 0.8) {
    throw new Error(
      `${pings.length} replies, only ${pairs.length} lined up with ${all.length} traced chains`,
    );
  }
  const q = (xs: number[], p: number) =>
    xs.toSorted((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];
  const f = (x: number | null | undefined) => x === null || x === undefined ? "–" : x.toFixed(3);
  const rtts = pairs.map(({ p }) => p.rtt), totals = pairs.map(({ c }) => c.total);
  console.log(`${count} pings at ${interval} ms through pvdrv (VFIO, MSI-X), ${pairs.length} lined up; ms:`);
  console.log(
    `  pvdrv's round trip:                p50 ${f(q(rtts, 0.5))} p99 ${f(q(rtts, 0.99))} max ${
      f(q(rtts, 1))
    }`,
  );
  console.log(
    `  QEMU: doorbell → reply in RX ring: p50 ${f(q(totals, 0.5))} p99 ${f(q(totals, 0.99))} max ${
      f(q(totals, 1))
    }`,
  );
  console.log(
    "\n| # | round trip | in QEMU | TX done | → peer RX | → peer irq | → peer doorbell | → reply RX | irq after |",
  );
  console.log("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (
    const { p, c } of pairs.toSorted((a, b) => b.p.rtt - a.p.rtt).slice(0, 10).sort((a, b) =>
      a.p.seq - b.p.seq
    )
  ) {
    const s = c.steps;
    console.log(
      `| ${p.seq} | ${f(p.rtt)} | ${f(c.total)} | ${f(s.txDone)} | ${f(s.peerRx)} | ${f(s.peerIrq)} | ${
        f(s.peerDoorbell)
      } | ${f(s.replyRx)} | ${f(c.irqAfter)} |`,
    );
  }
  const slow = pairs.filter(({ p }) => p.rtt > 3);
  const guest = slow.filter(({ c }) => c.total < 1 && c.irqAfter !== null).length;
  const peer = slow.filter(({ c }) => c.steps.peerDoorbell > 2).length;
  const qemu = slow.filter(({ c }) => c.steps.replyRx > 2 || c.steps.txDone > 2 || c.steps.peerRx > 2).length;
  console.log(
    `\n${slow.length} round trips above 3 ms: in ${guest} QEMU had the reply in pvdrv's RX ring within 1 ms and ` +
      `raised its interrupt (the wait is the guest waking pvdrv); in ${peer} the peer (the guest kernel) took ` +
      `over 2 ms from its interrupt to its reply's doorbell; in ${qemu} QEMU took over 2 ms to move a frame.`,
  );

  // The same peer answering the kernel's own ping on the same NIC, earlier in the boot: its last `count` doorbells
  // before pvdrv's run (QEMU 7.2 traces no flushes of the kernel's packed rings, so no chains there).
  const start = all[0].doorbell, ks = JSON.parse(lines.find((l) => l.startsWith("KERNEL "))!.slice(7));
  const kBells = ev.filter((e) =>
    e.what === "doorbell" && e.dev === dev.pinger && e.queue === 1 && e.t < start - 1000
  )
    .slice(-count).map((e) => e.t);
  const kAnswers = peerAnswers(ev, dev.peer, kBells[0], kBells[kBells.length - 1] + 100);
  const pAnswers = peerAnswers(ev, dev.peer, pairs[0].c.doorbell, pairs[pairs.length - 1].c.doorbell + 100);
  const row = (name: string, p99: number, xs: number[]) =>
    `| ${name} | ${f(p99)} | ${f(q(xs, 0.5))} / ${f(q(xs, 0.99))} / ${f(q(xs, 1))} | ${
      xs.filter((x) => x > 2).length
    } of ${xs.length} |`;
  console.log(
    `\nthe peer's answer (its receive interrupt → its reply's doorbell), the same peer for both; ms:`,
  );
  console.log("| pinger | round trip p99 | peer's answer p50 / p99 / max | answers > 2 ms |");
  console.log("| --- | ---: | --- | ---: |");
  console.log(row("the kernel (virtio_net)", ks.p99, kAnswers));
  console.log(row("pvdrv", q(rtts, 0.99), pAnswers));
}
