/** Boundary cases the mutation tester found unguarded: each assertion fails on a one-token change of the code. */
import assert from "assert";
import { checkFrame, FrameCheck, PVDRV_ETHERTYPE } from "../../apps/frames.ts";
import { PcapWriter } from "../../apps/pcap.ts";
import { receive, YIELD_EVERY } from "../../apps/traffic.ts";
import type { Nic } from "../../drivers/net/nic.ts";
import { type PacketBuffer, PacketPool } from "../../drivers/net/packet_pool.ts";
import { interfaceInUse } from "../../ffi/sysfs.ts";
import { bindDevice } from "../../system/bind.ts";
import { PATH_MAX, XenStore } from "../../drivers/xen/xenstore.ts";
import { Netfront } from "../../drivers/xen/netfront.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { ModelEvtchns, ModelGrants, NetbackModel } from "../models/xen.ts";
import { makeSysfs } from "./sysfs_fixture.ts";

Deno.test("frames: a buffer shorter than a pvdrv header is foreign even with the pvdrv ethertype", () => {
  const b = new Uint8Array(23);
  b[12] = PVDRV_ETHERTYPE >> 8;
  b[13] = PVDRV_ETHERTYPE & 0xff;
  b.set([0x50, 0x56, 0x44, 0x52], 14); // "PVDR"
  assert.equal(checkFrame(b, 23, new Uint32Array(1)), FrameCheck.Foreign);
});

Deno.test("pcap: a record holds only the frame's length of a longer buffer", () => {
  const path = Deno.makeTempFileSync({ suffix: ".pcap" });
  try {
    const w = new PcapWriter(path);
    const buf = new Uint8Array(2048).fill(0xee);
    buf.fill(0x11, 0, 60);
    for (let i = 0; i < 3500; i++) w.write(buf, 60); // past 256 KiB: records sit right at the buffer's end
    w.close();
    const b = Deno.readFileSync(path);
    assert.equal(b.length, 24 + 3500 * (16 + 60));
    for (let r = 0; r < 3500; r++) {
      const data = b.subarray(24 + r * 76 + 16, 24 + (r + 1) * 76);
      assert.ok(data.every((x) => x === 0x11), `record ${r} holds the frame's 60 bytes only`);
    }
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("sysfs: an interface is in use when administratively up, even without carrier", () => {
  const root = makeSysfs([{
    address: "0000:00:03.0",
    vendor: 0x1af4,
    device: 0x1041,
    class: 0x020000,
    netif: { name: "eth0", up: true },
  }]);
  try {
    Deno.writeTextFileSync(`${root}/class/net/eth0/operstate`, "down\n"); // IFF_UP set, no carrier
    assert.equal(interfaceInUse("eth0", root), true);
    Deno.writeTextFileSync(`${root}/class/net/eth0/flags`, "0x1002\n");
    Deno.writeTextFileSync(`${root}/class/net/eth0/operstate`, "up\n");
    assert.equal(interfaceInUse("eth0", root), true, "operstate up alone counts too");
    Deno.writeTextFileSync(`${root}/class/net/eth0/operstate`, "down\n");
    assert.equal(interfaceInUse("eth0", root), false);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("bind: a missing driver names the modules to load for that target", () => {
  const root = makeSysfs([{
    address: "0000:00:04.0",
    vendor: 0x1af4,
    device: 0x1041,
    class: 0x020000,
    driver: "virtio-pci",
    group: 4,
  }]);
  try {
    assert.throws(
      () => bindDevice("0000:00:04.0", "vfio-pci", { root }),
      /load irqbypass, vfio, vfio_iommu_type1/,
    );
    assert.throws(() => bindDevice("0000:00:04.0", "uio_pci_generic", { root }), /load uio, uio_pci_generic/);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("xenstore: a path of exactly XENSTORE_ABS_PATH_MAX characters is allowed, one more is not", async () => {
  const server = new XenStoreServer();
  const xs = new XenStore(server.connect(0).transport);
  const path = "/" + "a".repeat(PATH_MAX - 1);
  await xs.write(path, "v");
  assert.equal(await xs.read(path), "v");
  await assert.rejects(() => xs.read(path + "a"), /invalid xenstore path/);
  await xs.close();
});

Deno.test("netfront: a backend that never connects times out with the state it is stuck in", async () => {
  const server = new XenStoreServer();
  const grants = new ModelGrants(), evtchns = new ModelEvtchns();
  const back = new NetbackModel(server, grants, evtchns);
  server.onWrite = () => {}; // the backend ignores the frontend: stays in InitWait
  const xs = new XenStore(server.connect(back.frontDomid).transport);
  await assert.rejects(
    () => Netfront.open(xs, grants, evtchns, { timeoutMs: 200 }),
    /did not reach Connected within 200 ms \(state 2\)/,
  );
  assert.equal(grants.live, 0);
  await xs.close();
});

Deno.test("receive yields to the event loop by frames handled, not per batch, whatever the frames are", async () => {
  // A NIC that delivers batches of 64 frames that are not pvdrv test frames (any other traffic on the wire).
  const pool = new PacketPool("fake", { bytes: new Uint8Array(64 * 2048), free() {} }, 64, 2048, 0);
  let delivered = 0;
  const nic = {
    name: "fake",
    receiveBatch(out: PacketBuffer[], max: number) {
      const n = pool.takeMany(out, Math.min(max, 64));
      for (let i = 0; i < n; i++) out[i].length = 60; // zeros: a foreign frame
      delivered += n;
      return n;
    },
    release(pkts: PacketBuffer[], n: number) {
      for (let i = 0; i < n; i++) pool.put(pkts[i], "app");
    },
  } as unknown as Nic;
  // Loops yield with setImmediate (a chained setTimeout is clamped to >= 4 ms); count both.
  const realSetTimeout = globalThis.setTimeout, realSetImmediate = globalThis.setImmediate;
  let yields = 0;
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    yields++;
    return realSetTimeout(fn, ms);
  }) as typeof setTimeout;
  globalThis.setImmediate = ((fn: () => void) => {
    yields++;
    return realSetImmediate(fn);
  }) as typeof setImmediate;
  try {
    const frames = 20 * YIELD_EVERY;
    const r = await receive(nic, { count: 0, idleTimeoutMs: 1000, stop: () => delivered >= frames });
    assert.equal(r.foreign, frames);
    assert.ok(yields <= frames / YIELD_EVERY + 1, `${yields} yields for ${frames} frames`);
  } finally {
    globalThis.setTimeout = realSetTimeout;
    globalThis.setImmediate = realSetImmediate;
  }
});
