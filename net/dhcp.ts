/**
 * A DHCP client (RFC 2131, options RFC 2132) as a state machine with no I/O of its own: the host feeds it the
 * messages that reach UDP port 68 and asks it, as time passes, what to send. INIT → SELECTING (DISCOVER) →
 * REQUESTING (REQUEST for the first OFFER) → BOUND (ACK) → RENEWING at T1 (unicast REQUEST to the server) →
 * REBINDING at T2 (broadcast REQUEST) → INIT when the lease runs out or a NAK arrives.
 * @module
 */
import {
  hostCidrProblem,
  ipText,
  maskOf,
  prefixOf,
  readU16,
  readU32,
  specialAddress,
  writeU16,
  writeU32,
} from "./ipv4.ts";
import { writeMac } from "./ethernet.ts";

/** Server port. */
export const DHCP_SERVER_PORT = 67;
/** Client port. */
export const DHCP_CLIENT_PORT = 68;
/** Fixed BOOTP part before the options (RFC 2131 §2), magic cookie included. */
export const BOOTP_FIXED = 240;
/** Offsets in a BOOTP message (RFC 2131 §2): op, xid, flags, ciaddr, yiaddr, chaddr, the magic cookie. */
export const BOOTP = { OP: 0, XID: 4, FLAGS: 10, CIADDR: 12, YIADDR: 16, CHADDR: 28, COOKIE: 236 } as const;
/** The options' magic cookie (RFC 2131 §3). */
export const DHCP_COOKIE = 0x63825363;
/** Option codes pvdrv reads and writes (RFC 2132). */
export const OPT = {
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  DNS: 6,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAMETERS: 55,
  RENEWAL_T1: 58,
  REBINDING_T2: 59,
  END: 255,
} as const;
const FIXED = BOOTP_FIXED, COOKIE = DHCP_COOKIE;
/** Message types (option 53). */
export const DHCPDISCOVER = 1, DHCPOFFER = 2, DHCPREQUEST = 3, DHCPACK = 5, DHCPNAK = 6, DHCPRELEASE = 7;

/** What a lease gives the host. */
export interface Lease {
  /** The address. */
  ip: number;
  /** Prefix length from the subnet mask (24 when the server sends none). */
  prefix: number;
  /** First router, or 0. */
  gateway: number;
  /** DNS servers. */
  dns: number[];
  /** The server that granted it. */
  server: number;
  /** Lease time (s). */
  leaseSeconds: number;
  /** Renewal time T1 (s). */
  t1: number;
  /** Rebinding time T2 (s). */
  t2: number;
}

/** Client states (RFC 2131 §4.4). */
export type DhcpState = "init" | "selecting" | "requesting" | "bound" | "renewing" | "rebinding";

/** A message the client wants sent: BOOTP bytes in `buf[0..length)`, to `dst` (0xffffffff: broadcast). */
export interface DhcpSend {
  /** Bytes to send as the UDP payload. */
  length: number;
  /** Destination address (broadcast while no lease is bound). */
  dst: number;
  /** Source address (0 before a lease). */
  src: number;
}

/** Retransmission timing (ms). */
export interface DhcpTiming {
  /** First retransmission interval; doubles up to `maxRetryMs` (RFC 2131 §4.1: 4 s, doubling, to 64 s). */
  retryMs: number;
  /** Longest retransmission interval. */
  maxRetryMs: number;
}

/** A DHCP client for one interface. */
export class DhcpClient {
  /** The current state. */
  state: DhcpState = "init";
  /** The bound (or being renewed) lease. */
  lease: Lease | null = null;
  /** Outgoing message buffer (the UDP payload). */
  readonly buf: Uint8Array<ArrayBuffer> = new Uint8Array(576);
  /** Messages refused (not BOOTP replies for us, bad options). */
  rejected = 0;
  /** Offers and acks refused for what they grant: not a host address in a sane prefix, a bad router or server. */
  refused = 0;
  #xid = 0;
  #offered = 0;
  #server = 0;
  #next = 0; // when to send next (ms)
  #interval = 0;
  #boundAt = 0;
  #started = 0;

  /** A client for the interface with MAC number `mac`. */
  constructor(readonly mac: number, readonly timing: DhcpTiming = { retryMs: 4000, maxRetryMs: 64_000 }) {}

  /** Start (or restart) from INIT at `now`: a DISCOVER goes out at the next {@link DhcpClient.poll}. */
  start(now: number): void {
    this.state = "selecting";
    this.lease = null;
    this.#xid = (Math.random() * 0x100000000) >>> 0;
    this.#next = now;
    this.#interval = this.timing.retryMs;
    this.#started = now;
  }

  /** When the client next needs {@link DhcpClient.poll} (ms), Infinity when idle. */
  get nextAt(): number {
    return this.state === "init" ? Infinity : this.#next;
  }

  /** What to send at `now`, if anything (written into {@link DhcpClient.buf}). */
  poll(now: number, out: DhcpSend): boolean {
    if (this.state === "init" || now < this.#next) return false;
    const l = this.lease;
    if (this.state === "bound" || this.state === "renewing" || this.state === "rebinding") {
      const age = (now - this.#boundAt) / 1000;
      if (l && age >= l.leaseSeconds) { // expired: back to INIT (RFC 2131 §4.4.5)
        this.start(now);
      } else if (l && this.state !== "rebinding" && age >= l.t2) {
        this.state = "rebinding";
      } else if (l && this.state === "bound") {
        if (age < l.t1) {
          this.#next = this.#boundAt + l.t1 * 1000;
          return false;
        }
        this.state = "renewing";
      }
    }
    const s = this.state;
    let len: number;
    if (s === "selecting") {
      len = this.#message(DHCPDISCOVER, 0, 0, 0);
      out.dst = 0xffffffff, out.src = 0;
    } else if (s === "requesting") {
      len = this.#message(DHCPREQUEST, 0, this.#offered, this.#server);
      out.dst = 0xffffffff, out.src = 0;
    } else { // renewing (unicast to the server) or rebinding (broadcast), with ciaddr (RFC 2131 §4.3.2)
      len = this.#message(DHCPREQUEST, l!.ip, 0, 0);
      out.dst = s === "renewing" ? l!.server : 0xffffffff, out.src = l!.ip;
    }
    out.length = len;
    if (s === "renewing" || s === "rebinding") {
      // RFC 2131 §4.4.5: retry at half the time left to T2 (renewing) or to expiry (rebinding), at least 60 s;
      // scaled down for short leases.
      const left = (s === "renewing" ? l!.t2 : l!.leaseSeconds) * 1000 - (now - this.#boundAt);
      this.#next = now + Math.max(Math.min(60_000, left / 2), 1000);
    } else {
      this.#next = now + this.#interval;
      this.#interval = Math.min(this.#interval * 2, this.timing.maxRetryMs);
    }
    return true;
  }

  /** Milliseconds since {@link DhcpClient.start}. */
  elapsed(now: number): number {
    return now - this.#started;
  }

  /**
   * Handle a BOOTP message (the UDP payload at `d[off..off+len)`) at `now`. Returns "bound" when a lease was
   * granted or renewed, "nak" when the server refused (the client restarts), "refused" when what a server offered
   * or granted is no lease a host can take (counted in {@link DhcpClient.refused}; the client goes on), else null.
   */
  receive(d: Uint8Array, off: number, len: number, now: number): "bound" | "nak" | "refused" | null {
    if (
      len < FIXED + 3 || d[off] !== 2 || d[off + 1] !== 1 || d[off + 2] !== 6 ||
      readU32(d, off + 4) !== this.#xid || readU32(d, off + 236) !== COOKIE || !this.#forMe(d, off + 28)
    ) {
      this.rejected++;
      return null;
    }
    const o = parseOptions(d, off + FIXED, off + len);
    if (!o) {
      this.rejected++;
      return null;
    }
    const yiaddr = readU32(d, off + 16);
    if (o.type === DHCPOFFER && this.state === "selecting") {
      if (!o.server || yiaddr === 0) return this.#reject();
      if (leaseProblem(yiaddr, o)) return this.#refuse();
      this.#offered = yiaddr;
      this.#server = o.server;
      this.state = "requesting";
      this.#next = now;
      this.#interval = this.timing.retryMs;
      return null;
    }
    if (
      o.type === DHCPACK &&
      (this.state === "requesting" || this.state === "renewing" || this.state === "rebinding")
    ) {
      if (yiaddr === 0 || (this.state === "requesting" && yiaddr !== this.#offered)) return this.#reject();
      const server = o.server || this.#server || this.lease?.server || 0;
      if (leaseProblem(yiaddr, o) || (server !== 0 && specialAddress(server) !== null)) {
        // Requesting: start over (RFC 2131 §4.4.1 does so after a DECLINE); renewing: keep the lease we have.
        if (this.state === "requesting") this.start(now);
        return this.#refuse();
      }
      const leaseSeconds = o.lease || 3600;
      // RFC 2131 §4.4.5: T1 < T2 < lease; values out of that order fall back to 0.5 and 0.875 of the lease.
      let t1 = o.t1 || leaseSeconds / 2, t2 = o.t2 || leaseSeconds * 0.875;
      if (!(t1 < t2 && t2 < leaseSeconds)) t1 = leaseSeconds / 2, t2 = leaseSeconds * 0.875;
      this.lease = {
        ip: yiaddr,
        prefix: o.mask ? prefixOf(o.mask) : 24,
        gateway: o.router,
        dns: o.dns,
        server,
        leaseSeconds,
        t1,
        t2,
      };
      this.state = "bound";
      this.#boundAt = now;
      this.#next = now + this.lease.t1 * 1000;
      return "bound";
    }
    if (o.type === DHCPNAK && this.state !== "selecting" && this.state !== "bound") {
      this.start(now);
      return "nak";
    }
    return null; // a duplicate OFFER, a late ACK: ignored
  }

  /** Write a DHCPRELEASE for the bound lease into {@link DhcpClient.buf}; returns its length (0: no lease). */
  release(out: DhcpSend): boolean {
    const l = this.lease;
    if (!l) return false;
    out.length = this.#message(DHCPRELEASE, l.ip, 0, l.server);
    out.dst = l.server;
    out.src = l.ip;
    this.state = "init";
    this.lease = null;
    return true;
  }

  #reject(): null {
    this.rejected++;
    return null;
  }

  #refuse(): "refused" {
    this.refused++;
    return "refused";
  }

  #forMe(d: Uint8Array, chaddr: number): boolean {
    const m = this.mac;
    const hi = Math.floor(m / 0x100000000), lo = m >>> 0;
    return readU16(d, chaddr) === hi && readU32(d, chaddr + 2) === lo;
  }

  /** Write a client message; returns its length. */
  #message(type: number, ciaddr: number, requested: number, server: number): number {
    const b = this.buf;
    b.fill(0);
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6;
    writeU32(b, 4, this.#xid);
    // Broadcast flag while we cannot receive unicast at an address we do not have yet (RFC 2131 §4.1).
    writeU16(b, 10, ciaddr ? 0 : 0x8000);
    writeU32(b, 12, ciaddr);
    writeMac(b, 28, this.mac);
    writeU32(b, 236, COOKIE);
    let o = FIXED;
    b[o++] = 53, b[o++] = 1, b[o++] = type;
    if (requested) b[o++] = 50, b[o++] = 4, writeU32(b, o, requested), o += 4;
    if (server) b[o++] = 54, b[o++] = 4, writeU32(b, o, server), o += 4;
    if (type !== DHCPRELEASE) {
      const want = [1, 3, 6, 51, 58, 59];
      b[o++] = 55, b[o++] = want.length;
      for (const w of want) b[o++] = w;
    }
    b[o++] = 255;
    return Math.max(o, 300); // BOOTP's minimum message size (RFC 1542 §3.2.1)
  }

  /** A one-line description of the lease. */
  describe(): string {
    const l = this.lease;
    if (!l) return `dhcp: ${this.state}`;
    return `${ipText(l.ip)}/${l.prefix} gw ${l.gateway ? ipText(l.gateway) : "none"} from ${
      ipText(l.server)
    }, ` +
      `lease ${l.leaseSeconds} s`;
  }
}

interface Options {
  type: number;
  server: number;
  mask: number;
  router: number;
  dns: number[];
  lease: number;
  t1: number;
  t2: number;
}

/**
 * Why the address `ip` with the options `o` is no lease a host can take, or null: the mask is not a contiguous
 * /1../30, the address is special-purpose (RFC 6890) or the subnet's network or broadcast address, the router is
 * not another host on the subnet.
 */
function leaseProblem(ip: number, o: Options): string | null {
  const prefix = o.mask ? prefixOf(o.mask) : 24;
  if (prefix < 1 || prefix > 30) return "mask";
  if (specialAddress(ip) !== null || hostCidrProblem({ ip, prefix }) !== null) return "address";
  const r = o.router, mask = maskOf(prefix);
  if (
    r !== 0 &&
    (r === ip || (r & mask) !== (ip & mask) || specialAddress(r) !== null ||
      hostCidrProblem({ ip: r, prefix }))
  ) return "router";
  return null;
}

/** Parse options in `d[o..end)`; null when malformed (an option running past the end, no message type). */
function parseOptions(d: Uint8Array, o: number, end: number): Options | null {
  const r: Options = { type: 0, server: 0, mask: 0, router: 0, dns: [], lease: 0, t1: 0, t2: 0 };
  while (o < end) {
    const code = d[o++];
    if (code === 0) continue;
    if (code === 255) break;
    if (o >= end) return null;
    const n = d[o++];
    if (o + n > end) return null;
    const u32 = n >= 4 ? readU32(d, o) : -1;
    switch (code) {
      case 53:
        if (n !== 1) return null;
        r.type = d[o];
        break;
      case 54:
        if (n !== 4) return null;
        r.server = u32;
        break;
      case 1:
        if (n !== 4) return null;
        r.mask = u32;
        break;
      case 3:
        if (n < 4 || n % 4) return null;
        r.router = u32;
        break;
      case 6:
        if (n < 4 || n % 4) return null;
        for (let i = 0; i < n; i += 4) r.dns.push(readU32(d, o + i));
        break;
      case 51:
      case 58:
      case 59:
        if (n !== 4) return null;
        if (code === 51) r.lease = u32;
        else if (code === 58) r.t1 = u32;
        else r.t2 = u32;
        break;
    }
    o += n;
  }
  return r.type ? r : null;
}

/** Whether the Ethernet frame `d[0..len)` is an IPv4/UDP datagram from port 67 to port 68 (a server's reply). */
export function isDhcpReplyFrame(d: Uint8Array, len: number): boolean {
  if (len < 14 + 20 + 8 || d[12] !== 0x08 || d[13] !== 0 || d[14] >> 4 !== 4 || d[23] !== 17) return false;
  const l4 = 14 + (d[14] & 15) * 4;
  return len >= l4 + 8 && readU16(d, l4) === DHCP_SERVER_PORT && readU16(d, l4 + 2) === DHCP_CLIENT_PORT;
}
