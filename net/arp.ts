/**
 * ARP for IPv4 over Ethernet (RFC 826): the packet layout, and a cache of resolved addresses with expiry and a
 * bounded queue of frames waiting for each address being resolved.
 * @module
 */
import { ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, readMac, writeEthernet, writeMac } from "./ethernet.ts";
import { readU16, readU32, writeU16, writeU32 } from "./ipv4.ts";

/** An ARP packet for IPv4 over Ethernet, header included: 14 + 28 bytes. */
export const ARP_FRAME = ETH_HLEN + 28;
/** ARP request opcode. */
export const ARP_REQUEST = 1;
/** ARP reply opcode. */
export const ARP_REPLY = 2;

/** The fields of a received ARP packet (one object, reused). */
export interface ArpView {
  /** Opcode. */
  op: number;
  /** Sender MAC. */
  sha: number;
  /** Sender IPv4 address. */
  spa: number;
  /** Target IPv4 address. */
  tpa: number;
}

/** Parse the ARP packet in frame `d` of `len` bytes into `v`; false when it is not IPv4-over-Ethernet ARP. */
export function readArp(d: Uint8Array, len: number, v: ArpView): boolean {
  const o = ETH_HLEN;
  if (len < ARP_FRAME) return false;
  if (readU16(d, o) !== 1 || readU16(d, o + 2) !== ETHERTYPE_IPV4 || d[o + 4] !== 6 || d[o + 5] !== 4) {
    return false;
  }
  v.op = readU16(d, o + 6);
  v.sha = readMac(d, o + 8);
  v.spa = readU32(d, o + 14);
  v.tpa = readU32(d, o + 24);
  return v.op === ARP_REQUEST || v.op === ARP_REPLY;
}

/** Write a whole ARP frame (Ethernet header included) into `d`; returns its length. */
export function writeArp(
  d: Uint8Array,
  op: number,
  ethDst: number,
  sha: number,
  spa: number,
  tha: number,
  tpa: number,
): number {
  writeEthernet(d, ethDst, sha, ETHERTYPE_ARP);
  const o = ETH_HLEN;
  writeU16(d, o, 1);
  writeU16(d, o + 2, ETHERTYPE_IPV4);
  d[o + 4] = 6;
  d[o + 5] = 4;
  writeU16(d, o + 6, op);
  writeMac(d, o + 8, sha);
  writeU32(d, o + 14, spa);
  writeMac(d, o + 18, tha);
  writeU32(d, o + 24, tpa);
  return ARP_FRAME;
}

/** One cache entry: resolved (mac ≥ 0) or being resolved (mac -1, frames waiting). */
export interface ArpEntry {
  /** The MAC, or -1 while unresolved. */
  mac: number;
  /** When a resolved entry expires (ms, performance.now()). */
  expires: number;
  /** Frames waiting for the address (copies), oldest first. */
  waiting: Uint8Array[];
  /** Requests sent for this resolution. */
  tries: number;
  /** When to send the next request (ms). */
  nextTry: number;
}

/** Cache tuning. */
export interface ArpTiming {
  /** How long a resolved entry lives (ms). */
  ttlMs: number;
  /** Interval between requests for an unresolved address (ms). */
  retryMs: number;
  /** Requests before giving up (the waiting frames are dropped). */
  tries: number;
  /** Frames kept per unresolved address (older ones are dropped). */
  queue: number;
}

/** RFC 1122 §2.3.2.1-style defaults: a minute of validity, one request per second, three tries, 128 frames held. */
export const ARP_DEFAULTS: ArpTiming = { ttlMs: 60_000, retryMs: 1000, tries: 3, queue: 128 };

/** The ARP cache. Lookups of resolved addresses allocate nothing. */
export class ArpCache {
  readonly #map = new Map<number, ArpEntry>();
  /** Frames dropped because their address did not resolve, or the queue overflowed. */
  dropped = 0;

  /** Creates an empty cache. */
  constructor(readonly timing: ArpTiming = ARP_DEFAULTS) {}

  /** The MAC for `ip` if resolved and fresh at `now`, else -1. */
  lookup(ip: number, now: number): number {
    const e = this.#map.get(ip);
    return e && e.mac >= 0 && e.expires > now ? e.mac : -1;
  }

  /**
   * Learn `ip` → `mac` (RFC 826: update an existing entry always, add one when `create`); returns the frames that
   * were waiting for it (to be sent now, their destination MAC still to fill in).
   */
  learn(ip: number, mac: number, now: number, create: boolean): Uint8Array[] | null {
    let e = this.#map.get(ip);
    if (!e) {
      if (!create) return null;
      this.#map.set(ip, e = { mac, expires: 0, waiting: [], tries: 0, nextTry: 0 });
    }
    e.mac = mac;
    e.expires = now + this.timing.ttlMs;
    e.tries = 0;
    if (e.waiting.length === 0) return null;
    const w = e.waiting;
    e.waiting = [];
    return w;
  }

  /** Queue a copy of `frame` for `ip`; true when a request should be sent now (a new resolution). */
  enqueue(ip: number, frame: Uint8Array, now: number): boolean {
    let e = this.#map.get(ip);
    if (!e) this.#map.set(ip, e = { mac: -1, expires: 0, waiting: [], tries: 0, nextTry: 0 });
    const fresh = e.tries === 0; // no request out for it yet (new, or resolved before and expired)
    e.mac = -1;
    if (e.waiting.length >= this.timing.queue) {
      e.waiting.shift();
      this.dropped++;
    }
    e.waiting.push(frame.slice());
    if (fresh) {
      e.tries = 1;
      e.nextTry = now + this.timing.retryMs;
    }
    return fresh;
  }

  /** Addresses whose next request is due at `now` (retries); entries out of tries are dropped with their frames. */
  due(now: number): number[] {
    const out: number[] = [];
    for (const [ip, e] of this.#map) {
      if (e.mac >= 0) {
        if (e.expires + this.timing.ttlMs < now) this.#map.delete(ip); // long stale: forget
        continue;
      }
      if (e.nextTry > now) continue;
      if (e.tries >= this.timing.tries) {
        this.dropped += e.waiting.length;
        this.#map.delete(ip);
        continue;
      }
      e.tries++;
      e.nextTry = now + this.timing.retryMs;
      out.push(ip);
    }
    return out;
  }

  /** Entries as [ip, mac] for display (-1: unresolved). */
  entries(): [number, number][] {
    return [...this.#map].map(([ip, e]) => [ip, e.mac]);
  }
}
