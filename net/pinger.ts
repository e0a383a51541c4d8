/**
 * The host's ping client: echo requests carrying a pattern the reply must bring back unchanged (RFC 792), one
 * identifier per host, and the requests still waiting for their reply.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { echoPattern, ICMP_ECHO_HLEN, ICMP_ECHO_REQUEST, writeEcho } from "./icmp.ts";
import { readU16 } from "./ipv4.ts";

/** The answer to one echo request. */
export interface PingReply {
  /** Round trip in ms, from the doorbell of the request to the batch that held the reply. */
  rtt: number;
  /** TTL of the reply. */
  ttl: number;
  /** ICMP bytes (header and payload). */
  bytes: number;
}

interface Pending {
  t0: number;
  size: number;
  resolve: (r: PingReply | null) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Outstanding echo requests, by sequence number. */
export class Pinger {
  /** The identifier of this host's requests. */
  readonly id: number = (Math.random() * 0x10000) & 0xffff;
  readonly #pending = new Map<number, Pending>();
  #seq = 0;

  /** The sequence number for a new request (`seq`, or the next one); refused while that number is outstanding. */
  claim(seq?: number): number {
    const s = (seq ?? this.#seq++) & 0xffff;
    if (this.#pending.has(s)) throw new PvdrvError("nic", `ping seq ${s} is already outstanding`);
    return s;
  }

  /** Write an echo request of `size` pattern bytes at `d[off]`; returns its ICMP length. */
  write(d: Uint8Array, off: number, seq: number, size: number): number {
    for (let i = 0; i < size; i++) d[off + ICMP_ECHO_HLEN + i] = echoPattern(seq, i);
    writeEcho(d, off, ICMP_ECHO_HLEN + size, ICMP_ECHO_REQUEST, this.id, seq);
    return ICMP_ECHO_HLEN + size;
  }

  /** Wait for the reply to `seq`: the reply, or null after `timeoutMs` (or when cancelled). */
  expect(seq: number, size: number, timeoutMs: number): Promise<PingReply | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(seq);
        resolve(null);
      }, timeoutMs);
      this.#pending.set(seq, { t0: performance.now(), size, resolve, timer });
    });
  }

  /** The request for `seq` has left (its doorbell rung): the round trip counts from now. */
  sent(seq: number): void {
    const p = this.#pending.get(seq);
    if (p) p.t0 = performance.now();
  }

  /** Forget the request for `seq`, answering null. */
  cancel(seq: number): void {
    const p = this.#pending.get(seq);
    if (!p) return;
    this.#pending.delete(seq);
    clearTimeout(p.timer);
    p.resolve(null);
  }

  /** Answer every outstanding request with null. */
  cancelAll(): void {
    for (const seq of [...this.#pending.keys()]) this.cancel(seq);
  }

  /**
   * Take the echo reply at `d[off..off+len)` (type and code already checked): true when it answers one of our
   * requests with its payload unchanged (that request resolves), false when it is not ours or not intact.
   */
  answer(d: Uint8Array, off: number, len: number, ttl: number, now: number): boolean {
    if (readU16(d, off + 4) !== this.id) return false;
    const seq = readU16(d, off + 6), p = this.#pending.get(seq);
    if (!p || len !== ICMP_ECHO_HLEN + p.size) return false;
    for (let i = 0; i < p.size; i++) if (d[off + ICMP_ECHO_HLEN + i] !== echoPattern(seq, i)) return false;
    this.#pending.delete(seq);
    clearTimeout(p.timer);
    p.resolve({ rtt: now - p.t0, ttl, bytes: len });
    return true;
  }
}
