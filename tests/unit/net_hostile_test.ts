/**
 * The network host against a hostile link: no frame stops it, it answers nothing RFC 1122 says to discard, and
 * what the wire can make it hold or send is bounded. Each case is a finding that once held on main.
 */
import assert from "assert";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { type HostStats, NetHost } from "../../net/host.ts";
import { ArpCache, Enqueued } from "../../net/arp.ts";
import { finish, pseudoSum, sum16 } from "../../net/checksum.ts";
import { ipText, parseIp, readU16, readU32, writeU16, writeU32 } from "../../net/ipv4.ts";
import { DHCP_CLIENT_PORT, DHCP_SERVER_PORT } from "../../net/dhcp.ts";
import { completeDeviceChecksum } from "../models/wire.ts";
import type { Datagram } from "../../net/udp.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import { pingRun, summarizePings } from "../../apps/ping.ts";
import { echoRun, recvRun, writeDatagram } from "../../apps/datagrams.ts";
import {
  ALL,
  arpFrame,
  dhcpReply,
  dhcpType,
  discovering,
  MASK_24,
  type Pair,
  pair,
  refreshIpSum,
  udpFrame,
  waitFor,
} from "./net_fixture.ts";

/** Frames host a put on the wire while `run` ran (the wire still carries them). */
async function sentBy(p: Pair, run: () => Promise<void>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  p.wire.taps[0] = (f) => (out.push(f.slice()), f);
  try {
    await run();
    await new Promise((r) => setTimeout(r, 20)); // let replies drain through the wire
  } finally {
    p.wire.taps[0] = null;
  }
  return out;
}

/** Inject `f` into a's RX ring and wait until a has handled it. */
async function inject(p: Pair, f: Uint8Array): Promise<void> {
  const before = p.a.stats.rxFrames;
  assert.ok(p.ma.deliver(f), "delivered to the model RX ring");
  await waitFor(() => p.a.stats.rxFrames > before);
}

/** The counters that moved, rxFrames aside. */
function moved(before: HostStats, after: HostStats): string[] {
  return (Object.keys(before) as (keyof HostStats)[]).filter((k) =>
    k !== "rxFrames" && !k.startsWith("tx") && before[k] !== after[k]
  );
}

/** A UDP frame from b's MAC with IPv4 source `src`, checksums right. */
function udpFrom(p: Pair, src: number, payload = 16, dst = p.a.ip): Uint8Array {
  const f = udpFrame(p, payload);
  writeU32(f, 26, src);
  writeU32(f, 30, dst);
  writeU16(f, 36, 7);
  writeU16(f, 40, 0);
  writeU16(f, 40, finish(sum16(f, 34, 8 + payload, pseudoSum(src, dst, 17, 8 + payload))) || 0xffff);
  return refreshIpSum(f);
}

/** An ICMP echo request from b's MAC with IPv4 source `src`. */
function pingFrom(p: Pair, src: number): Uint8Array {
  const f = udpFrame(p, 8);
  f[23] = 1;
  writeU32(f, 26, src);
  f.fill(0, 34);
  f[34] = 8;
  writeU16(f, 38, 0x1234);
  writeU16(f, 36, finish(sum16(f, 34, f.length - 34)));
  return refreshIpSum(f);
}

function echoServer(p: Pair): { got: number } {
  const echo = p.a.udp(7), seen = { got: 0 };
  echo.onDatagram = (d) => {
    seen.got++;
    echo.reply(d); // the README's allocation-free echo server
  };
  return seen;
}

Deno.test("net hostile: one datagram no longer stops the host (off-subnet source with no gateway, 0.0.0.0, past the MTU)", async () => {
  const p = pair({ offload: false });
  try {
    const echo = echoServer(p);
    assert.ok(await p.b.ping(p.a.ip), "ARP settled");
    const oversize = () => {
      // A 1,518-byte frame (the frame rule allows MTU + 18 for a VLAN tag) holding an untagged 1,504-byte packet.
      const f = udpFrom(p, p.b.ip, 1476);
      assert.equal(f.length, 1518);
      return f;
    };
    const cases: [string, () => Uint8Array, keyof HostStats][] = [
      ["a source off the subnet, no gateway", () => udpFrom(p, parseIp("192.168.7.7")), "txNoRoute"],
      ["source 0.0.0.0", () => udpFrom(p, 0), "ipBadSource"],
      ["an IPv4 packet past the MTU", oversize, "ipTooBig"],
    ];
    for (const [what, make, counter] of cases) {
      const before = p.a.stats[counter];
      await inject(p, make());
      assert.equal(p.a.stats[counter], before + 1, `${what}: counted in ${counter}`);
      assert.equal(p.a.error, null, `${what}: the host still runs`);
      assert.ok(await p.b.ping(p.a.ip, { timeoutMs: 1000 }), `${what}: the host still answers pings`);
    }
    assert.equal(echo.got, 1, "only the off-subnet datagram reached the socket (its reply had no route)");
    await inject(p, udpFrom(p, p.b.ip));
    assert.equal(echo.got, 2, "a good datagram after them is echoed");
  } finally {
    await p.close();
  }
});

Deno.test("net hostile: a callback that throws is counted and reported once; the rest of its batch is handled", async () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xa], features: ALL });
  const nic = VirtioNet.openPci(m.pci());
  const errors: string[] = [];
  const host = new NetHost(nic, {
    ip: "10.0.0.2/24",
    onError: (e, where) => errors.push(`${where}: ${e.message}`),
  });
  try {
    const sock = host.udp(9);
    const good: number[] = [];
    sock.onDatagram = (d) => {
      if (d.bytes[d.offset] === 0xee) throw new Error("application bug");
      good.push(d.bytes[d.offset]);
    };
    const frame = (first: number) => {
      const f = new Uint8Array(42 + 4);
      f.set(nic.mac, 0);
      f.set([2, 0, 0, 0, 0, 0xb], 6);
      writeU16(f, 12, 0x0800);
      f[14] = 0x45, f[22] = 64, f[23] = 17;
      writeU16(f, 16, 32);
      writeU32(f, 26, parseIp("10.0.0.1"));
      writeU32(f, 30, host.ip);
      writeU16(f, 24, finish(sum16(f, 14, 20)));
      writeU16(f, 34, 5000), writeU16(f, 36, 9), writeU16(f, 38, 12);
      f[42] = first;
      return f;
    };
    for (const b of [0xee, 1, 0xee, 2, 3]) assert.ok(m.deliver(frame(b)));
    assert.equal(host.poll(), 5, "one batch of five");
    assert.deepEqual(good, [1, 2, 3], "the frames after a failing callback were delivered");
    assert.equal(host.stats.appErrors, 2);
    assert.equal(host.stats.udpDelivered, 5);
    assert.deepEqual(errors, ["app: application bug"], "reported once, with its error");
    host.checkHealth();
  } finally {
    await host.close();
    await nic.close();
  }
});

Deno.test("net hostile: sources RFC 1122 §3.2.1.3 says to discard get no answer, and group or zero MACs none either", async () => {
  const p = pair({ offload: false });
  try {
    const echo = echoServer(p);
    assert.ok(await p.b.ping(p.a.ip), "ARP settled");
    const bad = [
      "255.255.255.255",
      "10.0.0.255", // the subnet broadcast
      "224.0.0.5",
      "127.0.0.1",
      "240.0.0.1",
      "0.1.2.3",
      "10.0.0.2", // our own address
    ].map(parseIp);
    const sent = await sentBy(p, async () => {
      for (const src of bad) {
        const before = { ...p.a.stats };
        await inject(p, udpFrom(p, src));
        assert.deepEqual(moved(before, p.a.stats), ["ipBadSource"], `UDP from ${ipText(src)}`);
        const b2 = { ...p.a.stats };
        await inject(p, pingFrom(p, src));
        assert.deepEqual(moved(b2, p.a.stats), ["ipBadSource"], `ICMP echo from ${ipText(src)}`);
      }
      for (const mac of [[1, 0, 0x5e, 0, 0, 5], [0, 0, 0, 0, 0, 0], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]) {
        for (const f of [udpFrom(p, p.b.ip), pingFrom(p, p.b.ip)]) {
          f.set(mac, 6);
          const before = { ...p.a.stats };
          await inject(p, f);
          assert.deepEqual(moved(before, p.a.stats), ["rxBadSource"], `from MAC ${mac}`);
        }
      }
      // RFC 1122 §3.3.6: our unicast address inside a link-layer broadcast is discarded.
      const f = udpFrom(p, p.b.ip);
      f.fill(0xff, 0, 6);
      const before = { ...p.a.stats };
      await inject(p, f);
      assert.deepEqual(moved(before, p.a.stats), ["ipNotForUs"]);
    });
    assert.equal(echo.got, 0);
    assert.deepEqual(sent.map((f) => readU16(f, 12).toString(16)), [], "nothing was answered");
    // ICMP to the subnet broadcast from a good source is not answered either (RFC 1122 §3.2.2.6, as Linux).
    const toBcast = pingFrom(p, p.b.ip);
    writeU32(toBcast, 30, parseIp("10.0.0.255"));
    toBcast.fill(0xff, 0, 6);
    const sent2 = await sentBy(p, () => inject(p, refreshIpSum(toBcast)));
    assert.equal(sent2.length, 0);
    await inject(p, udpFrom(p, p.b.ip));
    assert.equal(echo.got, 1, "a good datagram is still echoed");
  } finally {
    await p.close();
  }
});

Deno.test("net hostile: ARP learns only senders on the subnet, never a group or zero MAC or a special address", async () => {
  const p = pair();
  try {
    assert.ok(await p.b.ping(p.a.ip));
    const arpFrom = (spa: number, sha: number[]) => {
      const f = arpFrame(p, p.a.ip);
      f.set(sha, 22);
      writeU32(f, 28, spa);
      return f;
    };
    const known = () => p.a.arp.entries().map(([ip]) => ipText(ip)).sort();
    const start = known();
    // Off the subnet: answered (it asked for our address) but not learned: no neighbour off-link is a next hop.
    let before = { ...p.a.stats };
    await inject(p, arpFrom(parseIp("192.168.1.5"), [2, 0, 0, 0, 0, 0x55]));
    assert.deepEqual(moved(before, p.a.stats), ["arpRequests"]);
    for (
      const [spa, sha] of [
        ["10.0.0.9", [1, 0, 0x5e, 0, 0, 1]],
        ["10.0.0.9", [0, 0, 0, 0, 0, 0]],
        ["10.0.0.9", [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]],
        ["224.0.0.1", [2, 0, 0, 0, 0, 0x56]],
        ["10.0.0.255", [2, 0, 0, 0, 0, 0x57]],
        ["127.0.0.1", [2, 0, 0, 0, 0, 0x58]],
      ] as const
    ) {
      before = { ...p.a.stats };
      await inject(p, arpFrom(parseIp(spa), [...sha]));
      assert.deepEqual(moved(before, p.a.stats), ["arpBad"], `${spa} at ${sha}`);
    }
    assert.deepEqual(known(), start, "nothing learned");
    await inject(p, arpFrom(parseIp("10.0.0.9"), [2, 0, 0, 0, 0, 0x59]));
    assert.deepEqual(known(), [...start, "10.0.0.9"].sort(), "a neighbour on the subnet is learned");
  } finally {
    await p.close();
  }
});

Deno.test("net hostile: the ARP cache is bounded in entries, resolutions, queued frames and request rate", () => {
  const c = new ArpCache({ maxEntries: 512, maxResolving: 64, maxQueued: 512, requestsPerSecond: 50 });
  const f = new Uint8Array(60);
  for (let i = 0; i < 20_000; i++) c.learn(0x0a000000 + i, 0x020000000000 + i, 1000, true);
  assert.equal(c.size, 512, "20,000 senders leave at most 512 entries");
  assert.ok(c.evicted >= 20_000 - 512);
  let requests = 0;
  for (let i = 0; i < 5_000; i++) if (c.enqueue(0x0b000000 + i, f, 2000) === Enqueued.Request) requests++;
  assert.equal(c.resolving, 64, "at most 64 resolutions at once");
  assert.equal(requests, 50, "a burst of at most requestsPerSecond requests");
  assert.ok(c.size <= 512);
  for (let i = 0; i < 5_000; i++) c.enqueue(0x0b000000 + (i % 64), f, 2000);
  assert.equal(c.queued, 512, "at most 512 frames wait in all");
  // Retries are rate-limited too: over 3 s at most 50/s more go out.
  let retries = 0;
  for (let t = 2000; t <= 5000; t += 10) retries += c.due(t).length;
  assert.ok(retries <= 50 * 3 + 1, `${retries} retries in 3 s`);
  // Eviction takes a resolution before a resolved entry.
  const d = new ArpCache({ maxEntries: 3 });
  d.learn(1, 0x0200000000aa, 0, true);
  d.learn(2, 0x0200000000bb, 0, true);
  assert.equal(d.enqueue(3, f, 0), Enqueued.Request);
  d.learn(4, 0x0200000000cc, 0, true);
  assert.deepEqual(d.entries().map(([ip]) => ip).sort(), [1, 2, 4]);
  assert.equal(d.dropped, 1, "the evicted resolution's frame is counted");
});

Deno.test("net hostile: a flood of distinct senders leaves the host's ARP state and requests bounded", () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xa], features: ALL });
  const nic = VirtioNet.openPci(m.pci());
  const host = new NetHost(nic, { ip: "10.0.0.2/16" });
  try {
    const echo = host.udp(7);
    echo.onDatagram = (d) => void echo.reply(d);
    const frame = new Uint8Array(42 + 8);
    const send = (arp: boolean, i: number) => {
      const src = parseIp("10.0.100.0") + i;
      if (arp) {
        frame.fill(0xff, 0, 6);
        frame.set([2, 0, 0, 0, 0, 0xb], 6);
        writeU16(frame, 12, 0x0806);
        writeU16(frame, 14, 1), writeU16(frame, 16, 0x0800);
        frame[18] = 6, frame[19] = 4;
        writeU16(frame, 20, 1);
        frame.set([2, 0, 0, i >> 16, i >> 8, i], 22);
        writeU32(frame, 28, src);
        writeU32(frame, 38, host.ip);
        return m.deliver(frame.subarray(0, 42));
      }
      frame.set(nic.mac, 0);
      frame.set([2, 0, 0, 0, 0, 0xb], 6);
      writeU16(frame, 12, 0x0800);
      frame.fill(0, 14);
      frame[14] = 0x45, frame[22] = 64, frame[23] = 17;
      writeU16(frame, 16, 36);
      writeU32(frame, 26, src);
      writeU32(frame, 30, host.ip);
      writeU16(frame, 24, finish(sum16(frame, 14, 20)));
      writeU16(frame, 34, 5000), writeU16(frame, 36, 7), writeU16(frame, 38, 16);
      return m.deliver(frame);
    };
    let arpOut = 0;
    const drain = () => {
      for (const f of m.sent[0].splice(0)) if (readU16(f, 12) === 0x0806 && readU16(f, 20) === 1) arpOut++;
    };
    // 5,000 datagrams from distinct unresolved sources, then 20,000 ARP requests from distinct senders.
    for (const [arp, count] of [[false, 5_000], [true, 20_000]] as const) {
      for (let i = 0; i < count;) {
        while (i < count && send(arp, i)) i++;
        while (host.poll() > 0) drain();
        drain();
        assert.ok(host.arp.size <= 512 && host.arp.queued <= 512 && host.arp.resolving <= 64);
      }
    }
    assert.equal(host.stats.udpDelivered, 5_000);
    assert.ok(
      arpOut <= 50 + 10,
      `${arpOut} ARP requests sent for 5,000 unresolved sources (once per source before)`,
    );
    assert.ok(host.arp.size <= 512, `${host.arp.size} entries after 20,000 senders`);
    assert.equal(host.stats.arpRequests, 20_000, "every request for our address was answered");
  } finally {
    void host.close();
    void nic.close();
  }
});

Deno.test("net hostile: hostile DHCP leases are refused and counted, the client goes on; T2 < T1 is put right", () => {
  const { c, out } = discovering();
  const answer = (type: number, ip: string, opts: [number, number[]][] = []) =>
    c.receive(dhcpReply(c.buf, 0, type, parseIp(ip), opts), 0, 300, 1);
  const mask24: [number, number[]] = [1, [255, 255, 255, 0]];
  for (
    const [ip, opts] of [
      ["255.255.255.0", [mask24]],
      ["10.0.0.0", [mask24]],
      ["10.0.0.255", [mask24]],
      ["127.0.0.5", [mask24]],
      ["224.0.0.9", [mask24]],
      ["0.0.0.9", [mask24]],
      ["169.254.3.4", [mask24]],
      ["10.0.0.42", [[1, [255, 0, 255, 0]]]],
      ["10.0.0.42", [[1, [255, 255, 255, 254]]]],
      ["10.0.0.42", [mask24, [3, [192, 168, 1, 1]]]], // a router off the subnet
      ["10.0.0.42", [mask24, [3, [10, 0, 0, 42]]]], // the router is us
    ] as [string, [number, number[]][]][]
  ) {
    assert.equal(answer(2, ip, opts), "refused", `offer of ${ip} ${JSON.stringify(opts)}`);
    assert.equal(c.state, "selecting");
  }
  assert.equal(c.refused, 11);
  assert.equal(answer(2, "10.0.0.42", [mask24]), null);
  assert.equal(c.state, "requesting");
  // An ACK whose router is off the subnet it grants is refused too, and the client starts over.
  c.poll(1, out);
  assert.equal(answer(5, "10.0.0.42", [[1, [255, 255, 255, 248]], [3, [10, 0, 0, 99]]]), "refused");
  assert.equal(c.state, "selecting");
  c.poll(10_000, out);
  answer(2, "10.0.0.42", [mask24]);
  c.poll(10_001, out);
  // T1 3000 s after T2 1000 s: out of order, both fall back to 0.5 and 0.875 of the lease.
  assert.equal(
    answer(5, "10.0.0.42", [mask24, [51, [0, 0, 0x0e, 0x10]], [58, [0, 0, 0x0b, 0xb8]], [59, [
      0,
      0,
      3,
      0xe8,
    ]]]),
    "bound",
  );
  assert.equal(c.lease!.t1, 1800);
  assert.equal(c.lease!.t2, 3150);
});

Deno.test("net hostile: a hostile DHCP server's lease does not stop the host; a good one after it is taken", async () => {
  const p = pair({ aIp: null });
  try {
    let hostile = true;
    const server = p.b.udp(DHCP_SERVER_PORT);
    server.onDatagram = (d) => {
      const type = dhcpType(d.bytes, d.offset, d.length);
      const ip = hostile ? "255.255.255.0" : "10.0.0.42";
      server.send(
        dhcpReply(d.bytes, d.offset, type === 1 ? 2 : 5, parseIp(ip), [[1, [255, 255, 255, 0]]]),
        0xffffffff,
        DHCP_CLIENT_PORT,
      );
    };
    const leased = p.a.dhcp(8000);
    await waitFor(() => p.a.stats.dhcpRefused >= 1);
    assert.equal(p.a.error, null);
    assert.equal(p.a.ip, 0);
    hostile = false;
    const l = await leased;
    assert.equal(ipText(l.ip), "10.0.0.42");
    assert.ok(await p.b.ping(parseIp("10.0.0.42")));
  } finally {
    await p.close();
  }
});

Deno.test("net hostile: frames parked for ARP are not sent from an address the host no longer has", async () => {
  const p = pair({ aIp: null, arp: { retryMs: 5000 } });
  try {
    let offer = "10.0.0.42", nak = false;
    const server = p.b.udp(DHCP_SERVER_PORT);
    server.onDatagram = (d) => {
      const type = dhcpType(d.bytes, d.offset, d.length), renewing = readU32(d.bytes, d.offset + 12) !== 0;
      const answer = type === 1 ? 2 : renewing && nak ? 6 : 5;
      const r = dhcpReply(d.bytes, d.offset, answer, parseIp(offer), [
        [1, [255, 255, 255, 0]],
        [51, [0, 0, 0, 2]], // a 2 s lease: renewal at 1 s
      ]);
      server.send(r, renewing ? readU32(d.bytes, d.offset + 12) : 0xffffffff, DHCP_CLIENT_PORT);
    };
    await p.a.dhcp(5000);
    assert.equal(p.a.address, "10.0.0.42/24");
    // A datagram to an address nobody answers: parked while ARP asks.
    p.a.udp(4000).send(new Uint8Array(8), parseIp("10.0.0.50"), 9);
    assert.equal(p.a.arp.queued, 1);
    nak = true, offer = "10.0.0.43"; // the renewal is refused, the next lease is another address
    await waitFor(() => p.a.ip === parseIp("10.0.0.43"), 4000);
    assert.equal(p.a.arp.queued, 0, "the parked frame went with the old address");
    // 10.0.0.50 answers now: nothing leaves from 10.0.0.42.
    const f = arpFrame(p, p.a.ip);
    writeU16(f, 20, 2);
    f.set(p.a.nic.mac, 0);
    f.set([2, 0, 0, 0, 0, 0x50], 22);
    writeU32(f, 28, parseIp("10.0.0.50"));
    const sent = await sentBy(p, () => inject(p, f));
    const stale = sent.filter((s) => readU16(s, 12) === 0x0800 && readU32(s, 26) === parseIp("10.0.0.42"));
    assert.equal(stale.length, 0, "no frame from the old address");
  } finally {
    await p.close();
  }
});

Deno.test("test wire: an offloaded UDP checksum that computes to 0 goes out as 0xffff (RFC 768), as devices send it", () => {
  const frame = new Uint8Array(42 + 6), header = new Uint8Array(12);
  header[0] = 1; // NEEDS_CSUM
  header[6] = 34, header[8] = 6; // csum_start 34, csum_offset 6
  writeU16(frame, 34, 5000), writeU16(frame, 36, 7), writeU16(frame, 38, 14);
  // Two payload bytes chosen so that the sum folds to 0xffff: the checksum computes to 0.
  let acc = 0;
  for (let i = 34; i < frame.length; i += 2) acc += readU16(frame, i);
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  writeU16(frame, 42, 0xffff - acc);
  completeDeviceChecksum(header, frame);
  assert.equal(readU16(frame, 40), 0xffff);
});

Deno.test("net hostile: a reply that cannot go says so (false), and only a failed NIC stops the host, with its error", async () => {
  const p = pair({ offload: false });
  try {
    const echo = p.a.udp(7), results: boolean[] = [];
    let held: Datagram | null = null;
    echo.onDatagram = (d) => {
      results.push(echo.reply(d));
      held = { ...d, bytes: d.bytes.slice(), offset: d.offset };
    };
    assert.ok(await p.b.ping(p.a.ip));
    await inject(p, udpFrom(p, parseIp("192.168.7.7")));
    await inject(p, udpFrom(p, p.b.ip));
    assert.deepEqual(results, [false, true], "no route: false; routed: true");
    // The NIC breaks (a used id the device never had): the loop ends with that error, and says so.
    p.ma.forgeUsed(0, 999, 60);
    await waitFor(() => p.a.error !== null);
    assert.match(p.a.error!.message, /999/);
    assert.throws(() => p.a.checkHealth(), /999/);
    assert.equal(echo.reply(held!), false, "a reply from a failed host does not go");
    await assert.rejects(() => Promise.resolve().then(() => p.a.ping(p.b.ip)), /999/);
  } finally {
    await p.close();
  }
});

Deno.test("net hostile: on interrupts an idle host sleeps on its vector instead of spinning", async () => {
  const m = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xa], features: ALL });
  const nic = VirtioNet.openPci(m.pci(), { irq: "msix" });
  let polls = 0;
  const receive = nic.receiveBatch.bind(nic);
  nic.receiveBatch = (out: PacketBuffer[], max: number, q?: number) => (polls++, receive(out, max, q));
  const host = NetHost.start(nic, { ip: "10.0.0.2/24", interrupts: true });
  try {
    // Past the first 100 ms after the last frame (the hot phase's short in-thread sleeps), the loop waits on the
    // interrupt or the next timer, up to 50 ms at a time: a handful of polls in 200 ms, where spinning would
    // make tens of thousands.
    await new Promise((r) => setTimeout(r, 150));
    polls = 0;
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(polls < 200, `${polls} polls in 200 ms idle`);
  } finally {
    await host.close();
    await nic.close();
  }
});

Deno.test("ping summary: percentiles by nearest rank, and the slowest replies with their numbers", () => {
  const rtts = [3, 1, 9, 2, 7, 5, 4, 8, 6, 10], seqs = rtts.map((_, i) => i);
  const s = summarizePings(12, rtts, seqs);
  assert.deepEqual([s.received, s.min, s.max, s.p50, s.p99], [10, 1, 10, 5, 10]);
  assert.equal(s.lossPercent.toFixed(1), "16.7");
  assert.deepEqual(s.slowest, [
    { seq: 9, rtt: 10 },
    { seq: 2, rtt: 9 },
    { seq: 7, rtt: 8 },
    { seq: 4, rtt: 7 },
    { seq: 8, rtt: 6 },
  ]);
  assert.equal(summarizePings(1, [1]).slowest, undefined, "no numbers, no list");
});

Deno.test("net: pingRun sends exactly its count; recvRun receives what was sent", async () => {
  const p = pair();
  try {
    const s = await pingRun(p.a, p.b.ip, { count: 3, intervalMs: 0, size: 8, timeoutMs: 1000 });
    assert.equal(s.transmitted, 3);
    assert.equal(p.b.stats.icmpEchoRequests, 3);
    const seen: number[] = [];
    const w = await pingRun(p.a, p.b.ip, {
      count: 2,
      intervalMs: 1,
      size: 8,
      timeoutMs: 1000,
      warmup: 3,
      onReply: (seq) => seen.push(seq),
    });
    assert.equal(p.b.stats.icmpEchoRequests, 8, "the warm-up requests go out too");
    assert.deepEqual([w.transmitted, w.received], [2, 2], "but only the counted ones are summarized");
    assert.deepEqual(seen, [0, 1], "and reported, numbered from 0");
    assert.deepEqual(
      w.slowest!.map((x) => x.seq).sort(),
      [0, 1],
      "the slowest listed by their counted numbers",
    );
    assert.ok(w.slowest![0].rtt >= w.slowest![1].rtt && w.slowest![0].rtt === w.max, "slowest first");
    const sink = p.b.udp(9000), from = p.a.udp();
    const buf = new Uint8Array(64);
    for (let seq = 0; seq < 3; seq++) {
      writeDatagram(buf, seq, 64);
      from.send(buf, p.b.ip, 9000);
    }
    const r = await recvRun(sink, { count: 3, idleMs: 1000 });
    assert.equal(r.received, 3);
    assert.equal(r.corrupt, 0);
  } finally {
    await p.close();
  }
});

Deno.test("DHCP client: an OFFER while requesting is ignored; a header-only reply to port 68 is the client's to refuse", async () => {
  const { c } = discovering();
  const mask = MASK_24;
  c.receive(dhcpReply(c.buf, 0, 2, parseIp("10.0.0.42"), [mask]), 0, 300, 1);
  assert.equal(c.state, "requesting");
  assert.equal(c.receive(dhcpReply(c.buf, 0, 2, parseIp("10.0.0.43"), [mask]), 0, 300, 2), null);
  assert.equal(c.state, "requesting", "a second offer changes nothing");
  // On the host: before a lease, an empty UDP datagram from port 67 to 68 reaches the client, which rejects it.
  const p = pair({ aIp: null });
  try {
    void p.a.dhcp(5000).catch(() => {});
    const f = udpFrame(p, 0);
    writeU32(f, 30, 0xffffffff);
    f.fill(0xff, 0, 6);
    writeU16(f, 34, 67), writeU16(f, 36, 68), writeU16(f, 40, 0);
    const before = p.a.stats.udpDelivered;
    await inject(p, refreshIpSum(f));
    assert.equal(p.a.stats.udpDelivered, before + 1);
  } finally {
    await p.close();
  }
});

Deno.test("net: echoRun keeps at most its window of datagrams in flight", async () => {
  const p = pair();
  try {
    // The echo server holds what it gets until it has four, then answers them: a sender that kept more than its
    // window of four in flight would make it hold more.
    const server = p.b.udp(7), held: Datagram[] = [];
    let most = 0;
    server.onDatagram = (d) => {
      held.push({ ...d, bytes: d.bytes.slice(d.offset, d.offset + d.length), offset: 0 });
      most = Math.max(most, held.length);
      // Answer a moment later (after this receive batch): what else arrives meanwhile is held too.
      if (held.length === 4) setTimeout(() => held.splice(0).forEach((h) => server.reply(h)), 1);
    };
    const client = p.a.udp();
    const r = await echoRun(p.a, client, p.b.ip, 7, {
      count: 20,
      min: 8,
      max: 64,
      window: 4,
      timeoutMs: 2000,
    });
    assert.equal(r.echoed, 20);
    assert.equal(most, 4);
  } finally {
    await p.close();
  }
});
