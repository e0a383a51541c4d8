/**
 * The `net` fuzz target: the IPv4 host on a virtio-net model, fed a hostile wire. Malformed Ethernet, ARP, IPv4,
 * ICMP, UDP and DHCP; spoofed and special sources; floods of distinct senders; oversize and VLAN-tagged frames;
 * hostile DHCP servers; all interleaved with valid requests whose replies must come back byte-exact. After every
 * batch the oracle checks:
 *
 * - nothing escaped the host (its loop error, `rxErrors`): other-exception;
 * - every valid request got its exact reply, and every received frame landed in exactly one counter: silent;
 * - every frame the host sent obeys the RFCs: from our MAC and address, never to a group or zero MAC (but ARP
 *   requests and DHCP's broadcasts), never to a special-purpose, broadcast or our own address, checksums right,
 *   within the MTU: silent;
 * - the ARP cache within its bounds, ARP requests within their rate, a leased address a host may have: silent;
 * - a batch handled within its bound: hang.
 * @module
 */
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { NetHost } from "../../net/host.ts";
import { RX_COUNTERS } from "../../net/host_stats.ts";
import { ARP_DEFAULTS } from "../../net/arp.ts";
import { finish, pseudoSum, sum16 } from "../../net/checksum.ts";
import {
  checkIpv4,
  hostCidrProblem,
  IpCheck,
  maskOf,
  readU16,
  readU32,
  specialAddress,
  writeU16,
  writeU32,
} from "../../net/ipv4.ts";
import { macNumber, readMac } from "../../net/ethernet.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { completeDeviceChecksum } from "../models/wire.ts";
import { classify, Hang, type Result, type Rng, Silent } from "./oracle.ts";
import { BOOTP, BOOTP_FIXED, DHCP_COOKIE, OPT } from "../../net/dhcp.ts";
import { dhcpType } from "../models/dhcp_server.ts";

const FEATURES = F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | NET_F.MAC | NET_F.STATUS |
  NET_F.MRG_RXBUF |
  NET_F.MTU;
const PEER_MAC = [2, 0, 0, 0, 0, 0xb];
const ECHO_PORT = 7, SINK_PORT = 9, THROW_PORT = 13;
const SPECIAL_SOURCES = [
  0,
  0x00010203,
  0x7f000001,
  0xe0000005,
  0xefffffff,
  0xf0000001,
  0xffffffff,
  0xa9fe0102, // link-local: a valid source
];
/** A batch that takes longer than this is a dead loop (generous: the host handles it in well under 1 ms). */
const BATCH_BOUND_MS = 2000;

/** What one iteration runs against. */
interface Lab {
  m: VirtioNetModel;
  nic: VirtioNet;
  host: NetHost;
  mac: Uint8Array;
  mtu: number;
  dhcp: boolean;
  /** The DHCP client's last message (xid and chaddr for a server's replies). */
  clientMsg: Uint8Array | null;
  arpRequestsSent: number;
  t0: number;
}

/** A request whose exact reply must leave the host. */
interface Expected {
  frame: Uint8Array;
  what: string;
}

// ---------------------------------------------------------------- frame builders

function ethernet(f: Uint8Array, dst: ArrayLike<number>, src: ArrayLike<number>, type: number): void {
  f.set(dst, 0);
  f.set(src, 6);
  writeU16(f, 12, type);
}

function ipv4(f: Uint8Array, src: number, dst: number, proto: number, l4len: number, ttl = 64): void {
  f.fill(0, 14, 34);
  f[14] = 0x45;
  writeU16(f, 16, 20 + l4len);
  writeU16(f, 18, 0x1234);
  f[22] = ttl;
  f[23] = proto;
  writeU32(f, 26, src);
  writeU32(f, 30, dst);
  writeU16(f, 24, finish(sum16(f, 14, 20)));
}

function udp(
  src: number,
  dst: number,
  sport: number,
  dport: number,
  payload: Uint8Array,
  dstMac: ArrayLike<number>,
) {
  const f = new Uint8Array(42 + payload.length);
  ethernet(f, dstMac, PEER_MAC, 0x0800);
  ipv4(f, src, dst, 17, 8 + payload.length);
  writeU16(f, 34, sport), writeU16(f, 36, dport), writeU16(f, 38, 8 + payload.length);
  f.set(payload, 42);
  writeU16(
    f,
    40,
    finish(sum16(f, 34, 8 + payload.length, pseudoSum(src, dst, 17, 8 + payload.length))) || 0xffff,
  );
  return f;
}

function icmpEcho(
  type: number,
  src: number,
  dst: number,
  id: number,
  seq: number,
  data: Uint8Array,
  dstMac: ArrayLike<number>,
  srcMac: ArrayLike<number> = PEER_MAC,
) {
  const f = new Uint8Array(42 + data.length);
  ethernet(f, dstMac, srcMac, 0x0800);
  ipv4(f, src, dst, 1, 8 + data.length);
  f[34] = type;
  writeU16(f, 38, id), writeU16(f, 40, seq);
  f.set(data, 42);
  writeU16(f, 36, finish(sum16(f, 34, 8 + data.length)));
  return f;
}

function arp(
  op: number,
  sha: ArrayLike<number>,
  spa: number,
  tha: ArrayLike<number>,
  tpa: number,
  dstMac: ArrayLike<number>,
) {
  const f = new Uint8Array(42);
  ethernet(f, dstMac, PEER_MAC, 0x0806);
  writeU16(f, 14, 1), writeU16(f, 16, 0x0800);
  f[18] = 6, f[19] = 4;
  writeU16(f, 20, op);
  f.set(sha, 22);
  writeU32(f, 28, spa);
  f.set(tha, 32);
  writeU32(f, 38, tpa);
  return f;
}

function bytes(rng: Rng, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = rng.int(0, 255);
  return b;
}

function subnetOf(l: Lab): { peer: number; bcast: number; mask: number } {
  const mask = maskOf(l.host.prefix), net = (l.host.ip & mask) >>> 0;
  let peer = (net | 1) >>> 0;
  if (peer === l.host.ip) peer = (net | 2) >>> 0;
  return { peer, bcast: (net | ~mask) >>> 0, mask };
}

/** A BOOTP reply from a server at the peer to the client's last message; hostile fields when `hostile`. */
function dhcpFrame(l: Lab, rng: Rng, hostile: boolean): Uint8Array {
  const m = l.clientMsg ?? new Uint8Array(300);
  const p = new Uint8Array(300);
  p[BOOTP.OP] = 2, p[1] = 1, p[2] = 6;
  p.set(m.subarray(BOOTP.XID, BOOTP.XID + 4), BOOTP.XID);
  p.set(m.subarray(BOOTP.CHADDR, BOOTP.CHADDR + 6), BOOTP.CHADDR);
  if (hostile && rng.bool(0.1)) p[BOOTP.XID] ^= 1; // someone else's transaction
  const good = 0x0a000002;
  const yi = hostile
    ? rng.pick([
      good,
      0xffffff00,
      0x0a000000,
      0x0a0000ff,
      0x7f000005,
      0xe0000009,
      0,
      rng.int(0, 0xffffffff) >>> 0,
    ])
    : good;
  writeU32(p, BOOTP.YIADDR, yi);
  writeU32(p, BOOTP.COOKIE, DHCP_COOKIE);
  let k = BOOTP_FIXED;
  const opt = (code: number, v: number[]) => {
    p[k++] = code, p[k++] = v.length;
    for (const x of v) p[k++] = x;
  };
  const u32 = (v: number) => [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];
  const type = dhcpType(m, 0, m.length);
  opt(OPT.MESSAGE_TYPE, [hostile && rng.bool(0.2) ? rng.pick([2, 5, 6, 9]) : type === 1 ? 2 : 5]);
  opt(OPT.SERVER_ID, u32(hostile && rng.bool(0.1) ? rng.pick([0xffffffff, 0, 0x7f000001]) : 0x0a000001));
  opt(
    OPT.SUBNET_MASK,
    u32(hostile ? rng.pick([0xffffff00, 0xffff0000, 0xff00ff00, 0xfffffffe, 0xffffffff, 0]) : 0xffffff00),
  );
  opt(OPT.ROUTER, u32(hostile ? rng.pick([0x0a000001, 0xc0a80101, good, 0x0a0000ff, 0]) : 0x0a000001));
  opt(OPT.LEASE_TIME, u32(hostile ? rng.pick([0, 1, 2, 60, 0xffffffff]) : 3600));
  if (hostile && rng.bool()) opt(OPT.RENEWAL_T1, u32(rng.int(0, 5000)));
  if (hostile && rng.bool()) opt(OPT.REBINDING_T2, u32(rng.int(0, 5000)));
  if (hostile && rng.bool(0.2)) p[rng.int(240, 299)] = rng.int(0, 255); // a broken option
  if (!hostile || rng.bool(0.9)) p[k++] = OPT.END;
  return udp(0x0a000001, 0xffffffff, 67, 68, p, [255, 255, 255, 255, 255, 255]);
}

// ---------------------------------------------------------------- hostile frames

/** One hostile frame (or a few, for floods) for the host `l`. */
function hostile(l: Lab, rng: Rng, seq: number): Uint8Array[] {
  const ip = l.host.ip, mac = l.mac, { peer, bcast } = subnetOf(l);
  const payload = bytes(rng, rng.int(0, 64));
  const kind = rng.int(0, 13);
  switch (kind) {
    case 0: { // a valid request mutated: bits flipped anywhere
      const f = udp(peer, ip, 5000, rng.pick([ECHO_PORT, SINK_PORT, THROW_PORT]), payload, mac);
      for (let i = rng.int(1, 8); i > 0; i--) f[rng.int(0, f.length - 1)] ^= 1 << rng.int(0, 7);
      return [f];
    }
    case 1: { // truncated or extended
      const f = icmpEcho(8, peer, ip, 1, seq, payload, mac);
      if (rng.bool()) return [f.subarray(0, rng.int(0, f.length))];
      const g = new Uint8Array(f.length + rng.int(1, 64));
      g.set(f);
      return [g];
    }
    case 2: { // special sources, UDP and ICMP
      const src = rng.pick([...SPECIAL_SOURCES, bcast, ip]);
      return [
        rng.bool() ? udp(src, ip, 5000, ECHO_PORT, payload, mac) : icmpEcho(8, src, ip, 2, seq, payload, mac),
      ];
    }
    case 3: { // group or zero source MACs
      const f = udp(peer, ip, 5000, ECHO_PORT, payload, mac);
      f.set(
        rng.pick([[1, 0, 0x5e, 0, 0, 5], [0, 0, 0, 0, 0, 0], [255, 255, 255, 255, 255, 255], [
          3,
          1,
          2,
          3,
          4,
          5,
        ]]),
        6,
      );
      return [f];
    }
    case 4: { // broadcast, multicast and foreign destinations, link broadcasts
      const dst = rng.pick([bcast, 0xffffffff, 0xe0000001, ip, (ip ^ 0x40) >>> 0]);
      const dmac = rng.pick([[255, 255, 255, 255, 255, 255], [1, 0, 0x5e, 0, 0, 1], [...mac]]);
      return [
        rng.bool()
          ? udp(peer, dst, 5000, ECHO_PORT, payload, dmac)
          : icmpEcho(8, peer, dst, 3, seq, payload, dmac),
      ];
    }
    case 5: { // oversize: the frame rule's 18 bytes over the MTU in the IPv4 packet
      const n = l.mtu - 28 + rng.int(0, 4);
      return [udp(peer, ip, 5000, ECHO_PORT, bytes(rng, n), mac)];
    }
    case 6: { // VLAN-tagged
      const f = udp(peer, ip, 5000, ECHO_PORT, payload, mac);
      const g = new Uint8Array(f.length + 4);
      g.set(f.subarray(0, 12));
      writeU16(g, 12, 0x8100), writeU16(g, 14, rng.int(0, 4095));
      g.set(f.subarray(12), 16);
      return [g];
    }
    case 7: { // IPv4 header fields edited, header checksum right
      const f = udp(peer, ip, 5000, ECHO_PORT, payload, mac);
      const which = rng.int(0, 4);
      if (which === 0) f[14] = rng.int(0, 255);
      else if (which === 1) writeU16(f, 16, rng.int(0, 0xffff));
      else if (which === 2) writeU16(f, 20, rng.int(0, 0xffff));
      else if (which === 3) f[23] = rng.int(0, 255);
      else writeU16(f, 38, rng.int(0, 0xffff));
      const ihl = (f[14] & 15) * 4;
      if (ihl >= 20 && 14 + ihl <= f.length) {
        writeU16(f, 24, 0);
        writeU16(f, 24, finish(sum16(f, 14, ihl)));
      }
      return [f];
    }
    case 8: { // ARP of every kind: random fields, group senders, floods of distinct senders
      const sha = rng.pick([[2, 0, 0, 1, (seq >> 8) & 255, seq & 255], [1, 0, 0x5e, 0, 0, 1], [
        0,
        0,
        0,
        0,
        0,
        0,
      ]]);
      const spa = rng.pick([(peer + 1 + (seq % 200)) >>> 0, rng.int(0, 0xffffffff) >>> 0, 0, bcast, ip]);
      const f = arp(
        rng.pick([1, 2, 3]),
        sha,
        spa,
        [0, 0, 0, 0, 0, 0],
        rng.bool(0.7) ? ip : spa,
        rng.bool() ? [255, 255, 255, 255, 255, 255] : mac,
      );
      if (rng.bool(0.1)) f[rng.int(14, 21)] ^= 0xff; // not IPv4-over-Ethernet
      return [f];
    }
    case 9: { // a flood of datagrams from distinct unresolved neighbours: each reply needs ARP
      const out: Uint8Array[] = [];
      for (let i = 0; i < 16; i++) {
        const src = ((ip & maskOf(l.host.prefix)) | ((seq * 16 + i) % 200 + 20)) >>> 0;
        if (src === ip) continue;
        out.push(udp(src, ip, 6000 + i, ECHO_PORT, payload, mac));
      }
      return out;
    }
    case 10: // garbage
      return [bytes(rng, rng.int(0, l.mtu + 18))];
    case 11: { // ICMP of other types and codes, bad checksums
      const f = icmpEcho(rng.int(0, 20), peer, ip, 4, seq, payload, mac);
      if (rng.bool()) f[35] = rng.int(1, 255);
      if (rng.bool(0.3)) f[36] ^= 1;
      return [f];
    }
    case 12: // DHCP replies nobody asked for (or, leasing, hostile leases)
      return [dhcpFrame(l, rng, true)];
    default: { // UDP to ports nobody bound, zero checksums, a socket whose callback throws
      const f = udp(peer, ip, rng.int(1, 65535), rng.pick([THROW_PORT, rng.int(1, 65535)]), payload, mac);
      if (rng.bool()) writeU16(f, 40, 0);
      return [f];
    }
  }
}

// ---------------------------------------------------------------- valid requests and their replies

/** A valid request from the peer and the exact reply it must get (an ARP refresh from the peer goes first). */
function valid(l: Lab, rng: Rng, seq: number): { frames: Uint8Array[]; expect: Expected } {
  const ip = l.host.ip, mac = l.mac, { peer } = subnetOf(l);
  const refresh = arp(2, PEER_MAC, peer, mac, ip, mac);
  const kind = rng.int(0, 2);
  if (kind === 0) {
    const port = rng.int(1024, 65535), data = bytes(rng, rng.pick([0, 1, rng.int(0, 200), l.mtu - 28]));
    return {
      frames: [refresh, udp(peer, ip, port, ECHO_PORT, data, mac)],
      expect: {
        frame: udpReply(ip, peer, ECHO_PORT, port, data, mac),
        what: `UDP echo of ${data.length} bytes`,
      },
    };
  }
  if (kind === 1) {
    const data = bytes(rng, rng.int(0, l.mtu - 28));
    const req = icmpEcho(8, peer, ip, 0x4242, seq & 0xffff, data, mac);
    const rep = icmpEcho(0, ip, peer, 0x4242, seq & 0xffff, data, PEER_MAC, mac);
    rep[22] = 64;
    return { frames: [refresh, req], expect: { frame: rep, what: `ICMP echo of ${data.length} bytes` } };
  }
  const req = arp(1, PEER_MAC, peer, [0, 0, 0, 0, 0, 0], ip, [255, 255, 255, 255, 255, 255]);
  const rep = arp(2, mac, ip, PEER_MAC, peer, PEER_MAC);
  rep.set(mac, 6);
  return { frames: [req], expect: { frame: rep, what: "ARP request" } };
}

function udpReply(src: number, dst: number, sport: number, dport: number, data: Uint8Array, mac: Uint8Array) {
  const f = udp(src, dst, sport, dport, data, PEER_MAC);
  f.set(mac, 6);
  return f;
}

/** Whether `sent` is `want` but for the IPv4 identification and header checksum (the host numbers its packets). */
function sameReply(sent: Uint8Array, want: Uint8Array): boolean {
  if (sent.length !== want.length) return false;
  const ip = readU16(want, 12) === 0x0800;
  for (let i = 0; i < want.length; i++) {
    if (ip && (i === 18 || i === 19 || i === 24 || i === 25 || i === 20 || i === 21)) continue; // id, flags, sum
    if (sent[i] !== want[i]) return false;
  }
  return true;
}

// ---------------------------------------------------------------- the oracle's checks

/** Every frame the host sends must be one the RFCs allow. */
function checkSent(l: Lab, f: Uint8Array): void {
  const ours = macNumber(l.mac);
  if (f.length < 14 || f.length > l.mtu + 18) throw new Silent(`sent a frame of ${f.length} bytes`);
  if (readMac(f, 6) !== ours) throw new Silent("sent a frame from another MAC");
  const dmac = readMac(f, 0), type = readU16(f, 12), bcastMac = dmac === 0xffffffffffff;
  if (dmac === 0) throw new Silent("sent a frame to the zero MAC");
  if (type === 0x0806) {
    const op = readU16(f, 20), tpa = readU32(f, 38);
    if (readMac(f, 22) !== ours || readU32(f, 28) !== l.host.ip) throw new Silent("ARP from another sender");
    // A reply to an RFC 5227 probe (sender 0.0.0.0) targets 0.0.0.0: the one special target allowed.
    if (op === 1 ? !bcastMac : (f[0] & 1) !== 0 || (tpa !== 0 && specialAddress(tpa) !== null)) {
      throw new Silent(`ARP ${op} to ${dmac.toString(16)} for ${tpa.toString(16)}`);
    }
    if (op === 1) l.arpRequestsSent++;
    return;
  }
  if (type !== 0x0800) throw new Silent(`sent EtherType 0x${type.toString(16)}`);
  if (checkIpv4(f, 14, f.length - 14) !== IpCheck.Ok) throw new Silent("sent a bad IPv4 header");
  const total = readU16(f, 16), src = readU32(f, 26), dst = readU32(f, 30), proto = f[23];
  if (total > l.mtu) throw new Silent(`sent ${total} bytes of IPv4 past MTU ${l.mtu}`);
  const l4 = 34, len = total - 20;
  const dhcp = proto === 17 && readU16(f, l4) === 68 && readU16(f, l4 + 2) === 67;
  if (src !== l.host.ip && !(dhcp && src === 0)) throw new Silent(`sent from ${src.toString(16)}`);
  if (
    dhcp
      ? dst !== 0xffffffff && specialAddress(dst) !== null
      : specialAddress(dst) !== null && specialAddress(dst) !== "link-local"
  ) {
    throw new Silent(`sent to the special address ${dst.toString(16)}`);
  }
  if (!dhcp && (bcastMac || (f[0] & 1) || dst === l.host.ip || dst === subnetOf(l).bcast)) {
    throw new Silent(`a reply to a broadcast: ${dst.toString(16)} at ${dmac.toString(16)}`);
  }
  if (proto === 1) {
    if (f[l4] !== 0 || finish(sum16(f, l4, len)) !== 0) {
      throw new Silent("sent ICMP other than a good echo reply");
    }
  } else if (proto === 17) {
    if (readU16(f, l4 + 6) === 0 || finish(sum16(f, l4, len, pseudoSum(src, dst, 17, len))) !== 0) {
      throw new Silent("sent UDP with a bad checksum");
    }
    if (dhcp) l.clientMsg = f.slice(42);
    else if (readU16(f, l4) !== ECHO_PORT) throw new Silent(`sent UDP from port ${readU16(f, l4)}`);
  } else throw new Silent(`sent protocol ${proto}`);
}

function checkState(l: Lab): void {
  const h = l.host, s = h.stats;
  if (h.error) throw h.error;
  if (s.rxErrors) throw new Error(`${s.rxErrors} frames failed inside the host`);
  const counted = RX_COUNTERS.reduce((k, c) => k + s[c], 0);
  if (counted !== s.rxFrames) throw new Silent(`${s.rxFrames} frames received, ${counted} counted`);
  const a = h.arp, t = ARP_DEFAULTS;
  if (a.size > t.maxEntries || a.resolving > t.maxResolving || a.queued > t.maxQueued) {
    throw new Silent(
      `ARP state past its bounds: ${a.size} entries, ${a.resolving} resolving, ${a.queued} queued`,
    );
  }
  const seconds = (performance.now() - l.t0) / 1000;
  if (l.arpRequestsSent > t.requestsPerSecond * (1 + seconds) + 1) {
    throw new Silent(`${l.arpRequestsSent} ARP requests in ${seconds.toFixed(2)} s`);
  }
  if (h.ip !== 0) {
    const bad = h.prefix < 1 || h.prefix > 30 || specialAddress(h.ip) !== null ||
      hostCidrProblem({ ip: h.ip, prefix: h.prefix }) !== null ||
      (h.gateway !== 0 && ((h.gateway ^ h.ip) & maskOf(h.prefix)) !== 0);
    if (bad) throw new Silent(`took the address ${h.address} via ${h.gateway.toString(16)}`);
  }
}

// ---------------------------------------------------------------- one iteration

/** How many times a leasing iteration waits for the DHCP client's timers (50 ms apart) before giving up. */
const DHCP_WAITS = 40;

/**
 * One iteration: a fresh host, `steps` batches of hostile and valid frames. A quarter of the iterations lease the
 * address from a server that is hostile most of the time: they wait for the client's timers while unbound.
 */
export async function netIteration(rng: Rng, steps: number): Promise<Result> {
  const m = new VirtioNetModel({
    mac: [2, 0, 0, 0, 0, 0xa],
    features: rng.bool() ? FEATURES | NET_F.CSUM | NET_F.GUEST_CSUM : FEATURES,
    mtu: rng.pick([1500, 1500, 576, 9000]),
  });
  const nic = VirtioNet.openPci(m.pci());
  const dhcp = rng.bool(0.25);
  const host = new NetHost(nic, {
    ip: dhcp ? undefined : "10.0.0.2/24",
    gateway: !dhcp && rng.bool() ? "10.0.0.1" : undefined,
    onError: () => {},
  });
  const l: Lab = {
    m,
    nic,
    host,
    mac: nic.mac,
    mtu: nic.mtu,
    dhcp,
    clientMsg: null,
    arpRequestsSent: 0,
    t0: performance.now(),
  };
  const echo = host.udp(ECHO_PORT);
  echo.onDatagram = (d) => void echo.reply(d);
  host.udp(SINK_PORT).onDatagram = () => {};
  host.udp(THROW_PORT).onDatagram = () => {
    throw new Error("the application's own bug");
  };
  if (dhcp) host.dhcp(600_000).catch(() => {});
  let events = 0, step = 0, waits = 0, result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  try {
    for (step = 0; step < steps; step++) {
      const frames: Uint8Array[] = [], expect: Expected[] = [];
      const bound = host.ip !== 0;
      if (!bound && waits++ < DHCP_WAITS) await new Promise((r) => setTimeout(r, 10));
      const n = rng.int(1, 24);
      for (let i = 0; i < n; i++) {
        if (!bound) {
          frames.push(
            ...(rng.bool(0.3) ? [dhcpFrame(l, rng, rng.bool(0.7))] : hostile(l, rng, step * 32 + i)),
          );
        } else if (rng.bool(0.35)) {
          const v = valid(l, rng, step * 32 + i);
          frames.push(...v.frames);
          expect.push(v.expect);
        } else frames.push(...hostile(l, rng, step * 32 + i));
      }
      const t0 = performance.now(), dropped0 = host.stats.txDropped;
      let delivered = 0;
      for (const f of frames) {
        if (!m.deliver(f)) break; // the RX ring is full: the rest of this batch is not sent
        delivered++;
        events++;
      }
      if (delivered < frames.length) expect.length = 0; // a request may not have reached the host
      let polls = 0;
      while (host.poll() > 0) {
        if (++polls > delivered + 1) throw new Hang(`poll kept returning frames (${polls} for ${delivered})`);
      }
      host.service(performance.now());
      if (performance.now() - t0 > BATCH_BOUND_MS) {
        throw new Hang(`a batch of ${delivered} frames took too long`);
      }
      const sent = m.sent[0].splice(0), headers = m.sentHeaders[0].splice(0);
      for (let i = 0; i < sent.length; i++) {
        completeDeviceChecksum(headers[i], sent[i]);
        checkSent(l, sent[i]);
      }
      checkState(l);
      if (host.ip !== 0 && bound && host.stats.txDropped === dropped0) {
        for (const e of expect) {
          const at = sent.findIndex((f) => sameReply(f, e.frame));
          if (at < 0) throw new Silent(`no reply to a valid ${e.what}`);
          sent.splice(at, 1);
        }
      }
    }
  } catch (e) {
    result = classify(e, events, step);
  } finally {
    void host.close();
    void nic.close();
  }
  result.events = events;
  return result;
}
