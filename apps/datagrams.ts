/**
 * pvdrv's test datagrams: a UDP payload that says which one it is and can be checked byte for byte (the 32-bit
 * sequence number, big-endian, then {@link patternByte} of it), and the exchanges the `udp` task runs with them.
 * @module
 */
import { patternByte } from "./frames.ts";
import { frameSize } from "./traffic.ts";
import type { NetHost } from "../net/host.ts";
import type { Datagram, UdpSocket } from "../net/udp.ts";

/** Smallest test datagram: the sequence number. */
export const MIN_DATAGRAM = 4;

/** Write test datagram `seq` of `size` bytes into `buf`. */
export function writeDatagram(buf: Uint8Array, seq: number, size: number): void {
  buf[0] = seq >>> 24, buf[1] = seq >>> 16, buf[2] = seq >>> 8, buf[3] = seq;
  for (let i = MIN_DATAGRAM; i < size; i++) buf[i] = patternByte(seq, i);
}

/** The sequence number of the test datagram at `d[off..off+len)`, or -1 when any byte is wrong. */
export function checkDatagram(d: Uint8Array, off: number, len: number): number {
  if (len < MIN_DATAGRAM) return -1;
  const seq = ((d[off] << 24) | (d[off + 1] << 16) | (d[off + 2] << 8) | d[off + 3]) >>> 0;
  for (let i = MIN_DATAGRAM; i < len; i++) if (d[off + i] !== patternByte(seq, i)) return -1;
  return seq;
}

/** Counts of a `send --echo` run. */
export interface EchoRun {
  /** Datagrams sent. */
  sent: number;
  /** Replies that matched what was sent, byte for byte. */
  echoed: number;
  /** Replies with wrong bytes, a wrong length or from elsewhere. */
  corrupt: number;
  /** Datagrams never answered within the timeout. */
  lost: number;
  /** Seconds taken. */
  seconds: number;
}

/**
 * Send `count` test datagrams of sizes cycling min..max to `dst:port` and check each echo: up to `window` in
 * flight, each waited for up to `timeoutMs`.
 */
export async function echoRun(
  host: NetHost,
  sock: UdpSocket,
  dst: number,
  port: number,
  o: { count: number; min: number; max: number; window: number; timeoutMs: number; stop?: () => boolean },
): Promise<EchoRun> {
  const buf = new Uint8Array(o.max);
  const sizeOf = (seq: number) => frameSize(seq, o.min, o.max);
  const answered = new Uint8Array(o.count);
  const r: EchoRun = { sent: 0, echoed: 0, corrupt: 0, lost: 0, seconds: 0 };
  const t0 = performance.now();
  let next = 0, outstanding = 0;
  const check = (d: Datagram) => {
    const seq = checkDatagram(d.bytes, d.offset, d.length);
    if (
      seq < 0 || seq >= o.count || d.length !== sizeOf(seq) || d.src !== dst || d.srcPort !== port ||
      answered[seq]
    ) {
      r.corrupt++;
      return;
    }
    answered[seq] = 1;
    r.echoed++;
    outstanding--;
  };
  while ((next < o.count || outstanding > 0) && !o.stop?.()) {
    while (next < o.count && outstanding < o.window) {
      const size = sizeOf(next);
      writeDatagram(buf, next, size);
      if (!sock.sendBytes(buf, 0, size, dst, port)) break; // no TX buffer now: wait for replies first
      next++, outstanding++, r.sent++;
    }
    const d = await sock.next(o.timeoutMs);
    if (!d) {
      r.lost += outstanding; // the window timed out: count what is missing and go on
      outstanding = 0;
      continue;
    }
    check(d);
  }
  host.checkHealth();
  r.seconds = (performance.now() - t0) / 1000;
  return r;
}

/** Counts of a `recv` run. */
export interface RecvRun {
  /** Valid test datagrams. */
  received: number;
  /** Datagrams with wrong bytes. */
  corrupt: number;
  /** Valid ones seen before. */
  duplicate: number;
  /** Seconds from the first to the last. */
  seconds: number;
}

/** Receive test datagrams until `count` valid ones (0: no limit) or `idleMs` without any. */
export async function recvRun(sock: UdpSocket, o: { count: number; idleMs: number; stop?: () => boolean }) {
  const seen = new Set<number>();
  const r: RecvRun = { received: 0, corrupt: 0, duplicate: 0, seconds: 0 };
  let first = 0, last = 0;
  while ((o.count === 0 || r.received < o.count) && !o.stop?.()) {
    const d = await sock.next(o.idleMs);
    if (!d) break;
    last = performance.now();
    first ||= last;
    const seq = checkDatagram(d.bytes, d.offset, d.length);
    if (seq < 0) r.corrupt++;
    else if (seen.has(seq)) r.duplicate++;
    else seen.add(seq), r.received++;
  }
  r.seconds = (last - first) / 1000;
  return r;
}
