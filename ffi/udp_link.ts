/**
 * A frame link over UDP, the shape of QEMU's `-netdev dgram`: one Ethernet frame per datagram between a local
 * port and a remote one. The switch joins the lab's UDP wires with it.
 * @module
 */
import { check, native } from "./lib.ts";
import { FrameFd } from "./frame_fd.ts";

const ECONNREFUSED = -111;

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
export class UdpLink extends FrameFd {
  // ECONNREFUSED on a read is the ICMP port unreachable an earlier send earned: nothing to read.
  private constructor(fd: number, name: string) {
    super(fd, name, [ECONNREFUSED]);
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
}
