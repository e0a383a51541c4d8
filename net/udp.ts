/**
 * UDP (RFC 768): the header, and the sockets a host hands out. A socket delivers datagrams two ways: to a
 * callback, with a view into the received frame that is valid during the call (nothing is allocated per datagram),
 * or as an async iterator of copies (convenient, allocating).
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { ipText } from "./ipv4.ts";

/** UDP header length. */
export const UDP_HLEN = 8;

/** A received datagram. From a callback it is one reused object whose bytes live in the frame. */
export interface Datagram {
  /** Source address. */
  src: number;
  /** Source port. */
  srcPort: number;
  /** Destination address (ours, or a broadcast). */
  dst: number;
  /** Destination port. */
  dstPort: number;
  /** The bytes holding the payload (the whole frame for a callback's view). */
  bytes: Uint8Array;
  /** Offset of the payload in {@link Datagram.bytes}. */
  offset: number;
  /** Payload length. */
  length: number;
}

/**
 * How a socket sends: bound once to the host that made it. A `reply` never throws (what cannot be routed or does
 * not fit is dropped and counted); any other send throws when there is no route or the payload is too large.
 */
export type UdpSend = (
  srcPort: number,
  dst: number,
  dstPort: number,
  bytes: Uint8Array,
  offset: number,
  length: number,
  reply: boolean,
) => boolean;

/** A bound UDP port. */
export class UdpSocket implements AsyncIterable<Datagram> {
  /** Called with each datagram (a view valid during the call); replaces the iterator's queue when set. */
  onDatagram: ((d: Datagram) => void) | null = null;
  /** Datagrams dropped because the iterator's queue was full. */
  dropped = 0;
  readonly #queue: Datagram[] = [];
  #waiter: ((v: IteratorResult<Datagram>) => void) | null = null;
  #closed = false;
  readonly #send: UdpSend;
  readonly #unbind: () => void;

  /** Created by a host's `udp(port)`. */
  constructor(
    readonly port: number,
    send: UdpSend,
    unbind: () => void,
    /** Datagrams the iterator queue holds before dropping. */
    readonly queueLimit = 1024,
  ) {
    this.#send = send;
    this.#unbind = unbind;
  }

  /**
   * Send `payload` to `dst:port`; false when no TX buffer was free (counted). Throws when there is no route to
   * `dst` or the payload exceeds the MTU: the application asked for something the host cannot do.
   */
  send(payload: Uint8Array, dst: number, dstPort: number): boolean {
    return this.sendBytes(payload, 0, payload.length, dst, dstPort);
  }

  /** Send `bytes[offset..offset+length)` (no copy of a view is made): the allocation-free form of send. */
  sendBytes(bytes: Uint8Array, offset: number, length: number, dst: number, dstPort: number): boolean {
    if (this.#closed) throw new PvdrvError("nic", `udp port ${this.port} is closed`);
    return this.#send(this.port, dst, dstPort, bytes, offset, length, false);
  }

  /**
   * Send a datagram's payload back to where it came from (an echo, without allocating). Never throws: a reply
   * that cannot go (no route, too large, the socket or host closed) is dropped, counted by the host, and false.
   */
  reply(d: Datagram): boolean {
    if (this.#closed) return false;
    return this.#send(this.port, d.src, d.srcPort, d.bytes, d.offset, d.length, true);
  }

  /** Deliver a received datagram (the host calls this). */
  deliver(d: Datagram): void {
    if (this.onDatagram) return this.onDatagram(d);
    const copy: Datagram = { ...d, bytes: d.bytes.slice(d.offset, d.offset + d.length), offset: 0 };
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      return w({ value: copy, done: false });
    }
    if (this.#queue.length >= this.queueLimit) return void this.dropped++;
    this.#queue.push(copy);
  }

  /** The next datagram (a copy), or null once the socket is closed or after `timeoutMs` (if given). */
  next(timeoutMs?: number): Promise<Datagram | null> {
    if (this.#queue.length) return Promise.resolve(this.#queue.shift()!);
    if (this.#closed) return Promise.resolve(null);
    if (this.#waiter) throw new PvdrvError("nic", `udp port ${this.port}: one next() at a time`);
    return new Promise((r) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const w = this.#waiter = (v) => {
        clearTimeout(timer);
        r(v.done ? null : v.value);
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          if (this.#waiter === w) this.#waiter = null;
          r(null);
        }, timeoutMs);
      }
    });
  }

  /** Datagrams (copies) until the socket closes. */
  async *[Symbol.asyncIterator](): AsyncIterator<Datagram> {
    for (let d; (d = await this.next());) yield d;
  }

  /** Unbind; a pending iteration ends. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unbind();
    const w = this.#waiter;
    this.#waiter = null;
    w?.({ value: undefined, done: true });
  }

  /** "udp :PORT". */
  toString(): string {
    return `udp :${this.port}`;
  }
}

/** "ip:port" of a datagram's source. */
export function sourceText(d: Datagram): string {
  return `${ipText(d.src)}:${d.srcPort}`;
}
