/**
 * The host's receive side: one frame in, checked layer by layer (Ethernet, ARP, IPv4 per RFC 1122, ICMP echo, UDP)
 * and handled in place: ARP learned and answered, pings answered, echo replies matched, datagrams delivered to
 * their socket or the DHCP client. Everything malformed or not for this host is counted and dropped; replies go
 * into the host's TX batch. Allocates nothing per frame.
 * @module
 */
import type { Nic } from "../drivers/net/nic.ts";
import { RX_CSUM_PARTIAL, RX_CSUM_VALID } from "../drivers/net/nic.ts";
import type { PacketBuffer } from "../drivers/net/packet_pool.ts";
import { ARP_REPLY, type ArpCache, type ArpView, readArp, writeArp } from "./arp.ts";
import { finish, pseudoSum, sum16 } from "./checksum.ts";
import { DHCP_CLIENT_PORT, DHCP_SERVER_PORT } from "./dhcp.ts";
import { BROADCAST_MAC, ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, isGroupMac, readMac } from "./ethernet.ts";
import type { HostDhcp } from "./host_dhcp.ts";
import type { HostStats } from "./host_stats.ts";
import type { TxBatch } from "./host_tx.ts";
import {
  ICMP_DEST_UNREACHABLE,
  ICMP_ECHO_HLEN,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  writeEcho,
} from "./icmp.ts";
import type { Addressing, IpOutput } from "./ip_output.ts";
import {
  BROADCAST_IP,
  checkIpv4,
  IpCheck,
  IPV4_HLEN,
  mayBeSource,
  PROTO_ICMP,
  PROTO_UDP,
  readU16,
  readU32,
} from "./ipv4.ts";
import type { Pinger } from "./pinger.ts";
import { type Datagram, UDP_HLEN, type UdpSocket } from "./udp.ts";

const L3 = ETH_HLEN, L4 = ETH_HLEN + IPV4_HLEN;

/** What the receive side needs of its host beyond the shared state: the DHCP client and two reports. */
export interface InputHost {
  /** The DHCP client, once {@link NetHost.dhcp} started one. */
  dhcp(): HostDhcp | null;
  /** The DHCP client was bound or NAKed by a received reply. */
  dhcpEvent(r: "bound" | "nak", now: number): void;
  /** An application callback threw while a datagram was delivered. */
  appFailed(e: unknown): void;
}

/** The parts of a host the receive side reads and writes (each made once by the host). */
export interface HostParts {
  /** The NIC (its MTU). */
  nic: Nic;
  /** Our MAC as a number. */
  mac: number;
  /** Counters. */
  stats: HostStats;
  /** The ARP cache. */
  arp: ArpCache;
  /** Our address, prefix, gateway and broadcast (changed in place). */
  addr: Addressing;
  /** Replies go here. */
  out: TxBatch;
  /** IPv4 output (headers, ARP-resolved sends). */
  ipOut: IpOutput;
  /** Outstanding pings. */
  pinger: Pinger;
  /** Bound UDP sockets by port. */
  sockets: Map<number, UdpSocket>;
  /** Answer no ARP requests and pings (another stack owns the address). */
  passive: boolean;
}

/** A host's frame demultiplexer. */
export class HostInput {
  readonly #nic: Nic;
  readonly #mac: number;
  readonly #stats: HostStats;
  readonly #arp: ArpCache;
  readonly #addr: Addressing;
  readonly #out: TxBatch;
  readonly #ipOut: IpOutput;
  readonly #pinger: Pinger;
  readonly #sockets: Map<number, UdpSocket>;
  readonly #passive: boolean;
  readonly #h: InputHost;
  readonly #arpView: ArpView = { op: 0, sha: 0, spa: 0, tpa: 0 };
  readonly #dgram: Datagram = {
    src: 0,
    srcPort: 0,
    dst: 0,
    dstPort: 0,
    bytes: new Uint8Array(0),
    offset: 0,
    length: 0,
  };

  /** The receive side of the host made of `p`. */
  constructor(p: HostParts, h: InputHost) {
    this.#nic = p.nic;
    this.#mac = p.mac;
    this.#stats = p.stats;
    this.#arp = p.arp;
    this.#addr = p.addr;
    this.#out = p.out;
    this.#ipOut = p.ipOut;
    this.#pinger = p.pinger;
    this.#sockets = p.sockets;
    this.#passive = p.passive;
    this.#h = h;
  }

  /** Handle one received frame in place. */
  input(b: PacketBuffer, now: number): void {
    const s = this.#stats, d = b.data, len = b.length;
    s.rxFrames++;
    if (len < ETH_HLEN) return void s.rxTruncated++;
    const dstMac = readMac(d, 0);
    if (dstMac !== this.#mac && dstMac !== BROADCAST_MAC) return void s.rxIgnored++;
    // No station sends from a group (I/G bit set) or an all-zero MAC: nothing from one is answered, learned or
    // delivered. Read from the bytes: a 48-bit number here would be a heap number per frame.
    if ((d[6] & 1) || (d[6] | d[7] | d[8] | d[9] | d[10] | d[11]) === 0) return void s.rxBadSource++;
    const type = (d[12] << 8) | d[13];
    if (type === ETHERTYPE_ARP) return this.#arpInput(d, len, now);
    if (type !== ETHERTYPE_IPV4) return void s.rxIgnored++;
    const c = checkIpv4(d, L3, len - L3);
    if (c !== IpCheck.Ok) {
      if (c === IpCheck.Truncated) s.rxTruncated++;
      else if (c === IpCheck.BadHeader) s.ipBadHeader++;
      else if (c === IpCheck.BadChecksum) s.ipBadChecksum++;
      else s.ipFragments++;
      return;
    }
    const ihl = (d[L3] & 15) * 4, total = readU16(d, L3 + 2), proto = d[L3 + 9];
    // The frame rule leaves room for a VLAN tag; an untagged packet past the MTU is not one any link carries.
    if (total > this.#nic.mtu) return void s.ipTooBig++;
    const src = readU32(d, L3 + 12), dst = readU32(d, L3 + 16);
    const l4 = L3 + ihl, l4len = total - ihl;
    const toDhcpServer = proto === PROTO_UDP && l4len >= UDP_HLEN && readU16(d, l4 + 2) === DHCP_SERVER_PORT;
    if (!this.#sourceOk(src, toDhcpServer)) return void s.ipBadSource++;
    const forUs = this.#addr.ip !== 0 &&
      (dst === this.#addr.ip || dst === BROADCAST_IP || dst === this.#addr.bcast);
    // Before an address is leased, only the DHCP client's replies are taken (RFC 2131 §4.1).
    const dhcpReply = !forUs && this.#h.dhcp() !== null && this.#addr.ip === 0 && proto === PROTO_UDP &&
      l4len >= UDP_HLEN && readU16(d, l4 + 2) === DHCP_CLIENT_PORT;
    if (!forUs && !dhcpReply) return void s.ipNotForUs++;
    // RFC 1122 §3.3.6: a unicast IP destination in a link-layer broadcast is discarded.
    if (dstMac === BROADCAST_MAC && dst === this.#addr.ip) return void s.ipNotForUs++;
    if (proto === PROTO_ICMP) this.#icmpInput(b, l4, l4len, src, dst, now);
    else if (proto === PROTO_UDP) this.#udpInput(b, l4, l4len, src, dst, now);
    else s.ipUnknownProtocol++;
  }

  #arpInput(d: Uint8Array, len: number, now: number): void {
    const v = this.#arpView, s = this.#stats;
    if (!readArp(d, len, v)) return void s.arpBad++;
    // A sender no host can be is neither learned nor answered: a group or zero MAC, a special-purpose address
    // other than 0.0.0.0 (an RFC 5227 probe), a broadcast address.
    if (
      v.sha === 0 || isGroupMac(v.sha) || (v.spa !== 0 && !mayBeSource(v.spa)) ||
      (this.#addr.ip !== 0 && v.spa === this.#addr.bcast)
    ) return void s.arpBad++;
    const forUs = this.#addr.ip !== 0 && v.tpa === this.#addr.ip;
    // RFC 826: update an entry we have; add one when the packet is for us. Only senders on our subnet are learned
    // (a neighbour off it is never a next hop), and never one claiming our own address.
    if (v.spa !== 0 && v.spa !== this.#addr.ip && this.#ipOut.onSubnet(v.spa)) {
      const waiting = this.#arp.learn(v.spa, v.sha, now, forUs);
      if (waiting) { for (const w of waiting) this.#ipOut.sendResolved(w, v.sha); }
    }
    if (!forUs) return void s.arpOther++;
    if (v.op === ARP_REPLY) return void s.arpReplies++;
    s.arpRequests++;
    if (this.#passive) return;
    const r = this.#out.take();
    if (!r) return;
    r.length = writeArp(r.data, ARP_REPLY, v.sha, this.#mac, this.#addr.ip, v.sha, v.spa);
    this.#out.push(r);
  }

  #icmpInput(b: PacketBuffer, off: number, len: number, src: number, dst: number, now: number): void {
    const d = b.data, s = this.#stats;
    if (len < ICMP_ECHO_HLEN || finish(sum16(d, off, len)) !== 0) return void s.icmpOther++;
    const type = d[off], code = d[off + 1];
    if (type === ICMP_ECHO_REQUEST && code === 0) {
      // Echo requests to a broadcast address are not answered (RFC 1122 §3.2.2.6 allows either; Linux ignores).
      if (this.#passive || dst !== this.#addr.ip || src === 0 || src === BROADCAST_IP) {
        return void s.icmpOther++;
      }
      s.icmpEchoRequests++;
      const r = this.#out.take();
      if (!r) return;
      const o = r.data;
      // The reply carries the request's identifier, sequence and data (RFC 792); it goes back to the sender's MAC.
      for (let i = ICMP_ECHO_HLEN; i < len; i++) o[L4 + i] = d[off + i];
      writeEcho(o, L4, len, ICMP_ECHO_REPLY, readU16(d, off + 4), readU16(d, off + 6));
      this.#ipOut.writeHeaders(r, readMac(d, 6), src, PROTO_ICMP, len);
      this.#out.push(r);
      return;
    }
    if (type === ICMP_ECHO_REPLY && code === 0 && this.#pinger.answer(d, off, len, d[L3 + 8], now)) {
      return void s.icmpEchoReplies++;
    }
    if (type === ICMP_DEST_UNREACHABLE) return void s.icmpUnreachable++;
    s.icmpOther++;
  }

  #udpInput(b: PacketBuffer, off: number, len: number, src: number, dst: number, now: number): void {
    const d = b.data, s = this.#stats;
    if (len < UDP_HLEN) return void s.udpBadLength++;
    const ulen = readU16(d, off + 4);
    if (ulen < UDP_HLEN || ulen > len) return void s.udpBadLength++;
    // RFC 768: checksum 0 means none was sent. A device that validated it (or a local sender that left it
    // partial, virtio NEEDS_CSUM / netif csum_blank) spares the sum.
    if (readU16(d, off + 6) !== 0 && !(b.flags & (RX_CSUM_VALID | RX_CSUM_PARTIAL))) {
      if (finish(sum16(d, off, ulen, pseudoSum(src, dst, PROTO_UDP, ulen))) !== 0) {
        return void s.udpBadChecksum++;
      }
    }
    const sport = readU16(d, off), dport = readU16(d, off + 2);
    const dhcp = dport === DHCP_CLIENT_PORT && sport === DHCP_SERVER_PORT ? this.#h.dhcp() : null;
    if (dhcp) {
      s.udpDelivered++;
      const r = dhcp.client.receive(d, off + UDP_HLEN, ulen - UDP_HLEN, now);
      if (r === "refused") s.dhcpRefused++;
      else if (r) this.#h.dhcpEvent(r, now);
      return;
    }
    const sock = this.#sockets.get(dport);
    if (!sock) return void s.udpNoPort++;
    s.udpDelivered++;
    const g = this.#dgram;
    g.src = src, g.srcPort = sport, g.dst = dst, g.dstPort = dport;
    g.bytes = d, g.offset = off + UDP_HLEN, g.length = ulen - UDP_HLEN;
    try {
      sock.deliver(g);
    } catch (e) {
      // The application's failure is the application's: counted, reported once, and the host goes on.
      this.#h.appFailed(e);
    }
  }

  /** Whether `src` may be a packet's source (RFC 1122 §3.2.1.3); 0.0.0.0 only for a DHCP server's port. */
  #sourceOk(src: number, toDhcpServer: boolean): boolean {
    if (src === 0) return toDhcpServer; // a DHCP client before its lease (RFC 2131 §4.1)
    return mayBeSource(src) && (this.#addr.ip === 0 || (src !== this.#addr.ip && src !== this.#addr.bcast));
  }
}
