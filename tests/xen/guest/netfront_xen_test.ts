// Runs inside the PV domU of the Xen lab (lab/outer/xen.ts), against dom0's real xen-netback. dom0 verifies the
// frames we send (pvpeer on vif1.0) and, once it has all of them, sends us the same number back.
import assert from "assert";
import { Netfront } from "../../../drivers/xen/netfront.ts";
import { XEN_PAGE } from "../../../hal/xen.ts";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { probeXen } from "../../../system/xen_probe.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { Evtchn, Gntalloc } from "../../../ffi/xen.ts";
import { macToString, parseMac } from "../../../drivers/net/nic.ts";
import { generate, receive } from "../../../apps/traffic.ts";

const IN_XEN = Deno.env.get("PVDRV_XEN_GUEST") === "1";
const N = 10_000;

Deno.test({
  name: "netfront ⇄ dom0's xen-netback: handshake to Connected, 10,000 frames each way, every byte checked",
  ignore: !IN_XEN,
  async fn() {
    const x = probeXen();
    assert.equal(x.hypervisor, "xen");
    const vif = x.devices.find((d) => d.nodename === "device/vif/0");
    assert.ok(vif, "vif-0 on the xen bus");
    assert.equal(vif.driver, null, "no kernel driver holds vif-0");
    const xs = new XenStore(new XenbusDevice());
    const grants = new Gntalloc();
    const t0 = performance.now();
    const nf = await Netfront.open(xs, grants, new Evtchn(), { timeoutMs: 60_000 });
    try {
      const secs = ((performance.now() - t0) / 1000).toFixed(2);
      console.log(
        `  connected to ${nf.backend} in ${secs} s, mac ${macToString(nf.mac)}, ${nf.queues} queue(s)`,
      );
      assert.ok(nf.linkUp());
      // Receive from dom0 while sending ours, paced for dom0's receiver (dom0 starts sending when it has ours).
      const rx = receive(nf, { count: N, idleTimeoutMs: 120_000 });
      const dst = parseMac("fe:ff:ff:ff:ff:ff");
      const tx = await generate(nf, { count: N, minSize: 60, maxSize: 1514, dst, rate: 1000 });
      assert.equal(tx.sent, N);
      const r = await rx;
      console.log(
        `  domU → dom0 ${tx.pps.toFixed(0)} pps; dom0 → domU ${r.received} verified, ${r.pps.toFixed(0)} pps`,
      );
      assert.deepEqual({ received: r.received, corrupt: r.corrupt, duplicate: r.duplicate }, {
        received: N,
        corrupt: 0,
        duplicate: 0,
      });
      const st = nf.stats()[0];
      assert.deepEqual([st.txPackets, st.txErrors], [N, 0]);
    } finally {
      await nf.close();
      grants.close();
      await xs.close();
    }
  },
});

Deno.test({
  name: "netfront at MTU 9000 ⇄ xen-netback: reconnect, 2,000 frames of 60–9014 bytes each way (multi-slot)",
  ignore: !IN_XEN,
  async fn() {
    const J = Number(Deno.env.get("PVDRV_JUMBO_FRAMES") ?? 2000);
    const xs = new XenStore(new XenbusDevice());
    const grants = new Gntalloc();
    // dom0 raised vif1.0's MTU to 9000 once our first connection offered feature-sg.
    const nf = await Netfront.open(xs, grants, new Evtchn(), { timeoutMs: 60_000, mtu: 9000 });
    try {
      assert.equal(nf.maxFrame, 9018); // the one frame-size rule: MTU + Ethernet header + one VLAN tag
      const rx = receive(nf, { count: J, idleTimeoutMs: 30_000 });
      const dst = parseMac("fe:ff:ff:ff:ff:ff");
      const tx = await generate(nf, { count: J, minSize: 60, maxSize: 9014, dst, rate: 200 });
      assert.equal(tx.sent, J);
      const r = await rx;
      const st = nf.stats()[0];
      console.log(
        `  jumbo: domU → dom0 ${tx.bytes} bytes; dom0 → domU ${r.received} verified, ${r.bytes} bytes; ` +
          `dropped here ${st.rxDropped}; ${nf.ringState()}`,
      );
      assert.deepEqual({ received: r.received, corrupt: r.corrupt, duplicate: r.duplicate }, {
        received: J,
        corrupt: 0,
        duplicate: 0,
      });
      assert.ok(r.bytes / J > XEN_PAGE, "most frames span several 4 KiB slots");
      assert.deepEqual([st.txPackets, st.txErrors, st.rxDropped], [J, 0, 0]);
    } finally {
      await nf.close();
      grants.close();
      await xs.close();
    }
  },
});

Deno.test({
  name:
    "a pvdrv process killed with SIGKILL leaves xen-netback connected; the next open closes it and reconnects",
  ignore: !IN_XEN,
  async fn() {
    const xs = new XenStore(new XenbusDevice());
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", "cli/send.ts", "vif/0", "--count", "100000000", "--rate", "200"],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      await xs.waitFor("device/vif/0/state", (v) => v === "4", 60_000);
      await new Promise((r) => setTimeout(r, 1000)); // frames in flight
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
    const backend = await xs.read("device/vif/0/backend");
    assert.equal(
      await xs.read(`${backend}/state`),
      "4",
      "the backend still thinks the dead process is there",
    );
    const grants = new Gntalloc();
    const nf = await Netfront.open(xs, grants, new Evtchn(), { timeoutMs: 60_000 });
    try {
      const tx = await generate(nf, {
        count: 500,
        minSize: 60,
        maxSize: 1514,
        dst: parseMac("fe:ff:ff:ff:ff:ff"),
        rate: 500,
      });
      assert.equal(tx.sent, 500);
      const st = nf.stats()[0];
      assert.deepEqual([st.txPackets, st.txErrors], [500, 0], "netback consumed the new rings");
    } finally {
      await nf.close();
      grants.close();
      await xs.close();
    }
  },
});
