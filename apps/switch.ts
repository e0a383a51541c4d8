/**
 * A small L2 learning switch: frames move between ports — pvdrv NICs (a vhost-user guest port, a VFIO NIC) and
 * frame descriptors (a TAP device, a UDP link) — by destination MAC, learned from source MACs, flooded when unknown
 * or broadcast, never sent back where they came from. Partial checksums a guest left to its device are completed
 * on the way (the switch is the device). Per-port counters; an optional pcap tap sees every frame switched.
 *
 * The learning table holds at most {@link MAX_MACS} addresses, each forgotten {@link AGE_MS} after it was last seen:
 * a guest sending from random source MACs gets flooding, not this process's memory.
 * @module
 */
import type { Nic, PacketBuffer } from "../drivers/net/nic.ts";
import { MIN_FRAME, RX_CSUM_PARTIAL } from "../drivers/net/nic.ts";
import { completeAt } from "../net/checksum.ts";
import { Pacer, tick } from "../hal/event_loop.ts";
import type { FramePort } from "./bridge.ts";
import type { PcapWriter } from "./pcap.ts";

/** Addresses the switch learns at most. */
export const MAX_MACS = 4096;
/** Milliseconds an address is remembered after it was last seen. */
export const AGE_MS = 300_000;

const BATCH = 32;

/** One port's counters. */
export interface PortCounters {
  /** Frames received from the port. */
  rx: number;
  /** Bytes of those. */
  rxBytes: number;
  /** Frames sent out of the port. */
  tx: number;
  /** Bytes of those. */
  txBytes: number;
  /** Frames for the port that it could not take (link down, ring full, refused). */
  dropped: number;
  /** Frames from the port that were not frames (too short or too long). */
  bad: number;
}

/** A zeroed {@link PortCounters}. */
export function emptyPortCounters(): PortCounters {
  return { rx: 0, rxBytes: 0, tx: 0, txBytes: 0, dropped: 0, bad: 0 };
}

/** A port of the switch. */
export interface SwitchPort {
  /** Its name in counters and logs (`vhost-user:/run/vm0.sock`, `tap:pv0`). */
  readonly name: string;
  /** Its counters. */
  readonly counters: PortCounters;
  /** Receive up to `max` frames, handing each to `input` (its bytes are valid only during the call). */
  receive(input: (from: SwitchPort, d: Uint8Array, len: number) => void, max: number): number;
  /** Take a copy of one frame to send; false when the port cannot take it now (counted by the caller). */
  output(d: Uint8Array, len: number): boolean;
  /** Send what {@link output} took. */
  flush(): void;
  /** Resolves when the port may have frames (an interrupt, a readable descriptor, a front end arriving). */
  wait(): Promise<void>;
  /** Close the port. */
  close(): void | Promise<void>;
}

/** A pvdrv NIC as a switch port (queue pair 0). */
export class NicPort implements SwitchPort {
  readonly counters: PortCounters = emptyPortCounters();
  readonly #rx: PacketBuffer[] = new Array(BATCH);
  readonly #tx: PacketBuffer[] = new Array(BATCH);
  readonly #fresh: PacketBuffer[] = new Array(BATCH);
  #free = 0; // fresh[0..free): allocated TX buffers not yet filled
  #pending = 0; // tx[0..pending): filled, not yet sent

  /** Wraps `nic` (closed with the port). */
  constructor(readonly name: string, readonly nic: Nic) {}

  receive(input: (from: SwitchPort, d: Uint8Array, len: number) => void, max: number): number {
    const n = this.nic.receiveBatch(this.#rx, Math.min(max, BATCH));
    for (let i = 0; i < n; i++) {
      const b = this.#rx[i];
      // A guest's partial checksum (virtio 1.2 §5.1.6.2): the switch is its device, so it completes it.
      // UDP's field is 6 bytes in, and a computed zero goes out as all ones (RFC 768).
      if (b.flags & RX_CSUM_PARTIAL) {
        const at = b.csumStart + b.csumOffset;
        if (at + 2 <= b.length) completeAt(b.data, b.csumStart, b.length, at, b.csumOffset === 6);
      }
      this.counters.rx++;
      this.counters.rxBytes += b.length;
      input(this, b.data, b.length);
    }
    if (n) this.nic.release(this.#rx, n);
    return n;
  }

  output(d: Uint8Array, len: number): boolean {
    if (len > this.nic.maxFrame || !this.nic.linkUp()) return false;
    if (this.#pending === BATCH) this.flush();
    if (this.#free === 0) {
      this.#free = this.nic.allocTx(this.#fresh, BATCH);
      if (this.#free === 0) return false;
    }
    const b = this.#fresh[--this.#free];
    b.data.set(d.length === len ? d : d.subarray(0, len));
    b.length = len;
    this.#tx[this.#pending++] = b;
    return true;
  }

  flush(): void {
    const n = this.#pending;
    if (!n) return;
    this.#pending = 0;
    let sent = 0;
    try {
      sent = this.nic.sendBatch(this.#tx, n);
    } finally {
      for (let i = 0; i < sent; i++) this.counters.tx++, this.counters.txBytes += this.#tx[i].length;
      if (sent < n) {
        // The other side had no room: a switch drops rather than queue (the sender's protocols retry).
        this.counters.dropped += n - sent;
        for (let i = sent; i < n; i++) this.#tx[i - sent] = this.#tx[i];
        this.nic.release(this.#tx, n - sent);
      }
    }
  }

  wait(): Promise<void> {
    return this.nic.waitRx();
  }

  async close(): Promise<void> {
    if (this.#free) this.nic.release(this.#fresh, this.#free);
    this.#free = 0;
    await this.nic.close();
  }
}

/** A frame descriptor (a TAP device, a UDP link) as a switch port. */
export class FdPort implements SwitchPort {
  readonly counters: PortCounters = emptyPortCounters();
  readonly #buf = new Uint8Array(65536);

  /** Wraps `port`; `wait` resolves when its descriptor is readable, `close` closes it. */
  constructor(
    readonly name: string,
    readonly port: FramePort,
    readonly wait: () => Promise<void>,
    readonly close: () => void,
  ) {}

  receive(input: (from: SwitchPort, d: Uint8Array, len: number) => void, max: number): number {
    let n = 0;
    for (; n < max; n++) {
      const len = this.port.read(this.#buf, this.#buf.length);
      if (len < 0) break;
      this.counters.rx++;
      this.counters.rxBytes += len;
      input(this, this.#buf, len);
    }
    return n;
  }

  output(d: Uint8Array, len: number): boolean {
    if (!this.port.write(d, len)) return false;
    this.counters.tx++;
    this.counters.txBytes += len;
    return true;
  }

  flush(): void {}
}

/** How {@link runSwitch} runs. */
export interface SwitchOptions {
  /** Stop when this returns true (checked every round). */
  stop: () => boolean;
  /** Every frame switched, as received. */
  pcap?: PcapWriter;
  /** Called about every `reportMs` (default 1000). */
  onReport?: () => void;
  /** Milliseconds between reports. */
  reportMs?: number;
}

interface Learned {
  port: SwitchPort;
  seen: number;
}

/** The switch: its ports, its learning table and its counters. */
export class Switch {
  readonly #table = new Map<number, Learned>();
  readonly #input: (from: SwitchPort, d: Uint8Array, len: number) => void;
  /** Frames flooded (broadcast, multicast, unknown destination) and addresses not learned for a full table. */
  readonly counters = { flooded: 0, unlearned: 0 };
  #now = 0;
  #pcap: PcapWriter | undefined;

  /** A switch joining `ports`; with `pcap`, every frame switched is captured there. */
  constructor(readonly ports: SwitchPort[], pcap?: PcapWriter) {
    this.#input = (from, d, len) => this.#switch(from, d, len);
    this.#pcap = pcap;
  }

  /** Addresses learned now. */
  get learned(): number {
    return this.#table.size;
  }

  /** One round: every port's waiting frames switched and sent; returns the frames moved. */
  round(now: number): number {
    this.#now = now;
    let moved = 0;
    for (const p of this.ports) moved += p.receive(this.#input, BATCH);
    for (const p of this.ports) p.flush();
    return moved;
  }

  #switch(from: SwitchPort, d: Uint8Array, len: number): void {
    if (len < MIN_FRAME) {
      from.counters.bad++;
      return;
    }
    this.#pcap?.write(d, len);
    const src = mac(d, 6), dst = mac(d, 0);
    if (!(d[6] & 1)) this.#learn(src, from);
    const to = d[0] & 1 ? undefined : this.#table.get(dst);
    if (to && this.#now - to.seen <= AGE_MS) {
      if (to.port !== from && !to.port.output(d, len)) to.port.counters.dropped++;
      return;
    }
    this.counters.flooded++;
    for (const p of this.ports) {
      if (p !== from && !p.output(d, len)) p.counters.dropped++;
    }
  }

  #learn(src: number, from: SwitchPort): void {
    const e = this.#table.get(src);
    if (e) {
      e.port = from;
      e.seen = this.#now;
      return;
    }
    if (this.#table.size >= MAX_MACS) this.#expire();
    if (this.#table.size >= MAX_MACS) {
      this.counters.unlearned++;
      return;
    }
    this.#table.set(src, { port: from, seen: this.#now });
  }

  #expire(): void {
    for (const [k, e] of this.#table) if (this.#now - e.seen > AGE_MS) this.#table.delete(k);
  }

  /** Forget every address learned on `port` (it went down or left). */
  forget(port: SwitchPort): void {
    for (const [k, e] of this.#table) if (e.port === port) this.#table.delete(k);
  }

  /** Run until `o.stop()`: switch while frames come, sleep on every port at once when idle. */
  async run(o: SwitchOptions): Promise<void> {
    this.#pcap = o.pcap ?? this.#pcap;
    const pacer = new Pacer(), reportMs = o.reportMs ?? 1000;
    const waits = new Map<SwitchPort, Promise<void>>();
    let now = performance.now(), nextReport = now + reportMs, rounds = 0;
    while (!o.stop()) {
      if ((++rounds & 63) === 0) now = performance.now();
      const moved = this.round(now);
      if (now >= nextReport) {
        nextReport = now + reportMs;
        o.onReport?.();
      }
      if (moved) {
        if (pacer.due(moved)) await tick();
        continue;
      }
      if (!pacer.due(0)) continue;
      // Idle: one wait per port outstanding at a time (a port that stays quiet keeps its one), and a timer for
      // reports and stop checks.
      for (const p of this.ports) {
        if (!waits.has(p)) {
          waits.set(p, p.wait().catch(() => {}).finally(() => waits.delete(p)));
        }
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        ...waits.values(),
        new Promise<void>((r) => timer = setTimeout(r, Math.max(1, Math.min(100, nextReport - now)))),
      ]);
      clearTimeout(timer);
      now = performance.now();
    }
    this.#pcap?.flush();
  }
}

/** A MAC address at `o` as a number (48 bits fit a double exactly). */
function mac(d: Uint8Array, o: number): number {
  return (d[o] * 0x10000 + (d[o + 1] << 8 | d[o + 2])) * 0x1000000 +
    (d[o + 3] << 16 | d[o + 4] << 8 | d[o + 5]);
}
