/**
 * The IPv4 host (net/) against two virtio-net models joined by a wire: ARP, ping both ways, UDP echo with and
 * without checksum offload, DHCP with renewal against a server written here, and bad frames counted and dropped.
 */
import assert from "assert";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { NetHost } from "../../net/host.ts";
import { finish, pseudoSum, sum16 } from "../../net/checksum.ts";
import {
  hostCidrProblem,
  ipText,
  maskOf,
  parseCidr,
  parseIp,
  prefixOf,
  readU16,
  readU32,
  specialAddress,
  writeU16,
  writeU32,
} from "../../net/ipv4.ts";
import { macText, readMac } from "../../net/ethernet.ts";
import { completeChecksum } from "../../net/offload.ts";
import { DHCP_CLIENT_PORT, DHCP_SERVER_PORT, isDhcpReplyFrame } from "../../net/dhcp.ts";
import {
  A_IP,
  ALL,
  arpFrame,
  B_IP,
  dhcpReply,
  dhcpType,
  discovering,
  MASK_24,
  pair,
  refreshIpSum,
  udpFrame,
  waitFor,
} from "./net_fixture.ts";

Deno.test("net: checksum, addresses and MACs parse, format and refuse clearly", () => {
  // RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded), checksum 220d.
  assert.equal(finish(sum16(new Uint8Array([0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0xf7]), 0, 8)), 0x220d);
  assert.equal(finish(sum16(new Uint8Array([0xff]), 0, 1)), 0x00ff); // odd length pads with zero
  assert.equal(ipText(parseIp("192.168.1.254")), "192.168.1.254");
  assert.deepEqual(parseCidr("10.1.2.3/8"), { ip: parseIp("10.1.2.3"), prefix: 8 });
  assert.equal(maskOf(24), 0xffffff00);
  assert.equal(prefixOf(0xffff0000), 16);
  assert.equal(prefixOf(0xff00ff00), -1);
  for (const bad of ["10.0.0", "10.0.0.256", "a.b.c.d", "10.0.0.01", ""]) {
    assert.throws(() => parseIp(bad), /IPv4/);
  }
  for (const bad of ["10.0.0.1", "10.0.0.1/33", "10.0.0.1/"]) assert.throws(() => parseCidr(bad), /prefix/);
  assert.equal(macText(readMac(new Uint8Array([0xfe, 1, 2, 3, 4, 0xff]), 0)), "fe:01:02:03:04:ff");
  // A host's prefix is /1 to /30, both ends included.
  for (
    const [cidr, why] of [["10.0.0.1/1", null], ["10.0.0.1/30", null], ["10.0.0.1/0", "prefix"], [
      "10.0.0.1/31",
      "prefix",
    ]]
  ) {
    assert.equal(hostCidrProblem(parseCidr(cidr!)), why, cidr!);
  }
  assert.deepEqual(
    parseCidr("10.0.0.1/32"),
    { ip: parseIp("10.0.0.1"), prefix: 32 },
    "/32 parses (a host refuses it)",
  );
  assert.equal(hostCidrProblem(parseCidr("10.0.0.0/30")), "reserved");
  assert.equal(hostCidrProblem(parseCidr("10.0.0.3/30")), "reserved");
  assert.deepEqual(
    [
      "0.1.2.3",
      "127.0.0.1",
      "169.254.1.1",
      "224.0.0.1",
      "239.255.255.255",
      "240.0.0.1",
      "255.255.255.255",
      "10.0.0.1",
      "223.255.255.255",
      "126.255.255.255",
      "128.0.0.1",
      "169.253.0.1",
      "169.255.0.1",
    ]
      .map((a) => specialAddress(parseIp(a))),
    [
      "this-network",
      "loopback",
      "link-local",
      "multicast",
      "multicast",
      "reserved",
      "reserved",
      null,
      null,
      null,
      null,
      null,
      null,
    ],
  );
});

Deno.test("net: a DHCP server's reply is told from every other frame", () => {
  const f = new Uint8Array(42);
  writeU16(f, 12, 0x0800);
  f[14] = 0x45, f[23] = 17;
  writeU16(f, 34, 67), writeU16(f, 36, 68);
  assert.equal(isDhcpReplyFrame(f, 42), true);
  assert.equal(isDhcpReplyFrame(f, 41), false, "too short for the headers");
  const edits: [string, (g: Uint8Array) => void][] = [
    ["ARP", (g) => writeU16(g, 12, 0x0806)],
    ["EtherType 0x0801", (g) => void (g[13] = 1)],
    ["IPv6", (g) => void (g[14] = 0x65)],
    ["TCP", (g) => void (g[23] = 6)],
    ["from port 68", (g) => writeU16(g, 34, 68)],
    ["to port 67", (g) => writeU16(g, 36, 67)],
    ["options push UDP past the frame", (g) => void (g[14] = 0x46)],
  ];
  for (const [what, edit] of edits) {
    const g = f.slice();
    edit(g);
    assert.equal(isDhcpReplyFrame(g, 42), false, what);
  }
});

Deno.test("net: a host refuses addresses no host can have", () => {
  const m = new VirtioNetModel();
  const nic = VirtioNet.openPci(m.pci());
  assert.throws(() => new NetHost(nic, { ip: "10.0.0.0/24" }), /network or broadcast/);
  assert.throws(() => new NetHost(nic, { ip: "10.0.0.255/24" }), /network or broadcast/);
  assert.throws(() => new NetHost(nic, { ip: "10.0.0.1/31" }), /\/1 to \/30/);
  assert.throws(() => new NetHost(nic, { ip: "10.0.0.1/24", ttl: 0 }), /ttl/);
  assert.throws(() => new NetHost(nic, { ip: "10.0.0.1/24", hotMs: NaN }), /hotMs must be a duration/);
  assert.throws(() => new NetHost(nic, { ip: "10.0.0.1/24", hotMs: -1 }), /hotMs must be a duration/);
  assert.throws(() => new NetHost(nic, { ip: "10.0.0.1/24", spinMs: Infinity }), /spinMs must be a duration/);
  return nic.close();
});

Deno.test("net: ARP resolves, then 200 pings each way with no loss, announced by gratuitous ARP", async () => {
  const p = pair();
  try {
    p.wire.pump();
    const garp = p.wire.carried[0];
    assert.ok(garp >= 1, "the gratuitous ARP went out");
    for (const [from, to] of [[p.a, p.b], [p.b, p.a]] as const) {
      for (let i = 0; i < 200; i++) {
        const r = await from.ping(to.ip, { size: i % 3 === 0 ? 0 : 56 + i, timeoutMs: 2000 });
        assert.ok(r, `ping ${i} from ${from.address} answered`);
        assert.equal(r.ttl, 64);
        assert.ok(r.rtt >= 0);
      }
    }
    assert.equal(p.a.stats.icmpEchoReplies, 200);
    assert.equal(p.a.stats.icmpEchoRequests, 200);
    assert.equal(p.b.stats.icmpEchoRequests, 200);
    assert.equal(p.a.arp.lookup(p.b.ip, performance.now()), readMac(p.b.nic.mac, 0));
    assert.equal(p.b.arp.lookup(p.a.ip, performance.now()), readMac(p.a.nic.mac, 0));
    assert.equal(p.a.stats.txDropped + p.b.stats.txDropped, 0);
  } finally {
    await p.close();
  }
});

for (const offload of [true, false]) {
  Deno.test(`net: UDP echo of 2,000 datagrams of mixed sizes, every byte checked (checksum offload ${offload ? "on" : "off"})`, async () => {
    const p = pair({ offload });
    try {
      const server = p.b.udp(7);
      server.onDatagram = (d) => void server.reply(d);
      const client = p.a.udp();
      const max = p.a.nic.mtu - 28;
      let sent = 0;
      for (let i = 0; i < 2000; i++) {
        const size = (i * 97) % (max + 1);
        const payload = new Uint8Array(size);
        for (let j = 0; j < size; j++) payload[j] = (i * 31 + j) & 0xff;
        client.send(payload, p.b.ip, 7);
        sent++;
        const d = await client.next(2000);
        assert.ok(d);
        assert.equal(d.src, p.b.ip);
        assert.equal(d.srcPort, 7);
        assert.deepEqual(d.bytes, payload, `datagram ${i} (${size} bytes) came back intact`);
      }
      assert.equal(sent, 2000);
      assert.equal(p.b.stats.udpBadChecksum + p.a.stats.udpBadChecksum, 0);
      assert.equal(p.b.stats.udpDelivered, 2000);
      // The frames on the wire carry correct checksums whoever computed them (the device or the host).
      assert.equal(p.a.stats.txDropped, 0);
    } finally {
      await p.close();
    }
  });
}

Deno.test("net: a corrupted UDP checksum is counted and dropped, and a zero checksum means none", async () => {
  const p = pair({ offload: false });
  try {
    const server = p.b.udp(9);
    const got: number[] = [];
    server.onDatagram = (d) => void got.push(d.length);
    const client = p.a.udp(1000);
    await p.a.ping(p.b.ip); // ARP done
    p.wire.taps[0] = (f) => {
      if (readU16(f, 12) === 0x0800 && f[23] === 17) f[f.length - 1] ^= 0x40; // flip a payload bit
      return f;
    };
    client.send(new Uint8Array(10).fill(1), p.b.ip, 9);
    await waitFor(() => p.b.stats.udpBadChecksum === 1);
    p.wire.taps[0] = (f) => {
      if (readU16(f, 12) === 0x0800 && f[23] === 17) writeU16(f, 40, 0); // checksum 0: not computed
      return f;
    };
    client.send(new Uint8Array(12).fill(2), p.b.ip, 9);
    await waitFor(() => got.length === 1);
    assert.deepEqual(got, [12]);
  } finally {
    await p.close();
  }
});

Deno.test("net: bad frames are counted in their own counter and dropped; the host still answers after", async () => {
  const p = pair({ offload: false });
  try {
    const sink = p.a.udp(9);
    let delivered = 0;
    sink.onDatagram = () => void delivered++;
    assert.ok(await p.a.ping(p.b.ip), "ARP settled both ways before the baseline");
    const inject = (f: Uint8Array) => assert.ok(p.ma.deliver(f), "delivered to the model RX ring");
    // A good UDP frame with one edit (and, with `ipSum`, its IPv4 header checksum made right again).
    const udpEdit = (edit: (f: Uint8Array) => void, ipSum = false) => () => {
      const f = udpFrame(p);
      edit(f);
      return ipSum ? refreshIpSum(f) : f;
    };
    const cases: [string, keyof typeof p.a.stats, () => Uint8Array][] = [
      ["Ethernet header alone", "rxTruncated", () => udpFrame(p).slice(0, 14)],
      ["IPv4 header cut", "rxTruncated", () => udpFrame(p).slice(0, 30)],
      ["total length past the frame", "rxTruncated", udpEdit((f) => writeU16(f, 16, 200), true)],
      ["bad IP checksum", "ipBadChecksum", udpEdit((f) => void (f[24] ^= 1))],
      ["version 6", "ipBadHeader", udpEdit((f) => void (f[14] = 0x65), true)],
      ["IHL 4", "ipBadHeader", udpEdit((f) => void (f[14] = 0x44), true)],
      ["total length below IHL", "ipBadHeader", udpEdit((f) => writeU16(f, 16, 12), true)],
      ["first fragment (MF)", "ipFragments", udpEdit((f) => writeU16(f, 20, 0x2000), true)],
      ["later fragment (offset)", "ipFragments", udpEdit((f) => writeU16(f, 20, 0x0010), true)],
      ["another host's address", "ipNotForUs", udpEdit((f) => writeU32(f, 30, parseIp("10.0.0.77")), true)],
      ["UDP length past the packet", "udpBadLength", udpEdit((f) => writeU16(f, 38, 100))],
      ["UDP length below its header", "udpBadLength", udpEdit((f) => writeU16(f, 38, 4))],
      ["UDP bad checksum", "udpBadChecksum", udpEdit((f) => void (f[45] ^= 0xff))],
      [
        "UDP to an unbound port",
        "udpNoPort",
        udpEdit((f) => {
          writeU16(f, 36, 4444);
          writeU16(f, 40, 0);
        }),
      ],
      ["unknown protocol", "ipUnknownProtocol", udpEdit((f) => void (f[23] = 6), true)],
      [
        "ICMP echo request with a bad checksum",
        "icmpOther",
        udpEdit((f) => {
          f[23] = 1; // the UDP header's 8 bytes become an echo request whose checksum is the port bytes
          f[34] = 8, f[35] = 0;
        }, true),
      ],
      [
        "ICMP port unreachable",
        "icmpUnreachable",
        udpEdit((f) => {
          f[23] = 1; // the UDP header and data become an ICMP message: type 3 code 3, checksum made right
          f[34] = 3, f[35] = 3, f[36] = 0, f[37] = 0;
          writeU16(f, 36, finish(sum16(f, 34, f.length - 34)));
        }, true),
      ],
      ["another MAC", "rxIgnored", udpEdit((f) => void (f[5] ^= 1))],
      ["ARP for another host", "arpOther", () => arpFrame(p, parseIp("10.0.0.99"))],
      ["ARP of an Ethernet header alone", "arpBad", () => arpFrame(p, p.a.ip).slice(0, 14)],
      ["ARP of another hardware type", "arpBad", () => {
        const f = arpFrame(p, p.a.ip);
        f[15] = 6;
        return f;
      }],
    ];
    for (const [what, counter, make] of cases) {
      const before = { ...p.a.stats };
      inject(make());
      await waitFor(() => p.a.stats.rxFrames > before.rxFrames);
      const changed = Object.keys(before).filter((k) =>
        k !== "rxFrames" && p.a.stats[k as keyof typeof before] !== before[k as keyof typeof before]
      );
      assert.deepEqual(changed, [counter], `${what}: counted as ${counter} only`);
    }
    assert.equal(delivered, 0, "nothing bad reached the socket");
    // A good frame is still delivered, padding beyond the IPv4 total length ignored, and pings still work.
    const padded = new Uint8Array(80);
    padded.set(udpFrame(p, 4));
    inject(padded);
    await waitFor(() => delivered === 1);
    assert.ok(await p.b.ping(p.a.ip));
  } finally {
    await p.close();
  }
});

Deno.test("net: an address that never answers ARP drops its queued frames after the retries; no route is an error", async () => {
  const p = pair({ arp: { retryMs: 20 } });
  try {
    const r = await p.a.ping(parseIp("10.0.0.50"), { timeoutMs: 300 });
    assert.equal(r, null);
    await waitFor(() => p.a.arp.dropped === 1);
    await assert.rejects(() => p.a.ping(parseIp("192.168.9.9")), /no route to 192\.168\.9\.9/);
    assert.ok(await p.a.ping(p.b.ip), "the host still works");
  } finally {
    await p.close();
  }
});

Deno.test("net: DHCP DISCOVER/OFFER/REQUEST/ACK against a server on the other host, then renewal at T1", async () => {
  const p = pair({ aIp: null });
  try {
    const seen: number[] = [];
    const server = p.b.udp(DHCP_SERVER_PORT);
    server.onDatagram = (d) => {
      const m = d.bytes, o = d.offset, type = dhcpType(m, o, d.length);
      seen.push(type);
      const reply = dhcpReply(m, o, type === 1 ? 2 : 5, parseIp("10.0.0.42"), [
        [1, [255, 255, 255, 0]],
        [3, [10, 0, 0, 1]],
        [51, [0, 0, 0, 2]], // a 2 s lease: T1 at 1 s
      ]);
      // Before the lease the client has no address: broadcast (it set the flag); renewal replies go unicast.
      const ciaddr = readU32(m, o + 12);
      server.send(reply, ciaddr || 0xffffffff, DHCP_CLIENT_PORT);
    };
    const lease = await p.a.dhcp(5000);
    assert.equal(ipText(lease.ip), "10.0.0.42");
    assert.equal(lease.prefix, 24);
    assert.equal(ipText(lease.gateway), "10.0.0.1");
    assert.equal(p.a.address, "10.0.0.42/24");
    assert.deepEqual(seen, [1, 3]);
    await waitFor(() => seen.length >= 3, 4000);
    assert.equal(seen[2], 3, "a REQUEST renews the lease");
    assert.equal(p.a.lease?.ip, parseIp("10.0.0.42"));
    assert.ok(await p.b.ping(parseIp("10.0.0.42")), "the leased address answers");
  } finally {
    await p.close();
  }
});

Deno.test("net: the receive path allocates nothing per frame (200 UDP datagrams per batch, heap measured around poll)", async () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xc], features: ALL });
  const nic = VirtioNet.openPci(m.pci());
  const host = new NetHost(nic, { ip: A_IP }); // not started: polled by hand
  try {
    let got = 0, bytes = 0;
    const sock = host.udp(9);
    sock.onDatagram = (d) => {
      got++;
      bytes += d.bytes[d.offset]; // touch the payload through the view
    };
    // Frames of several sizes, built once.
    const frames = [16, 200, 1000].map((n) => {
      const f = new Uint8Array(42 + n);
      f.set(nic.mac, 0);
      f.set([2, 0, 0, 0, 0, 0xd], 6);
      writeU16(f, 12, 0x0800);
      f[14] = 0x45;
      writeU16(f, 16, 28 + n);
      f[22] = 64;
      f[23] = 17;
      writeU32(f, 26, parseIp(B_IP.split("/")[0]));
      writeU32(f, 30, host.ip);
      writeU16(f, 24, finish(sum16(f, 14, 20)));
      writeU16(f, 34, 5000);
      writeU16(f, 36, 9);
      writeU16(f, 38, 8 + n);
      f[42] = 1;
      writeU16(f, 40, finish(sum16(f, 34, 8 + n, pseudoSum(readU32(f, 26), host.ip, 17, 8 + n))));
      return f;
    });
    const deltas: number[] = [];
    for (let round = 0; round < 60; round++) {
      for (let i = 0; i < 200; i++) assert.ok(m.deliver(frames[i % 3]));
      const h0 = Deno.memoryUsage().heapUsed;
      let n = 0;
      while (n < 200) n += host.poll();
      const h1 = Deno.memoryUsage().heapUsed;
      if (round >= 20) deltas.push(h1 - h0); // after warm-up (compilation allocates)
    }
    deltas.sort((a, b) => a - b);
    assert.equal(got, 60 * 200);
    assert.ok(bytes > 0);
    // One small object per frame would be >= 200 x 16 bytes; the reading itself costs a few hundred.
    assert.ok(
      deltas[deltas.length >> 1] < 1600,
      `median heap growth per 200-frame batch: ${deltas[deltas.length >> 1]} B`,
    );
  } finally {
    await host.close();
    await nic.close();
  }
});

Deno.test("DHCP client: another transaction's reply is rejected; renewal and rebinding retry at half the time left", () => {
  const { c, out } = discovering();
  const mask = MASK_24;
  const other = dhcpReply(c.buf, 0, 2, parseIp("10.0.0.42"), [mask]);
  other[7] ^= 1; // xid
  assert.equal(c.receive(other, 0, 300, 1), null);
  assert.equal(c.rejected, 1);
  assert.equal(c.state, "selecting");
  assert.equal(c.receive(dhcpReply(c.buf, 0, 2, parseIp("10.0.0.42"), [mask]), 0, 300, 1), null);
  assert.ok(c.poll(1, out));
  // A one-hour lease: T1 at 1800 s, T2 at 3150 s (RFC 2131 §4.4.5 defaults).
  assert.equal(
    c.receive(dhcpReply(c.buf, 0, 5, parseIp("10.0.0.42"), [mask, [51, [0, 0, 0x0e, 0x10]]]), 0, 300, 2),
    "bound",
  );
  assert.equal(c.nextAt, 2 + 1800_000);
  assert.ok(c.poll(2 + 1800_000, out));
  assert.equal(c.state, "renewing");
  assert.equal(out.dst, parseIp("10.0.0.1"), "renewal is unicast to the server");
  // Half of the 1350 s left to T2 is more than a minute: the next try is a minute later.
  assert.equal(c.nextAt, 2 + 1800_000 + 60_000);
  assert.ok(c.poll(2 + 3150_000, out));
  assert.equal(c.state, "rebinding");
  assert.equal(out.dst, 0xffffffff, "rebinding broadcasts");
  assert.equal(c.nextAt, 2 + 3150_000 + 60_000);
  // Close to expiry, half the time left: 40 s left, the next try in 20 s.
  assert.ok(c.poll(2 + 3560_000, out));
  assert.equal(c.nextAt, 2 + 3560_000 + 20_000);
});

Deno.test("net: a batch of requests is answered with one doorbell, and a lease keeps every DNS server it names", async () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xc], features: ALL });
  const nic = VirtioNet.openPci(m.pci());
  const host = new NetHost(nic, { ip: A_IP }); // polled by hand
  try {
    const peer = parseIp("10.0.0.1");
    const arp = new Uint8Array(42);
    arp.set(nic.mac, 0), arp.set([2, 0, 0, 0, 0, 0xd], 6), writeU16(arp, 12, 0x0806);
    writeU16(arp, 14, 1), writeU16(arp, 16, 0x0800), arp[18] = 6, arp[19] = 4, writeU16(arp, 20, 2);
    arp.set([2, 0, 0, 0, 0, 0xd], 22),
      writeU32(arp, 28, peer),
      arp.set(nic.mac, 32),
      writeU32(arp, 38, host.ip);
    assert.ok(m.deliver(arp)); // the peer is known: replies need no ARP
    host.poll();
    const before = nic.stats()[0].notifications;
    for (let i = 0; i < 10; i++) {
      const f = new Uint8Array(42);
      f.set(nic.mac, 0), f.set([2, 0, 0, 0, 0, 0xd], 6), writeU16(f, 12, 0x0800);
      f[14] = 0x45, f[22] = 64, f[23] = 1, writeU16(f, 16, 28);
      writeU32(f, 26, peer), writeU32(f, 30, host.ip), writeU16(f, 24, finish(sum16(f, 14, 20)));
      f[34] = 8, writeU16(f, 40, i), writeU16(f, 36, finish(sum16(f, 34, 8)));
      assert.ok(m.deliver(f));
    }
    assert.equal(host.poll(), 10);
    assert.equal(host.stats.icmpEchoRequests, 10);
    assert.equal(nic.stats()[0].notifications - before, 1, "ten replies, one doorbell");
  } finally {
    await host.close();
    await nic.close();
  }
  // DNS servers (option 6): every address the option holds, and no more.
  const { c, out } = discovering();
  const opts: [number, number[]][] = [[1, [255, 255, 255, 0]], [6, [10, 0, 0, 53, 10, 0, 0, 54]]];
  c.receive(dhcpReply(c.buf, 0, 2, parseIp("10.0.0.42"), opts), 0, 300, 1);
  c.poll(1, out);
  assert.equal(c.receive(dhcpReply(c.buf, 0, 5, parseIp("10.0.0.42"), opts), 0, 300, 2), "bound");
  assert.deepEqual(c.lease!.dns.map(ipText), ["10.0.0.53", "10.0.0.54"]);
  // A router or DNS option whose length is not a whole number of addresses is malformed: the message is rejected.
  const { c: c2 } = discovering();
  for (const code of [3, 6]) {
    assert.equal(
      c2.receive(dhcpReply(c2.buf, 0, 2, parseIp("10.0.0.42"), [[code, [10, 0, 0, 1, 9]]]), 0, 300, 1),
      null,
    );
  }
  assert.equal(c2.rejected, 2);
  assert.equal(c2.state, "selecting");
});

Deno.test("offload: a partial UDP checksum completed to 0 is sent as 0xffff (RFC 768); TCP's stays as computed", () => {
  for (const [proto, field, want] of [[17, 6, 0xffff], [6, 16, 0]] as const) {
    const f = new Uint8Array(14 + 20 + 24);
    writeU16(f, 12, 0x0800);
    f[14] = 0x45, f[23] = proto;
    writeU16(f, 16, 44);
    // Payload chosen so that the L4 sum folds to 0xffff: its checksum computes to 0.
    let acc = 0;
    for (let i = 34; i < f.length; i += 2) acc += readU16(f, i);
    writeU16(f, 34 + 20, 0xffff - acc);
    assert.ok(completeChecksum(f, f.length));
    assert.equal(readU16(f, 34 + field), want, `protocol ${proto}`);
  }
});

Deno.test("DHCP client: a NAK while requesting starts over; a NAK while selecting or bound is ignored", () => {
  const { c, out } = discovering();
  const mask = MASK_24;
  assert.equal(c.receive(dhcpReply(c.buf, 0, 6, 0, []), 0, 300, 1), null, "NAK while selecting: ignored");
  c.receive(dhcpReply(c.buf, 0, 2, parseIp("10.0.0.42"), [mask]), 0, 300, 1);
  c.poll(1, out);
  assert.equal(c.state, "requesting");
  assert.equal(c.receive(dhcpReply(c.buf, 0, 6, 0, []), 0, 300, 2), "nak");
  assert.equal(c.state, "selecting");
});

Deno.test("host loop: after traffic it sleeps in its own thread for hotMs, then waits off-thread", async () => {
  // Count how the idle loop waits: in-thread (sleepRx, 1 ms at a time) or off-thread (waitRx).
  async function waits(hotMs: number | undefined): Promise<{ sleeps: number; waits: number }> {
    const model = new VirtioNetModel();
    const nic = VirtioNet.openPci(model.pci(), { irq: "msix" });
    const n = { sleeps: 0, waits: 0 };
    const sleepRx = nic.sleepRx.bind(nic), waitRx = nic.waitRx.bind(nic);
    nic.sleepRx = (ms, q, fd) => (n.sleeps++, sleepRx(ms, q, fd));
    nic.waitRx = (q) => (n.waits++, waitRx(q));
    const host = NetHost.start(nic, { ip: "10.0.0.2/24", interrupts: true, hotMs });
    try {
      await new Promise((r) => setTimeout(r, 60));
    } finally {
      await host.close();
      await nic.close();
    }
    return n;
  }
  const hot = await waits(undefined), cold = await waits(0);
  assert.ok(hot.sleeps > 5 && hot.waits === 0, `default (100 ms): ${JSON.stringify(hot)}`);
  assert.ok(cold.sleeps === 0 && cold.waits >= 1, `hotMs 0: ${JSON.stringify(cold)}`);
});
