/**
 * The network host's counters: every received frame lands in exactly one of the receive counters, so a frame can
 * never be dropped without a trace; the transmit counters say why a frame did not leave.
 * @module
 */

/** What the host counted. Every dropped frame lands in exactly one counter. */
export interface HostStats {
  /** Frames received. */
  rxFrames: number;
  /** Frames for another MAC (promiscuous NIC, multicast) or of an unknown EtherType. */
  rxIgnored: number;
  /** Frames too short for their headers, or whose IPv4 total length exceeds the frame. */
  rxTruncated: number;
  /** Frames from a group (multicast, broadcast) or all-zero source MAC: no host sends those. */
  rxBadSource: number;
  /** Frames whose handling failed inside the host (counted and dropped; the loop goes on). */
  rxErrors: number;
  /** Application callbacks (a socket's `onDatagram`) that threw: counted, the loop goes on. */
  appErrors: number;
  /** ARP requests for this host, answered. */
  arpRequests: number;
  /** ARP replies received. */
  arpReplies: number;
  /** ARP packets about other hosts (learned from, if known, and dropped). */
  arpOther: number;
  /** Malformed ARP (not IPv4 over Ethernet), or a sender no host can be (a group or zero MAC, a special address). */
  arpBad: number;
  /** IPv4 headers with a bad version or IHL, or a total length below the header. */
  ipBadHeader: number;
  /** IPv4 header checksum failures. */
  ipBadChecksum: number;
  /** IPv4 packets longer than the MTU (a frame may be MTU + 18 for a VLAN tag, its IPv4 packet not). */
  ipTooBig: number;
  /**
   * IPv4 packets from a source no host can have (RFC 1122 §3.2.1.3): 0.0.0.0/8 (except 0.0.0.0 to a DHCP server
   * port), loopback, multicast, class E, the limited or the subnet broadcast, our own address.
   */
  ipBadSource: number;
  /** IPv4 fragments (not reassembled). */
  ipFragments: number;
  /** IPv4 packets for another address (or a unicast address in a link-layer broadcast, RFC 1122 §3.3.6). */
  ipNotForUs: number;
  /** IPv4 packets of a protocol other than ICMP and UDP. */
  ipUnknownProtocol: number;
  /** ICMP echo requests answered. */
  icmpEchoRequests: number;
  /** ICMP echo replies received. */
  icmpEchoReplies: number;
  /** ICMP destination unreachable received: a peer refused what was sent (e.g. no socket on its port). */
  icmpUnreachable: number;
  /** Other ICMP messages, or ICMP with a bad checksum or length. */
  icmpOther: number;
  /** UDP datagrams delivered to a socket (or to the DHCP client). */
  udpDelivered: number;
  /** UDP checksum failures. */
  udpBadChecksum: number;
  /** UDP length field disagreeing with the IPv4 packet. */
  udpBadLength: number;
  /** UDP datagrams to a port nobody bound. */
  udpNoPort: number;
  /** DHCP offers and acks refused for what they grant (not a host address in a sane prefix; a bad router). */
  dhcpRefused: number;
  /** Frames sent. */
  txFrames: number;
  /** Frames not sent: no TX buffer, or the ring full. */
  txDropped: number;
  /** Replies not sent: no route to the destination (off the subnet with no gateway). */
  txNoRoute: number;
  /** Replies not sent: larger than the MTU allows. */
  txTooBig: number;
}

/** Zeroed counters. */
export function emptyHostStats(): HostStats {
  return {
    rxFrames: 0,
    rxIgnored: 0,
    rxTruncated: 0,
    rxBadSource: 0,
    rxErrors: 0,
    appErrors: 0,
    arpRequests: 0,
    arpReplies: 0,
    arpOther: 0,
    arpBad: 0,
    ipBadHeader: 0,
    ipBadChecksum: 0,
    ipTooBig: 0,
    ipBadSource: 0,
    ipFragments: 0,
    ipNotForUs: 0,
    ipUnknownProtocol: 0,
    icmpEchoRequests: 0,
    icmpEchoReplies: 0,
    icmpUnreachable: 0,
    icmpOther: 0,
    udpDelivered: 0,
    udpBadChecksum: 0,
    udpBadLength: 0,
    udpNoPort: 0,
    dhcpRefused: 0,
    txFrames: 0,
    txDropped: 0,
    txNoRoute: 0,
    txTooBig: 0,
  };
}

/** The receive counters: each received frame lands in exactly one (rxFrames is their sum while rxErrors is 0). */
export const RX_COUNTERS: readonly (keyof HostStats)[] = [
  "rxIgnored",
  "rxTruncated",
  "rxBadSource",
  "arpRequests",
  "arpReplies",
  "arpOther",
  "arpBad",
  "ipBadHeader",
  "ipBadChecksum",
  "ipTooBig",
  "ipBadSource",
  "ipFragments",
  "ipNotForUs",
  "ipUnknownProtocol",
  "icmpEchoRequests",
  "icmpEchoReplies",
  "icmpUnreachable",
  "icmpOther",
  "udpDelivered",
  "udpBadChecksum",
  "udpBadLength",
  "udpNoPort",
];
