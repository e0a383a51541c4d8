/**
 * A frame link over UDP, the shape of QEMU's `-netdev dgram`: one Ethernet frame per datagram between a local
 * port and a remote one. The switch joins the lab's UDP wires with it.
 * @module
 */
import { check, native, NativeError } from "./lib.ts";

const EAGAIN = -11, ECONNREFUSED = -111;

function ipv4(s: string): number {
  const m = s.match(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/);
  if (!m || m.slice(1).some((x) => Number(x) > 255)) throw new RangeError(`'${s}' is not an IPv4 address`);
  return m.slice(1).reduce((a, x) => a * 256 + Number(x), 0);
}

function port(s: string, what: string): number {
  if (!/^\d{1,5}$/.test(s) || Number(s) > 65535) {
    throw new RangeError(`${what} '${s}' is not a port (0-65535)`);
  }
  return Number(s);
}

/** A non-blocking UDP socket bound to a local port and connected to the remote end. */
export class UdpLink {
  /** The descriptor (readable when a datagram waits); -1 once closed. */
  fd: number;
  /** Datagrams the socket refused to send (no room, or the remote end's port was closed). */
  writeErrors = 0;

  private constructor(fd: number, readonly name: string) {
    this.fd = fd;
  }

  /** Bind `localPort` on `bindIp` (default 127.0.0.1) and connect to `remote` ("HOST:PORT", IPv4). */
  static open(remote: string, localPort: number, bindIp = "127.0.0.1"): UdpLink {
    const m = remote.match(/^([^:]+):(\d+)$/);
    if (!m) throw new RangeError(`'${remote}' is not HOST:PORT`);
    const r = native().pvdrv_udp_link(ipv4(bindIp), localPort, ipv4(m[1]), port(m[2], "remote port"));
    return new UdpLink(check(`UDP link ${bindIp}:${localPort} → ${remote}`, r), `udp:${localPort}>${remote}`);
  }

  /** Parse a local port argument. */
  static port(s: string): number {
    return port(s, "local port");
  }

  /** Read one datagram into `buf` (at most `max` bytes); its length, or -1 when none waits. */
  read(buf: Uint8Array, max: number): number {
    const r = native().pvdrv_read(this.fd, buf, max);
    if (r >= 0) return r;
    if (r === EAGAIN || r === ECONNREFUSED) return -1; // nothing, or an ICMP port unreachable from the last send
    return check(`reading ${this.name}`, r);
  }

  /** Send one frame as a datagram; false (counted) when it was not sent. */
  write(buf: Uint8Array, len: number): boolean {
    if (this.fd < 0) throw new NativeError(this.name, -9);
    const r = native().pvdrv_write(this.fd, buf, len);
    if (r === len) return true;
    this.writeErrors++;
    return false;
  }

  /** Close the socket (idempotent). */
  close(): void {
    if (this.fd < 0) return;
    native().pvdrv_close(this.fd);
    this.fd = -1;
  }
}
