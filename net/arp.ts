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

/** Cache timing and bounds: what a hostile link can make the cache hold or send is capped by these. */
export interface ArpTiming {
  /** How long a resolved entry lives (ms). */
  ttlMs: number;
  /** Interval between requests for an unresolved address (ms). */
  retryMs: number;
  /** Requests before giving up (the waiting frames are dropped). */
  tries: number;
  /** Frames kept per unresolved address (older ones are dropped). */
  queue: number;
  /** Entries, resolved and resolving, at most (Linux's gc_thresh3 is 1024); incomplete ones are evicted first. */
  maxEntries: number;
  /** Addresses being resolved at once, at most; a new resolution past it is refused (its frame dropped). */
  maxResolving: number;
  /** Frames waiting over all addresses, at most. */
  maxQueued: number;
  /** Requests sent per second over all addresses, at most (as many may go out in a burst). */
  requestsPerSecond: number;
}

/**
 * RFC 1122 §2.3.2.1-style defaults: a minute of validity, one request per second per address, three tries, 128
 * frames held per address and 512 in all, 512 entries, 64 resolutions at once, 50 requests a second.
 */
export const ARP_DEFAULTS: ArpTiming = {
  ttlMs: 60_000,
  retryMs: 1000,
  tries: 3,
  queue: 128,
  maxEntries: 512,
  maxResolving: 64,
  maxQueued: 512,
  requestsPerSecond: 50,
};

/** What {@link ArpCache.enqueue} did with a frame. */
export const enum Enqueued {
  /**
   * The resolution goes on; a request for the address is already out (or waits for the rate limit). The frame is
   * held, unless every queue together is at `maxQueued` (then it is dropped and counted, the resolution kept).
   */
  Queued = 0,
  /** As {@link Enqueued.Queued}, and a new resolution began: send a request now. */
  Request = 1,
  /** Refused: the table or the resolutions are at their bound; the frame is dropped (counted in `dropped`). */
  Refused = 2,
}

/** The ARP cache, bounded in entries, resolutions, queued frames and request rate. Lookups allocate nothing. */
export class ArpCache {
  readonly #map = new Map<number, ArpEntry>();
  /** Timing and bounds in force (the defaults, overridden by what the constructor was given). */
  readonly timing: ArpTiming;
  #resolving = 0;
  #queued = 0;
  #tokens: number;
  #refilled = -Infinity;
  /** Frames dropped: their address did not resolve, a queue overflowed, or the cache was at a bound. */
  dropped = 0;
  /** Entries evicted to make room. */
  evicted = 0;
  /** Times a request was held back by the rate limit (it is asked for again at the next round). */
  limited = 0;

  /** Creates an empty cache. */
  constructor(timing: Partial<ArpTiming> = {}) {
    this.timing = { ...ARP_DEFAULTS, ...timing };
    this.#tokens = this.timing.requestsPerSecond;
  }

  /** Entries held (resolved and resolving). */
  get size(): number {
    return this.#map.size;
  }

  /** Addresses being resolved. */
  get resolving(): number {
    return this.#resolving;
  }

  /** Frames waiting over all addresses. */
  get queued(): number {
    return this.#queued;
  }

  /** The MAC for `ip` if resolved and fresh at `now`, else -1. */
  lookup(ip: number, now: number): number {
    const e = this.#map.get(ip);
    return e && e.mac >= 0 && e.expires > now ? e.mac : -1;
  }

  /**
   * Learn `ip` → `mac` (RFC 826: update an existing entry always, add one when `create`, evicting to stay within
   * the bound); returns the frames that were waiting for it (to be sent now, their destination MAC still to fill
   * in).
   */
  learn(ip: number, mac: number, now: number, create: boolean): Uint8Array[] | null {
    let e = this.#map.get(ip);
    if (!e) {
      if (!create) return null;
      if (this.#map.size >= this.timing.maxEntries) this.#evict(true);
      this.#map.set(ip, e = { mac, expires: 0, waiting: [], tries: 0, nextTry: 0 });
    } else if (e.mac < 0) this.#resolving--;
    e.mac = mac;
    e.expires = now + this.timing.ttlMs;
    e.tries = 0;
    if (e.waiting.length === 0) return null;
    const w = e.waiting;
    this.#queued -= w.length;
    e.waiting = [];
    return w;
  }

  /**
   * Queue a copy of `frame` for `ip`. {@link Enqueued.Request} when a request should be sent now (a new
   * resolution, within the rate limit); {@link Enqueued.Refused} when a bound left no room (the frame dropped).
   */
  enqueue(ip: number, frame: Uint8Array, now: number): Enqueued {
    const t = this.timing;
    let e = this.#map.get(ip);
    if (!e || e.mac >= 0) {
      // A new resolution (or a resolved entry gone stale): within the bounds only.
      if (
        this.#resolving >= t.maxResolving || (!e && this.#map.size >= t.maxEntries && !this.#evict(false))
      ) {
        this.dropped++;
        return Enqueued.Refused;
      }
      if (!e) this.#map.set(ip, e = { mac: -1, expires: 0, waiting: [], tries: 0, nextTry: now });
      e.mac = -1;
      e.tries = 0;
      e.nextTry = now;
      this.#resolving++;
    }
    if (e.waiting.length >= t.queue) {
      e.waiting.shift();
      this.#queued--;
      this.dropped++;
    }
    if (this.#queued >= t.maxQueued) this.dropped++;
    else {
      e.waiting.push(frame.slice());
      this.#queued++;
    }
    if (e.tries === 0 && e.nextTry <= now && this.#token(now)) {
      e.tries = 1;
      e.nextTry = now + t.retryMs;
      return Enqueued.Request;
    }
    return Enqueued.Queued;
  }

  /**
   * Addresses whose next request is due at `now` and within the rate limit (retries); entries out of tries are
   * dropped with their frames, long-stale resolved ones forgotten.
   */
  due(now: number): number[] {
    const out: number[] = [];
    for (const [ip, e] of this.#map) {
      if (e.mac >= 0) {
        if (e.expires + this.timing.ttlMs < now) this.#map.delete(ip); // long stale: forget
        continue;
      }
      if (e.nextTry > now) continue;
      if (e.tries >= this.timing.tries) {
        this.#drop(ip, e);
        continue;
      }
      if (!this.#token(now)) continue; // over the rate: asked again at the next call
      e.tries++;
      e.nextTry = now + this.timing.retryMs;
      out.push(ip);
    }
    return out;
  }

  /** Drop every frame waiting for resolution and the resolutions themselves (the sender's address changed). */
  clearWaiting(): void {
    for (const [ip, e] of this.#map) if (e.mac < 0) this.#drop(ip, e);
  }

  /** Entries as [ip, mac] for display (-1: unresolved). */
  entries(): [number, number][] {
    return [...this.#map].map(([ip, e]) => [ip, e.mac]);
  }

  /** Take a request token (the bucket refills at requestsPerSecond, up to as many). */
  #token(now: number): boolean {
    const rate = this.timing.requestsPerSecond;
    this.#tokens = Math.min(rate, this.#tokens + ((now - this.#refilled) * rate) / 1000);
    this.#refilled = now;
    if (this.#tokens < 1) {
      this.limited++;
      return false;
    }
    this.#tokens--;
    return true;
  }

  #drop(ip: number, e: ArpEntry): void {
    if (e.mac < 0) this.#resolving--;
    this.dropped += e.waiting.length;
    this.#queued -= e.waiting.length;
    this.#map.delete(ip);
  }

  /**
   * Make room for one entry. A neighbour learned makes room by ending the oldest resolution first (RFC 1122
   * §2.3.2.2 lets a cache drop what it must), else the oldest entry; a new resolution only by the oldest resolved
   * entry (resolutions are bounded by maxResolving instead). False when nothing could go.
   */
  #evict(resolutionFirst: boolean): boolean {
    let victim = -1;
    for (const [ip, e] of this.#map) {
      if (e.mac < 0) {
        if (!resolutionFirst) continue;
        victim = ip;
        break;
      }
      if (victim < 0) victim = ip;
      if (!resolutionFirst || this.#resolving === 0) break; // the oldest resolved entry goes
    }
    if (victim < 0) return false;
    this.#drop(victim, this.#map.get(victim)!);
    this.evicted++;
    return true;
  }
}
