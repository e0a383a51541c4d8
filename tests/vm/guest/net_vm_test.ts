/**
 * pvdrv as a network host on a real QEMU virtio-net NIC (0000:00:04.0 over VFIO), against the guest kernel's own
 * stack on the NIC at the other end of the wire (0000:00:05.0), moved into a network namespace of its own so every
 * frame crosses the emulated link. The peers are real programs: busybox ping, udhcpd, wget and httpd, and a Deno
 * UDP socket on the kernel's stack (lab/guest/udp_peer.ts).
 */
import assert from "assert";
import { ensureBound, guestTest, LAB } from "./env.ts";
import { NetNs, run } from "../../../lab/netns.ts";
import { readDevice } from "../../../ffi/sysfs.ts";
import { Children, commandJson, task, taskJson } from "../../../lab/guest/tasks.ts";

const PV = "10.0.0.2", KERNEL = "10.0.0.1";

/** The kernel peer NIC in a fresh namespace at 10.0.0.1/24, pvdrv's NIC on vfio-pci, and the test's children. */
async function setup(): Promise<{ ns: NetNs; dev: string; kids: Children }> {
  ensureBound(LAB.vfioKernelPeer.pci, "vfio-pci");
  const dev = readDevice(LAB.kernelPeer.pci).netInterfaces[0];
  assert.ok(dev, "the kernel drives the peer NIC");
  const ns = await NetNs.create();
  await ns.adopt(dev, `${KERNEL}/24`);
  return { ns, dev, kids: new Children() };
}

const PCI = LAB.vfioKernelPeer.pci;

guestTest("net: pvdrv pings the kernel and the kernel pings pvdrv, 500 each way, no loss", async () => {
  const { ns, dev, kids } = await setup();
  try {
    const c0 = await ns.packets(dev);
    const p = await taskJson("cli/ping.ts", [
      PCI,
      KERNEL,
      "--ip",
      `${PV}/24`,
      "--count",
      "500",
      "--interval",
      "0",
      "--json",
    ]);
    assert.equal(p.transmitted, 500);
    assert.equal(p.received, 500, "pvdrv got every reply");
    // The driver's own counters come with the host's: at least every request out and every reply in.
    const nicStats = p.nicStats as Record<string, number>;
    assert.ok(nicStats.txPackets >= 500 && nicStats.rxPackets >= 500, JSON.stringify(nicStats));
    // The kernel's NIC counted them on the wire (plus ARP and the gratuitous ARP).
    const c1 = await ns.packets(dev);
    assert.ok(
      c1.rx - c0.rx >= 500 && c1.tx - c0.tx >= 500,
      `kernel NIC counters ${JSON.stringify([c0, c1])}`,
    );
    // The other way: pvdrv answers while it runs a UDP echo (any host task answers pings).
    const echo = kids.start(task("cli/udp.ts", [PCI, "echo", "--ip", `${PV}/24`, "--json"]));
    await echo.waitFor(/echoing on/);
    const out = await ns.sh(`ping -c 500 -i 0.01 -W 30 -q ${PV}`);
    // Stopped before asserting, so a loss shows pvdrv's counters (requests heard, replies sent) beside ping's.
    const code = await echo.stop();
    assert.match(
      out,
      /500 packets transmitted, 500 packets received, 0% packet loss/,
      `${out}\n${echo.text}`,
    );
    assert.equal(code, 0, echo.text);
    assert.match(echo.text, /"icmpEchoRequests":500\b/, echo.text);
  } finally {
    await kids.stopAll();
    await ns.close();
  }
});

guestTest("net: UDP echo of 5,000 datagrams of mixed sizes each way, every byte checked", async () => {
  const { ns, kids } = await setup();
  try {
    // Kernel → pvdrv → kernel: pvdrv's `udp echo` answers a kernel socket that checks every byte.
    const echo = kids.start(
      task("cli/udp.ts", [PCI, "echo", "--ip", `${PV}/24`, "--count", "5000", "--json"]),
    );
    await echo.waitFor(/echoing on/);
    const k = await commandJson(
      ns.task("lab/guest/udp_peer.ts", ["client", KERNEL, `${PV}:7`, "5000", "4", "1472"]),
      "the kernel's UDP client",
    );
    assert.deepEqual([k.echoed, k.corrupt, k.lost], [5000, 0, 0], JSON.stringify(k));
    assert.equal(await echo.exit(), 0, echo.text);
    // pvdrv → kernel → pvdrv: a kernel UDP echo socket; pvdrv sends and checks every byte.
    const peer = kids.start(ns.task("lab/guest/udp_peer.ts", ["echo", `${KERNEL}:7`, "5000"]));
    await peer.waitFor(/ready/);
    const s = await taskJson("cli/udp.ts", [
      PCI,
      "send",
      `${KERNEL}:7`,
      "--echo",
      "--count",
      "5000",
      "--sizes",
      "4-1472",
      "--ip",
      `${PV}/24`,
      "--json",
    ]);
    assert.deepEqual([s.sent, s.echoed, s.corrupt, s.lost], [5000, 5000, 0, 0], JSON.stringify(s));
    assert.ok((s.nicStats as Record<string, number>).rxPackets >= 5000, JSON.stringify(s.nicStats));
    assert.equal(await peer.exit(), 0, peer.text);
  } finally {
    await kids.stopAll();
    await ns.close();
  }
});

guestTest(
  "net: `send --udp` and `recv --udp` speak real IPv4/UDP with a kernel socket, every byte checked",
  async () => {
    const { ns, kids } = await setup();
    try {
      // The kernel sends 2,000 test datagrams of 4-1472 bytes; `recv --udp` checks each one.
      const recv = kids.start(
        task("cli/recv.ts", [PCI, "--udp", "9000", "--count", "2000", "--ip", `${PV}/24`, "--json"]),
      );
      await recv.waitFor(/receiving on/);
      const sent = await commandJson(
        ns.task("lab/guest/udp_peer.ts", ["send", KERNEL, `${PV}:9000`, "2000", "4", "1472"]),
        "the kernel's UDP sender",
      );
      assert.equal(sent.sent, 2000);
      assert.equal(await recv.exit(), 0, recv.text);
      const r = JSON.parse(recv.text.trim().split("\n").pop()!);
      assert.deepEqual([r.received, r.corrupt, r.duplicate], [2000, 0, 0], recv.text);
      // `send --udp` to a kernel socket that checks every byte.
      // The peer's idle limit covers pvdrv's start too (Deno, the NIC's reset, the host) before the first datagram:
      // at 5 s, a slow start let the peer give up and close its port, and the kernel answered port unreachable.
      const peer = kids.start(ns.task("lab/guest/udp_peer.ts", ["recv", `${KERNEL}:9001`, "500", "30000"]));
      await peer.waitFor(/ready/);
      const s = await taskJson("cli/send.ts", [
        PCI,
        "--udp",
        `${KERNEL}:9001`,
        "--count",
        "500",
        "--rate",
        "200",
        "--sizes",
        "4-1472",
        "--ip",
        `${PV}/24`,
        "--json",
      ]);
      assert.equal(s.sent, 500);
      assert.equal(await peer.exit(), 0, peer.text);
      const k = JSON.parse(peer.text.trim().split("\n").pop()!);
      // On a loss, what pvdrv's host did (ARP, ICMP unreachable heard) and the kernel's UDP counters (NoPorts,
      // InErrors, RcvbufErrors) and pfmemalloc drops say which side lost the datagrams.
      const why = k.received === 500 ? "" : `pvdrv: ${JSON.stringify(s)}\nkernel: ${await ns.sh(
        "grep '^Udp:' /proc/net/snmp; awk '/^TcpExt:/ { if (!n) { n = split($0, h); next } for (i = 1; i <= n; i++) if (h[i] == \"PFMemallocDrop\") print h[i], $i }' /proc/net/netstat",
      )}`;
      assert.deepEqual([k.received, k.corrupt], [500, 0], `${peer.text}\n${why}`);
    } finally {
      await kids.stopAll();
      await ns.close();
    }
  },
);

guestTest(
  "net: pvdrv leases its address from busybox udhcpd (ping, then serve through the bridge), renewing at T1",
  async () => {
    const { ns, dev, kids } = await setup();
    const conf = "/tmp/udhcpd.conf";
    Deno.writeTextFileSync(
      conf,
      `start 10.0.0.100\nend 10.0.0.120\ninterface ${dev}\nlease_file /tmp/udhcpd.leases\nmin_lease 10\n` +
        `option subnet 255.255.255.0\noption router ${KERNEL}\noption lease 10\n`,
    );
    Deno.writeTextFileSync("/tmp/udhcpd.leases", "");
    kids.start(ns.command("udhcpd", ["-f", conf], { stdout: "piped", stderr: "piped" }));
    try {
      // 8 pings a second apart: the 10 s lease is renewed at T1 (5 s) on the way.
      const p = await taskJson("cli/ping.ts", [
        PCI,
        KERNEL,
        "--dhcp",
        "--count",
        "8",
        "--interval",
        "1000",
        "--json",
      ]);
      assert.match(String(p.src), /^10\.0\.0\.1(0\d|1\d|20)\/24$/, `leased address ${p.src}`);
      assert.equal(p.received, 8);
      const host = p.host as Record<string, number>;
      assert.ok(
        host.udpDelivered >= 3,
        `OFFER, ACK and the renewal's ACK reached the client (${host.udpDelivered})`,
      );
      // `serve --dhcp`: the bridge's worker leases the TAP's address and keeps renewing it from inside the bridge.
      const serve = kids.start(task("cli/serve.ts", [PCI, "--dhcp", "--port", "8080"]));
      const [, ip] = await serve.waitFor(/serve: http:\/\/(10\.0\.0\.1(?:0\d|1\d|20)):8080\//);
      const body = await ns.sh(`wget -q -O - http://${ip}:8080/bytes/1000 | wc -c`);
      assert.equal(body.trim(), "1000");
      await new Promise((r) => setTimeout(r, 7000)); // past T1 (5 s of the 10 s lease)
      const again = await ns.sh(`wget -q -O - http://${ip}:8080/bytes/3000 | wc -c`);
      assert.equal(again.trim(), "3000");
      assert.equal(await serve.stop(), 0, serve.text);
      const renewals = Number(serve.text.match(/stopped after \d+ requests; .*dhcp (\d+)/)?.[1] ?? -1);
      assert.ok(renewals >= 1, `the bridge took the renewal's ACK (dhcp ${renewals}):\n${serve.text}`);
    } finally {
      await kids.stopAll();
      await ns.close();
    }
  },
);

guestTest(
  "net: wget fetches 1 MiB from `deno task serve` through the TAP bridge, and pvdrv's side fetches from httpd",
  async () => {
    const { ns, kids } = await setup();
    const www = await Deno.makeTempDir();
    const blob = crypto.getRandomValues(new Uint8Array(65536));
    const file = new Uint8Array(1 << 20);
    for (let i = 0; i < 16; i++) file.set(blob, i * 65536), file[i * 65536] = i;
    Deno.writeFileSync(`${www}/blob`, file);
    const want = (await run("sha256sum", [`${www}/blob`])).split(" ")[0];
    try {
      const serve = kids.start(
        task("cli/serve.ts", [PCI, "--ip", `${PV}/24`, "--dir", www, "--port", "8080"]),
      );
      await serve.waitFor(/serve: http:\/\/10\.0\.0\.2:8080\//);
      await ns.sh(`wget -q -O /tmp/got http://${PV}:8080/blob`);
      const got = (await ns.sh("sha256sum /tmp/got")).split(" ")[0];
      assert.equal(got, want, "the file came through intact");
      const status = await ns.sh(`wget -q -O - http://${PV}:8080/`);
      assert.match(status, /pvdrv serve: virtio-net 0000:00:04\.0 through pvtap\d/, status);
      assert.equal(await serve.stop(), 0, serve.text);
      // Every frame crossed pvdrv's driver: 1 MiB out through the NIC, the ACKs in.
      const m = serve.text.match(
        /stopped after \d+ requests; nic→tap (\d+) \(\d+ B\), tap→nic \d+ \((\d+) B\)/,
      );
      assert.ok(m, serve.text);
      assert.ok(Number(m[1]) > 10 && Number(m[2]) > 1 << 20, m[0]); // the ACK count varies (delayed ACKs)
      assert.ok(!readLinks().some((l) => l.startsWith("pvtap")), "the TAP interface is gone");

      // The other way: the kernel behind `deno task tap` fetches from busybox httpd in the namespace.
      await ns.sh(`mkdir -p /tmp/www2 && cp ${www}/blob /tmp/www2/blob`);
      const httpd = kids.start(
        ns.command("httpd", ["-f", "-p", `${KERNEL}:80`, "-h", "/tmp/www2"], {
          stdout: "piped",
          stderr: "piped",
        }),
      );
      const tap = kids.start(task("cli/tap.ts", [PCI, "--ip", `${PV}/24`, "--name", "pvtest0", "--json"]));
      await tap.waitFor(/tap: pvtest0 .* bridged to virtio-net 0000:00:04\.0/);
      await run("wget", ["-q", "-O", "/tmp/got2", `http://${KERNEL}/blob`]);
      assert.equal((await run("sha256sum", ["/tmp/got2"])).split(" ")[0], want);
      assert.equal(await tap.stop(), 0, tap.text);
      const summary = JSON.parse(tap.text.trim().split("\n").pop()!);
      assert.ok(summary.toTap > 700 && summary.toTapBytes > 1 << 20, JSON.stringify(summary));
      assert.ok(summary.nicStats.rxPackets >= summary.toTap, JSON.stringify(summary.nicStats));
      assert.ok(!readLinks().includes("pvtest0"), "the TAP interface is gone");
      await httpd.stop();
    } finally {
      await kids.stopAll();
      await ns.close();
      await Deno.remove(www, { recursive: true });
    }
  },
);

function readLinks(): string[] {
  return [...Deno.readDirSync("/sys/class/net")].map((e) => e.name);
}
