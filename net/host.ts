/**
 * An IPv4 host on a pvdrv NIC: Ethernet, ARP, IPv4, ICMP echo, UDP sockets and a DHCP client, over the common
 * {@link Nic} interface, so it runs on virtio-net and Xen netfront alike. One queue pair; frames are handled in
 * place in the driver's buffers and replies are batched into one doorbell per received batch. Every received
 * frame is validated and anything malformed or not for this host is counted and dropped.
 *
 * ```ts ignore
 * const host = NetHost.start(nic, { ip: "10.0.0.2/24", interrupts: true });
 * const rtt = await host.ping(parseIp("10.0.0.1"));
 * ```
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import type { Nic } from "../drivers/net/nic.ts";
import type { PacketBuffer } from "../drivers/net/packet_pool.ts";
import { ARP_REQUEST, ArpCache, type ArpTiming, writeArp } from "./arp.ts";
import { DHCP_CLIENT_PORT, DHCP_SERVER_PORT, type Lease } from "./dhcp.ts";
import { HostDhcp } from "./host_dhcp.ts";
import { BROADCAST_MAC, ETH_HLEN, macNumber } from "./ethernet.ts";
import { ICMP_ECHO_HLEN } from "./icmp.ts";
import {
  type Cidr,
  hostCidrProblem,
  ipText,
  IPV4_HLEN,
  maskOf,
  parseCidr,
  parseIp,
  PROTO_ICMP,
} from "./ipv4.ts";
import { UdpSocket } from "./udp.ts";
import { Pacer, PollClock, tick } from "../hal/event_loop.ts";
import { emptyHostStats, type HostStats } from "./host_stats.ts";
import { TxBatch } from "./host_tx.ts";
import { HostInput } from "./host_input.ts";

import { Pinger, type PingReply } from "./pinger.ts";
import { type Addressing, addressText, IpOutput } from "./ip_output.ts";

export type { HostStats } from "./host_stats.ts";
export type { PingReply } from "./pinger.ts";

/** How a host is set up. */
export interface HostOptions {
  /** Static address with prefix ("10.0.0.2/24"); omit and call {@link NetHost.dhcp} to lease one. */
  ip?: string | Cidr;
  /** Default gateway (off-subnet destinations go there). */
  gateway?: string | number;
  /** TTL of sent packets (default 64). */
  ttl?: number;
  /** The NIC was opened with interrupts: sleep on them when idle (else busy-poll, yielding by count). */
  interrupts?: boolean;
  /** With interrupts: keep polling this long after the last frame before sleeping (default 0.2 ms). */
  spinMs?: number;
  /**
   * With interrupts: for this long after the last frame, sleep in this thread on the interrupt 1 ms at a time
   * (the lowest wake latency, but a wake-up a millisecond); after it, wait off-thread until the interrupt or the
   * next timer (default 100 ms).
   */
  hotMs?: number;
  /** ARP cache timing and bounds. */
  arp?: Partial<ArpTiming>;
  /**
   * Told of the first failure of each kind: an application callback that threw ("app", such as a socket's
   * `onDatagram`) and a frame whose handling failed inside the host ("frame"). Later ones are only counted
   * (`appErrors`, `rxErrors`). Default: one line on stderr.
   */
  onError?: (e: Error, where: "app" | "frame") => void;
  /** Queue pair to use (default 0). */
  queue?: number;
  /**
   * Another stack owns the address (a TAP bridge's kernel): answer no ARP requests and no pings, only run what was
   * asked of this host (its DHCP lease, its sockets).
   */
  passive?: boolean;
}

/** Where the L4 header starts in an untagged IPv4 frame without options. */
const L4 = ETH_HLEN + IPV4_HLEN;
/** The dynamic (ephemeral) port range, 49152-65535 (RFC 6335 §6). */
const EPHEMERAL_FIRST = 49152, EPHEMERAL_COUNT = 16384;
/** How often timers run: ARP retries, the DHCP client's sends and deadlines (ms). */
const HOUSEKEEP_MS = 50;
/** How long after the last frame the loop still sleeps in-thread (else it waits without holding the event loop). */
const HOT_MS = 100;
const BATCH = 64;

/** An IPv4 host on one NIC queue pair. */
export class NetHost {
  /** Counters. */
  readonly stats: HostStats = emptyHostStats();
  /** The ARP cache. */
  readonly arp: ArpCache;
  /** The MAC as a number. */
  readonly macNum: number;
  readonly #addr: Addressing = { ip: 0, prefix: 0, gateway: 0, bcast: 0 };
  /** TTL of sent packets. */
  readonly ttl: number;
  readonly #queue: number;
  readonly #interrupts: boolean;
  readonly #spinMs: number;
  readonly #hotMs: number;
  #polledAt = 0; // when the last poll() that found frames read the clock
  readonly #in: HostInput;
  readonly #onError: (e: Error, where: "app" | "frame") => void;
  readonly #reported = { app: false, frame: false };
  readonly #rx: PacketBuffer[] = new Array(BATCH);
  readonly #out: TxBatch;
  readonly #sockets = new Map<number, UdpSocket>();
  readonly #pinger = new Pinger();
  readonly #ipOut: IpOutput;
  #dhcp: HostDhcp | null = null;
  #nextHousekeep = 0;
  #running: Promise<void> | null = null;
  #stopped = false;
  #wake: Promise<void> | null = null;
  #error: Error | null = null;

  /** A host on `nic` (not yet running: see {@link NetHost.start}). */
  constructor(readonly nic: Nic, opts: HostOptions = {}) {
    this.macNum = macNumber(nic.mac);
    this.ttl = opts.ttl ?? 64;
    if (!(this.ttl >= 1 && this.ttl <= 255)) throw new RangeError(`ttl must be 1..255, got ${opts.ttl}`);
    this.#queue = opts.queue ?? 0;
    this.#out = new TxBatch(nic, this.#queue, this.stats);
    this.#interrupts = opts.interrupts ?? false;
    this.#spinMs = opts.spinMs ?? 0.2;
    this.#hotMs = opts.hotMs ?? HOT_MS;
    for (const [name, ms] of [["spinMs", this.#spinMs], ["hotMs", this.#hotMs]] as const) {
      if (!(Number.isFinite(ms) && ms >= 0)) {
        throw new RangeError(`${name} must be a duration >= 0 ms, got ${ms}`);
      }
    }
    this.arp = new ArpCache(opts.arp);
    this.#ipOut = new IpOutput(nic, this.#out, this.arp, this.#addr, this.macNum, this.ttl, this.stats);
    this.#in = new HostInput({
      nic,
      mac: this.macNum,
      stats: this.stats,
      arp: this.arp,
      addr: this.#addr,
      out: this.#out,
      ipOut: this.#ipOut,
      pinger: this.#pinger,
      sockets: this.#sockets,
      passive: opts.passive ?? false,
    }, {
      dhcp: () => this.#dhcp,
      dhcpEvent: (r, now) => this.#dhcpEvent(r, now),
      appFailed: (e) => {
        this.stats.appErrors++;
        this.#reportOnce(e, "app");
      },
    });
    this.#onError = opts.onError ?? ((e, where) =>
      console.error(
        `pvdrv: ${where === "app" ? "an application callback" : "handling a frame"} failed: ${e.message} ` +
          `(dropped and counted in ${where === "app" ? "appErrors" : "rxErrors"}; later ones only counted)`,
      ));
    if (opts.ip !== undefined) {
      const c = typeof opts.ip === "string" ? parseCidr(opts.ip) : opts.ip;
      this.#configure(c.ip, c.prefix, 0);
    }
    if (opts.gateway !== undefined) {
      this.gateway = typeof opts.gateway === "string" ? parseIp(opts.gateway) : opts.gateway;
    }
  }

  /** Make a host and start its receive loop (a static address is announced with a gratuitous ARP). */
  static start(nic: Nic, opts: HostOptions = {}): NetHost {
    const h = new NetHost(nic, opts);
    h.start();
    return h;
  }

  /** Start the receive loop (it runs until {@link NetHost.close}). */
  start(): void {
    if (this.#running) return;
    if (this.ip) this.announce();
    this.#running = this.#loop();
  }

  /** Our address (0: none yet). */
  get ip(): number {
    return this.#addr.ip;
  }

  /** Prefix length of our subnet. */
  get prefix(): number {
    return this.#addr.prefix;
  }

  /** Default gateway (0: none). */
  get gateway(): number {
    return this.#addr.gateway;
  }

  /** Set the default gateway (off-subnet destinations go there; 0: none). */
  set gateway(ip: number) {
    this.#addr.gateway = ip;
  }

  /** "10.0.0.2/24" or "unconfigured". */
  get address(): string {
    return addressText(this.#addr);
  }

  /** The DHCP lease, when the address came from one. */
  get lease(): Lease | null {
    return this.#dhcp?.client.lease ?? null;
  }

  /** Send a gratuitous ARP for our address (RFC 5227 §3: an ARP request with sender and target our address). */
  announce(): void {
    const b = this.#out.take();
    if (!b) return;
    b.length = writeArp(b.data, ARP_REQUEST, BROADCAST_MAC, this.macNum, this.ip, 0, this.ip);
    this.#out.push(b);
    this.#out.flushOutside();
  }

  /** Bind a UDP port (0: an ephemeral port). */
  udp(port = 0): UdpSocket {
    if (port === 0) {
      do port = EPHEMERAL_FIRST + Math.floor(Math.random() * EPHEMERAL_COUNT); while (
        this.#sockets.has(port)
      );
    }
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`bad UDP port ${port}`);
    if (this.#sockets.has(port) || port === DHCP_CLIENT_PORT && this.#dhcp) {
      throw new PvdrvError("nic", `udp port ${port} is already bound`);
    }
    const s = new UdpSocket(
      port,
      (sp, dst, dp, bytes, off, len, reply) => this.#sendUdp(sp, dst, dp, bytes, off, len, reply, this.ip),
      () => this.#sockets.delete(port),
    );
    this.#sockets.set(port, s);
    return s;
  }

  /**
   * Send one ICMP echo request of `size` payload bytes to `dst` and resolve with the reply, or null after
   * `timeoutMs` (the reply must carry the payload back unchanged).
   */
  ping(dst: number, o: { size?: number; timeoutMs?: number; seq?: number } = {}): Promise<PingReply | null> {
    this.#check();
    const size = o.size ?? 56, timeoutMs = o.timeoutMs ?? 1000;
    const max = Math.min(this.nic.mtu - IPV4_HLEN, this.nic.maxFrame - L4) - ICMP_ECHO_HLEN;
    if (!Number.isInteger(size) || size < 0 || size > max) {
      throw new RangeError(`ping size must be 0..${max}`);
    }
    const seq = this.#pinger.claim(o.seq);
    const b = this.#out.take();
    if (!b) return Promise.resolve(null);
    const len = this.#pinger.write(b.data, L4, seq, size);
    const reply = this.#pinger.expect(seq, size, timeoutMs);
    if (!this.#ipOut.sendIp(b, dst, PROTO_ICMP, len, -1)) {
      this.#pinger.cancel(seq);
      return Promise.reject(this.#ipOut.noRoute(dst));
    }
    this.#pinger.sent(seq); // the round trip counts from the doorbell
    return reply;
  }

  /**
   * Lease an address with DHCP (the loop must be running). Resolves with the lease once bound; the client keeps
   * renewing it until {@link NetHost.close}.
   */
  dhcp(timeoutMs = 30_000): Promise<Lease> {
    this.#check();
    if (this.#sockets.has(DHCP_CLIENT_PORT)) throw new PvdrvError("nic", "udp port 68 is bound to a socket");
    const now = performance.now();
    if (!this.#dhcp) {
      this.#dhcp = new HostDhcp(this.macNum, now);
      this.#nextHousekeep = now;
    }
    return this.#dhcp.wait(now, timeoutMs);
  }

  /**
   * Receive and handle one batch (at most 64 frames), send what it produced; returns the frame count. The loop
   * started by {@link NetHost.start} calls this; call it yourself only on a host you did not start.
   */
  poll(): number {
    const nic = this.nic, rx = this.#rx;
    const n = nic.receiveBatch(rx, BATCH, this.#queue);
    if (n === 0) return 0;
    const now = this.#polledAt = performance.now();
    this.#out.inBatch = true;
    try {
      // One frame's failure is that frame's: counted, and the rest of the batch is handled all the same.
      for (let i = 0; i < n; i++) {
        try {
          this.#in.input(rx[i], now);
        } catch (e) {
          this.#frameFailed(e);
        }
      }
    } finally {
      this.#out.inBatch = false;
      nic.release(rx, n, this.#queue);
      this.#out.flush();
    }
    return n;
  }

  /**
   * Stop the receive loop but keep everything else (address, lease, sockets, ARP): the caller now hands this host
   * the frames it wants handled ({@link NetHost.handle}) and runs its timers ({@link NetHost.service}), as a TAP
   * bridge does for the DHCP client.
   */
  async detach(): Promise<void> {
    this.#stopped = true;
    await this.#running;
    this.#running = null;
    this.#stopped = false;
  }

  /** Handle one received frame (a detached host; the buffer stays the caller's) and send what it produced. */
  handle(b: PacketBuffer): void {
    this.#out.inBatch = true;
    try {
      this.#in.input(b, performance.now());
    } catch (e) {
      this.#frameFailed(e);
    } finally {
      this.#out.inBatch = false;
      this.#out.flush();
    }
  }

  /** Run due timers (ARP retries, DHCP) of a detached host. */
  service(now: number = performance.now()): void {
    if (now >= this.#nextHousekeep) this.#housekeep(now);
  }

  /** Throw the error that stopped the loop, if any (only the NIC failing stops it: frames cannot). */
  checkHealth(): void {
    if (this.#error) throw this.#error;
  }

  /** The error that stopped the loop, or null while it runs (or ended by {@link NetHost.close}). */
  get error(): Error | null {
    return this.#error;
  }

  /** Stop the loop, close sockets, answer outstanding pings with null (the NIC stays open: it is yours). */
  async close(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#running;
    this.#wake?.catch(() => {});
    for (const s of [...this.#sockets.values()]) s.close();
    this.#pinger.cancelAll();
    this.#dhcp?.fail(new PvdrvError("nic", "host closed"));
  }

  // ---- receive ----

  /** A frame's handling failed. A NIC that broke ends the loop (its error); anything else is counted. */
  #frameFailed(e: unknown): void {
    this.nic.checkHealth();
    this.stats.rxErrors++;
    this.#reportOnce(e, "frame");
  }

  #reportOnce(e: unknown, where: "app" | "frame"): void {
    if (this.#reported[where]) return;
    this.#reported[where] = true;
    const err = e instanceof Error ? e : new PvdrvError("app", String(e));
    try {
      this.#onError(err, where);
    } catch { /* a failing reporter is not the host's failure */ }
  }

  /** A datagram out, after the host's own state is checked (a reply from a stopped host is dropped). */
  #sendUdp(
    sport: number,
    dst: number,
    dport: number,
    b: Uint8Array,
    off: number,
    len: number,
    reply: boolean,
    src: number,
  ): boolean {
    if (reply && (this.#error || this.#stopped)) return false;
    this.#check();
    return this.#ipOut.udp(sport, dst, dport, b, off, len, reply, src);
  }

  // ---- configuration and timers ----

  #configure(ip: number, prefix: number, gateway: number): void {
    const why = hostCidrProblem({ ip, prefix });
    if (why === "prefix") throw new RangeError(`prefix /${prefix}: a host needs /1 to /30`);
    if (why === "reserved") {
      throw new RangeError(`${ipText(ip)}/${prefix} is a network or broadcast address, not a host's`);
    }
    this.#setAddress(ip, prefix);
    if (gateway) this.gateway = gateway;
  }

  /**
   * Take (or, with 0, give up) an address. Frames parked for ARP carry the old source address: they are dropped,
   * never sent from an address the host no longer has (RFC 2131 §4.4.5).
   */
  #setAddress(ip: number, prefix: number): void {
    if (ip !== this.ip) this.arp.clearWaiting();
    const a = this.#addr;
    a.ip = ip;
    a.prefix = prefix;
    a.bcast = ip === 0 ? 0 : (ip | ~maskOf(prefix)) >>> 0;
  }

  #dhcpEvent(r: "bound" | "nak", now: number): void {
    if (r === "nak") {
      this.#setAddress(0, 0);
      this.#nextHousekeep = now;
      return;
    }
    const l = this.#dhcp!.client.lease!;
    const fresh = l.ip !== this.ip;
    this.#configure(l.ip, l.prefix, l.gateway);
    if (fresh) this.announce();
    this.#dhcp!.bound(l);
  }

  /** ARP retries, DHCP sends and timeouts; returns when it next needs running. */
  #housekeep(now: number): void {
    for (const ip of this.arp.due(now)) this.#ipOut.arpRequest(ip);
    const h = this.#dhcp;
    if (h?.due(now)) {
      const out = h.out;
      if (h.client.state === "selecting") this.#setAddress(0, 0); // expired or NAKed: no address until the next ACK
      // No route to the server is counted; the next retry (or rebinding's broadcast) tries again.
      this.#sendUdp(DHCP_CLIENT_PORT, out.dst, DHCP_SERVER_PORT, h.client.buf, 0, out.length, true, out.src);
    }
    this.#out.flush();
    this.#nextHousekeep = now + HOUSEKEEP_MS;
  }

  #check(): void {
    if (this.#error) throw this.#error;
    if (this.#stopped) throw new PvdrvError("nic", "host is closed");
  }

  // ---- the loop ----

  async #loop(): Promise<void> {
    const pacer = new Pacer(), clock = new PollClock();
    let lastFrame = clock.now;
    try {
      while (!this.#stopped) {
        const n = this.poll();
        // The exact time when frames came or when an idle interrupt-mode loop decides to sleep; a polling loop's
        // timers need only the coarse clock (a read per poll was most of an idle poll in the lab VM).
        if (n > 0) clock.read(this.#polledAt); // poll() read it for the batch: one read, not two
        else if (this.#interrupts) clock.read();
        else clock.advance();
        const now = clock.now;
        if (now >= this.#nextHousekeep) this.#housekeep(now);
        if (n > 0) lastFrame = now;
        if (n > 0 || !this.#interrupts || now - lastFrame < this.#spinMs) {
          // Busy: let the event loop run by count (setImmediate: timers are clamped to >= 4 ms).
          if (pacer.due(n)) await tick();
          continue;
        }
        if (now - lastFrame < this.#hotMs) {
          // Traffic a moment ago: sleep in this thread on the interrupt (one poll(), no thread hop: the lowest wake
          // latency), at most 1 ms, then let the event loop run.
          this.nic.sleepRx(1, this.#queue);
          await tick();
        } else await this.#sleep(Math.max(1, Math.min(50, this.#nextHousekeep - now)));
      }
    } catch (e) {
      this.#error = e as Error;
      this.#pinger.cancelAll();
      this.#dhcp?.fail(this.#error);
    }
  }

  /** Wait for the RX interrupt or `ms`, whichever first (one interrupt wait outstanding at a time). */
  async #sleep(ms: number): Promise<void> {
    this.#wake ??= this.nic.waitRx(this.#queue).then(() => void (this.#wake = null), (e) => {
      this.#wake = null;
      this.#error ??= e;
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#wake, new Promise<void>((r) => timer = setTimeout(r, ms))]);
    clearTimeout(timer);
    if (this.#error) throw this.#error;
  }
}
