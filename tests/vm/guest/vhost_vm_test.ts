/**
 * pvdrv as the host half: the lab's vhost-user NICs (lab/topology.ts VHOST_LAB) are ports of pvdrv's switch on the
 * host (`deno task switch`, pvdrv's vhost-user backend reading and writing this guest's rings in its memory). Two
 * NICs the guest kernel drives talk through it — raw frames, then ping, UDP and HTTP with one NIC in a namespace —
 * pvdrv's own driver (UIO, a transitional device) talks to the kernel through it, and traffic comes back after the
 * switch is killed with SIGKILL and restarted, 10 times. The host checks the switch's counters after the boot.
 */
import assert from "assert";
import { guestTest, qmpRequest } from "./env.ts";
import type { SwitchReport } from "../../../lab/outer/vhost_switch.ts";
import { ensureBound } from "./env.ts";
import { NetNs, run } from "../../../lab/netns.ts";
import { VHOST_LAB } from "../../../lab/topology.ts";
import { kernelInterface, Peer } from "../../../lab/guest/kernel_peer.ts";
import { Children, commandJson, task, taskJson } from "../../../lab/guest/tasks.ts";

const A_IP = "10.0.7.1", B_IP = "10.0.7.2", PV_IP = "10.0.7.3";

/** `count` frames of 60-1514 bytes from kernel interface `from` to `to`, verified by pvpeer at `to`. */
async function frames(from: string, to: { name: string; mac: string }, count: number) {
  const kr = new Peer(["recv", to.name, String(count), "15000", "16"]);
  await kr.ready;
  const ks = new Peer(["send", from, String(count), "60", "1514", to.mac, "64"]);
  // The receiver's progress is the sender's ack (its window), relayed until the receiver is done.
  let done = false, finish!: () => void;
  const finished = new Promise<void>((r) => finish = r);
  const relay = (async () => {
    while (!done) {
      await Promise.race([kr.window(0).changed(), finished]);
      ks.ack(kr.progress);
    }
  })();
  try {
    const received = await kr.result();
    done = true;
    finish();
    ks.ack(count);
    const sent = await ks.result();
    return { sent, received };
  } finally {
    done = true;
    finish();
    await relay;
  }
}

guestTest(
  "vhost-user: 100,000 frames of 60-1514 bytes each way between two kernel NICs, via pvdrv's backend",
  async () => {
    const a = await kernelInterface(VHOST_LAB.kernelA.pci), b = await kernelInterface(VHOST_LAB.kernelB.pci);
    const port = (r: SwitchReport, n: string) => r.ports.find((p) => p.port.endsWith(`/${n}.sock`))!;
    const before = await qmpRequest("pvdrv-switch-counters", {}) as SwitchReport;
    for (const [from, to] of [[a, b], [b, a]]) {
      const r = await frames(from.name, to, 100_000);
      assert.deepEqual(
        [r.sent.sent, r.received.received, r.received.corrupt],
        [100_000, 100_000, 0],
        `${from.name} → ${to.name}: ${JSON.stringify(r)}`,
      );
    }
    // From outside the guest: the switch on the host took 100,000 frames from each NIC and gave each 100,000.
    const after = await qmpRequest("pvdrv-switch-counters", {}) as SwitchReport;
    for (const n of ["kernelA", "kernelB"]) {
      const d = (k: "rx" | "tx") => Number(port(after, n)[k]) - Number(port(before, n)[k]);
      assert.ok(
        d("rx") >= 100_000 && d("tx") >= 100_000,
        `${n}: ${JSON.stringify([port(before, n), port(after, n)])}`,
      );
    }
  },
);

/** Kernel NIC A in a namespace at .1, kernel NIC B here at .2: every packet between them crosses the switch. */
async function twoHosts(): Promise<{ ns: NetNs; b: string; kids: Children; close(): Promise<void> }> {
  const a = await kernelInterface(VHOST_LAB.kernelA.pci), b = await kernelInterface(VHOST_LAB.kernelB.pci);
  const ns = await NetNs.create();
  await ns.adopt(a.name, `${A_IP}/24`);
  await run("ip", ["addr", "add", `${B_IP}/24`, "dev", b.name]);
  const kids = new Children();
  return {
    ns,
    b: b.name,
    kids,
    async close() {
      await kids.stopAll();
      await ns.close();
      await run("ip", ["addr", "flush", "dev", b.name]).catch(() => "");
    },
  };
}

guestTest(
  "vhost-user: ping, UDP echo and HTTP between two guest NICs switched by pvdrv, one in a namespace",
  async () => {
    const h = await twoHosts();
    try {
      const ping = await h.ns.sh(`ping -c 50 -i 0.02 -W 30 -q ${B_IP}`);
      assert.match(ping, /50 packets transmitted, 50 packets received/, ping);
      const echo = h.kids.start(task("lab/guest/udp_peer.ts", ["echo", `${B_IP}:7`, "5000"]));
      await echo.waitFor(/ready/);
      const k = await commandJson(
        h.ns.task("lab/guest/udp_peer.ts", ["client", A_IP, `${B_IP}:7`, "5000", "4", "1472"]),
        "the UDP client in the namespace",
      );
      assert.deepEqual([k.echoed, k.corrupt, k.lost], [5000, 0, 0], JSON.stringify(k));
      const http = h.kids.start(task("lab/guest/http_server.ts", [B_IP, "8080"]));
      await http.waitFor(/listening/);
      const body = await h.ns.sh(`wget -q -O - http://${B_IP}:8080/bytes/1000000 | wc -c`);
      assert.equal(body.trim(), "1000000");
    } finally {
      await h.close();
    }
  },
);

guestTest(
  "vhost-user: pvdrv's own driver (UIO) against pvdrv's backend: ping and UDP echo with the kernel",
  async () => {
    const PCI = VHOST_LAB.uio.pci;
    ensureBound(PCI, "uio_pci_generic");
    const h = await twoHosts();
    try {
      const p = await taskJson("cli/ping.ts", [
        PCI,
        A_IP,
        "--ip",
        `${PV_IP}/24`,
        "--count",
        "100",
        "--interval",
        "0",
        "--json",
      ]);
      assert.equal(p.received, 100, JSON.stringify(p));
      const echo = h.kids.start(h.ns.task("lab/guest/udp_peer.ts", ["echo", `${A_IP}:7`, "2000"]));
      await echo.waitFor(/ready/);
      const s = await taskJson("cli/udp.ts", [
        PCI,
        "send",
        `${A_IP}:7`,
        "--echo",
        "--count",
        "2000",
        "--sizes",
        "4-1472",
        "--ip",
        `${PV_IP}/24`,
        "--json",
      ]);
      assert.deepEqual([s.sent, s.echoed, s.corrupt, s.lost], [2000, 2000, 0, 0], JSON.stringify(s));
    } finally {
      await h.close();
    }
  },
);

guestTest(
  "vhost-user: the switch killed with SIGKILL and restarted 10 times, traffic back each time",
  async () => {
    const h = await twoHosts();
    try {
      const recovered: number[] = [];
      for (let cycle = 1; cycle <= 10; cycle++) {
        await qmpRequest("pvdrv-switch-restart", {}, 90_000);
        const t0 = Date.now();
        let ok = false;
        while (!ok && Date.now() - t0 < 60_000) {
          ok = /1 packets received/.test(await h.ns.sh(`ping -c 1 -W 1 -q ${B_IP} || true`));
        }
        assert.ok(ok, `cycle ${cycle}: no ping reply 60 s after the restart`);
        recovered.push(Date.now() - t0);
      }
      // After the last restart, a full exchange: nothing lost, nothing corrupt.
      const echo = h.kids.start(task("lab/guest/udp_peer.ts", ["echo", `${B_IP}:7`, "1000"]));
      await echo.waitFor(/ready/);
      const k = await commandJson(
        h.ns.task("lab/guest/udp_peer.ts", ["client", A_IP, `${B_IP}:7`, "1000", "4", "1472"]),
        "the UDP client in the namespace",
      );
      assert.deepEqual([k.echoed, k.corrupt, k.lost], [1000, 0, 0], JSON.stringify(k));
      console.log(`vhost-user: recovered after each restart in ${recovered.join(", ")} ms`);
    } finally {
      await h.close();
    }
  },
);
