/**
 * The host's side of its DHCP client: the client itself (a state machine with no I/O, dhcp.ts), the message it
 * wants sent, and the callers waiting for a lease, each with its deadline.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { DhcpClient, type DhcpSend, type Lease } from "./dhcp.ts";

interface Waiter {
  resolve: (l: Lease) => void;
  reject: (e: Error) => void;
  deadline: number;
}

/**
 * Retransmission for a host's client: 2 s doubling to 16 s, quicker than RFC 2131 §4.1's 4 s to 64 s suggestion
 * (which it allows): a lab or cloud DHCP server answers in milliseconds, and a host waits for its address.
 */
const HOST_DHCP_TIMING = { retryMs: 2000, maxRetryMs: 16_000 };

/** A DHCP client at work for a host, and who waits on it. */
export class HostDhcp {
  /** The client (RFC 2131), started at construction. */
  readonly client: DhcpClient;
  /** The message {@link HostDhcp.due} found: bytes in `client.buf`. */
  readonly out: DhcpSend = { length: 0, dst: 0, src: 0 };
  #waiters: Waiter[] = [];

  /** Start leasing for the MAC `mac` at `now`: a DISCOVER goes out at the first {@link HostDhcp.due}. */
  constructor(mac: number, now: number) {
    this.client = new DhcpClient(mac, HOST_DHCP_TIMING);
    this.client.start(now);
  }

  /** The lease: at once when bound, else when the client binds, or an error after `timeoutMs`. */
  wait(now: number, timeoutMs: number): Promise<Lease> {
    if (this.client.state === "bound") return Promise.resolve(this.client.lease!);
    return new Promise((resolve, reject) =>
      this.#waiters.push({ resolve, reject, deadline: now + timeoutMs })
    );
  }

  /**
   * Whether the client has a message to send at `now` (in {@link HostDhcp.out}); waiters past their deadline are
   * told so.
   */
  due(now: number): boolean {
    const c = this.client;
    for (const w of this.#waiters) {
      if (now > w.deadline) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.reject(
          new PvdrvError("nic", `no DHCP lease after ${Math.round(c.elapsed(now) / 1000)} s (${c.state})`),
        );
        break;
      }
    }
    return c.poll(now, this.out);
  }

  /** The client bound a lease: every waiter gets it. */
  bound(l: Lease): void {
    for (const w of this.#waiters.splice(0)) w.resolve(l);
  }

  /** No lease will come (the host stopped): every waiter gets `e`. */
  fail(e: Error): void {
    for (const w of this.#waiters.splice(0)) w.reject(e);
  }
}
