/**
 * The server side of DHCP (RFC 2131) for the tests: replies built from the client's message, with the layout
 * and option codes the client (net/dhcp.ts) reads.
 */
import { writeU32 } from "../../net/ipv4.ts";
import { BOOTP, BOOTP_FIXED, DHCP_COOKIE, OPT } from "../../net/dhcp.ts";

/**
 * A BOOTP reply to the client message `m` (at `o`): `type` (2 OFFER, 5 ACK, 6 NAK) granting `yiaddr`, with the
 * options given as [code, bytes] pairs (server identifier 10.0.0.1 unless one is given).
 */
export function dhcpReply(
  m: Uint8Array,
  o: number,
  type: number,
  yiaddr: number,
  opts: [number, number[]][] = [],
) {
  const reply = new Uint8Array(300);
  reply[BOOTP.OP] = 2, reply[1] = 1, reply[2] = 6; // BOOTREPLY, Ethernet, 6-byte addresses
  reply.set(m.subarray(o + BOOTP.XID, o + BOOTP.XID + 4), BOOTP.XID);
  reply.set(m.subarray(o + BOOTP.CHADDR, o + BOOTP.CHADDR + 6), BOOTP.CHADDR);
  writeU32(reply, BOOTP.YIADDR, yiaddr);
  writeU32(reply, BOOTP.COOKIE, DHCP_COOKIE);
  let k = BOOTP_FIXED;
  const opt = (
    code: number,
    v: number[],
  ) => (reply[k++] = code, reply[k++] = v.length, v.forEach((x) => reply[k++] = x));
  opt(OPT.MESSAGE_TYPE, [type]);
  if (!opts.some(([c]) => c === OPT.SERVER_ID)) opt(OPT.SERVER_ID, [10, 0, 0, 1]);
  for (const [c, v] of opts) opt(c, v);
  reply[k++] = OPT.END;
  return reply;
}

/** The DHCP message type (option 53) of the client message in `m` at `o` of `len` bytes. */
export function dhcpType(m: Uint8Array, o: number, len: number): number {
  for (let i = o + BOOTP_FIXED; i < o + len && m[i] !== OPT.END;) {
    if (m[i] === OPT.PAD) {
      i++;
      continue;
    }
    if (m[i] === OPT.MESSAGE_TYPE) return m[i + 2];
    i += 2 + m[i + 1];
  }
  return 0;
}
