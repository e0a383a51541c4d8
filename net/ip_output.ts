/**
 * The host's IPv4 output: headers written, the next hop chosen (the subnet, else the gateway) and resolved through
 * ARP (frames parked while it resolves, within the cache's bounds), UDP datagrams built with their checksum left
 * to the device or computed here. Nothing is allocated per frame but a parked frame's copy.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import type { Nic } from "../drivers/net/nic.ts";
import type { PacketBuffer } from "../drivers/net/packet_pool.ts";
import { ARP_REQUEST, type ArpCache, Enqueued, writeArp } from "./arp.ts";
import { completeAt, fold, pseudoSum } from "./checksum.ts";
import { BROADCAST_MAC, ETH_HLEN, ETHERTYPE_IPV4, writeEthernet, writeMac } from "./ethernet.ts";
import { BROADCAST_IP, ipText, IPV4_HLEN, maskOf, PROTO_UDP, writeIpv4, writeU16 } from "./ipv4.ts";
import { UDP_HLEN } from "./udp.ts";
import type { HostStats } from "./host_stats.ts";
import type { TxBatch } from "./host_tx.ts";

const L3 = ETH_HLEN, L4 = ETH_HLEN + IPV4_HLEN;

/** Where a host is on its network; one record, read by the receive side and this one alike. */
export interface Addressing {
  /** Our address (0: none yet). */
  ip: number;
  /** Prefix length of our subnet. */
  prefix: number;
  /** Default gateway (0: none). */
  gateway: number;
  /** The subnet broadcast address (0: no address); kept, not computed per frame (a boxed number each time). */
  bcast: number;
}

/** "10.0.0.2/24" or "unconfigured". */
export function addressText(a: Addressing): string {
  return a.ip ? `${ipText(a.ip)}/${a.prefix}` : "unconfigured";
}

/** IPv4 output on one NIC queue. */
export class IpOutput {
  #ipId = 0;

  /** Output for the host at `addr` with MAC `macNum`, through `out`, resolving with `arp`. */
  constructor(
    readonly nic: Nic,
    readonly out: TxBatch,
    readonly arp: ArpCache,
    readonly addr: Addressing,
    readonly macNum: number,
    readonly ttl: number,
    readonly stats: HostStats,
  ) {}

  /** Whether `ip` is on our subnet (never, without an address). */
  onSubnet(ip: number): boolean {
    const a = this.addr, mask = maskOf(a.prefix);
    return a.ip !== 0 && (ip & mask) === (a.ip & mask);
  }

  /**
   * Write the IPv4 and Ethernet headers of `b` (payload of `len` bytes at L4 already there) for `dst` and queue
   * it: to `dstMac` when given (≥ 0), else to the broadcast MAC for broadcasts, else through ARP. False when there
   * is no route (the buffer given back, counted in txNoRoute).
   */
  sendIp(
    b: PacketBuffer,
    dst: number,
    proto: number,
    len: number,
    dstMac: number,
    src: number = this.addr.ip,
  ): boolean {
    if (dstMac < 0 && (dst === BROADCAST_IP || (this.addr.ip && dst === this.addr.bcast))) {
      dstMac = BROADCAST_MAC;
    }
    this.writeHeaders(b, dstMac, dst, proto, len, src);
    if (dstMac < 0) {
      // Resolve the next hop: the destination on our subnet, else the gateway.
      const hop = this.onSubnet(dst) ? dst : this.addr.gateway;
      if (hop === 0) {
        this.out.giveBack(b);
        this.stats.txNoRoute++;
        return false;
      }
      const now = performance.now(), mac = this.arp.lookup(hop, now);
      if (mac < 0) {
        // Park a copy until the address resolves, give the buffer back, and ask. The copy is sent later from a
        // fresh buffer, so a checksum left to the device is completed here, as the device would.
        if (b.csumOffset) {
          completeAt(b.data, b.csumStart, b.length, b.csumStart + b.csumOffset, proto === PROTO_UDP);
        }
        if (this.arp.enqueue(hop, b.data.subarray(0, b.length), now) === Enqueued.Request) {
          this.arpRequest(hop);
        }
        this.out.giveBack(b);
        this.out.flushOutside();
        return true;
      }
      writeMac(b.data, 0, mac);
    }
    this.out.push(b);
    this.out.flushOutside();
    return true;
  }

  /** The error for a destination with no route. */
  noRoute(dst: number): PvdrvError {
    return new PvdrvError("nic", `no route to ${ipText(dst)} (${addressText(this.addr)}, no gateway)`);
  }

  /** Write the Ethernet and IPv4 headers: dstMac < 0 leaves the destination MAC for {@link IpOutput.sendIp}. */
  writeHeaders(
    b: PacketBuffer,
    dstMac: number,
    dst: number,
    proto: number,
    len: number,
    src: number = this.addr.ip,
  ): void {
    const d = b.data;
    writeEthernet(d, dstMac < 0 ? 0 : dstMac, this.macNum, ETHERTYPE_IPV4);
    writeIpv4(d, L3, src, dst, proto, len, this.ttl, this.#ipId = (this.#ipId + 1) & 0xffff);
    b.length = L4 + len;
  }

  /** Send a frame that waited for ARP, now that its next hop's MAC is known. */
  sendResolved(frame: Uint8Array, mac: number): void {
    const b = this.out.take();
    if (!b) return;
    b.data.set(frame);
    writeMac(b.data, 0, mac);
    b.length = frame.length;
    this.out.push(b);
    this.out.flushOutside();
  }

  /** Queue an ARP request for `ip` (RFC 826). */
  arpRequest(ip: number): void {
    const r = this.out.take();
    if (!r) return;
    r.length = writeArp(r.data, ARP_REQUEST, BROADCAST_MAC, this.macNum, this.addr.ip, 0, ip);
    this.out.push(r);
  }

  /**
   * Send a datagram. A `reply` (an answer to what the wire sent) never throws: one that cannot be routed or does
   * not fit is dropped and counted. Anything else the application asked for that cannot be sent throws.
   */
  udp(
    sport: number,
    dst: number,
    dport: number,
    bytes: Uint8Array,
    off: number,
    len: number,
    reply: boolean,
    src: number = this.addr.ip,
  ): boolean {
    if (src === 0 && dst !== BROADCAST_IP) {
      if (reply) return void this.stats.txNoRoute++, false;
      throw new PvdrvError("nic", "no address yet: configure one or lease with DHCP");
    }
    const max = Math.min(this.nic.mtu - IPV4_HLEN - UDP_HLEN, this.nic.maxFrame - L4 - UDP_HLEN);
    if (len > max) {
      if (reply) return void this.stats.txTooBig++, false;
      throw new RangeError(`UDP payload of ${len} bytes exceeds ${max} (MTU ${this.nic.mtu})`);
    }
    const b = this.out.take();
    if (!b) return false;
    const d = b.data, u = L4, ulen = UDP_HLEN + len;
    for (let i = 0; i < len; i++) d[u + UDP_HLEN + i] = bytes[off + i];
    writeU16(d, u, sport);
    writeU16(d, u + 2, dport);
    writeU16(d, u + 4, ulen);
    // The field holds the pseudo-header sum; the device sums from csum_start to the end into csum_start +
    // csum_offset (virtio 1.2 §5.1.6.2, netif.h NETTXF_csum_blank), or we do the same here.
    writeU16(d, u + 6, fold(pseudoSum(src, dst, PROTO_UDP, ulen)));
    if (this.nic.txChecksum) {
      b.csumStart = u;
      b.csumOffset = 6;
    } else completeAt(d, u, u + ulen, u + 6, true);
    if (this.sendIp(b, dst, PROTO_UDP, ulen, -1, src)) return true;
    if (reply) return false;
    throw this.noRoute(dst);
  }
}
