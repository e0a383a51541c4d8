/**
 * The architecture's promises, checked: dependencies point one way (layers; inside drivers the device core, class
 * cores, buses and the device side; system management beside the drivers), the driver table decides what pvdrv
 * drives, models speak the shared wire modules, both NIC drivers share the queue core's rules (frame size, whole-batch length check, async idempotent close that
 * also closes what the NIC owns), ioctl structures are laid out as the kernel headers say, and a project that
 * imports mod.ts over the network still gets its native shim.
 */
import assert from "assert";
import { NET_F } from "../../drivers/virtio/features.ts";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { openVirtioPci } from "../../drivers/virtio/pci.ts";
import { Netfront } from "../../drivers/xen/netfront.ts";
import { XenStore } from "../../drivers/xen/xenstore.ts";
import { maxFrameFor, type Nic } from "../../drivers/net/nic.ts";
import type { PacketBuffer } from "../../drivers/net/packet_pool.ts";
import {
  DEVICE_CLASSES,
  DISK_DRIVERS,
  DRIVERS,
  NIC_DRIVERS,
  openDisk,
  openNic,
  pciDriverFor,
  xenbusDriverFor,
} from "../../system/table.ts";
import { deviceKind } from "../../system/ids.ts";
import { IoctlStruct } from "../../ffi/lib.ts";
import { isPvdrvError, PvdrvError } from "../../hal/errors.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { ModelEvtchns, ModelGrants, NetbackModel } from "../models/xen.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Relative imports of every .ts file under `dir`, as [file, target folder] pairs (paths from the repo root). */
function imports(dir: string): [string, string][] {
  const out: [string, string][] = [];
  const walk = (d: string) => {
    for (const e of Deno.readDirSync(`${ROOT}${d}`)) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.name.endsWith(".ts")) {
        const src = Deno.readTextFileSync(`${ROOT}${p}`);
        for (const m of src.matchAll(/(?:from|import)\s*\(?\s*"(\.\.?\/[^"]+)"/g)) {
          const target = new URL(m[1], `file://${ROOT}${p}`).pathname.slice(ROOT.length);
          out.push([p, target]);
        }
      }
    }
  };
  walk(dir);
  return out;
}

Deno.test("layers: native ← ffi ← hal ← drivers ← net ← apps ← cli; system beside; labs apart; mod.ts exports the library", () => {
  const top = (p: string) => p.split("/")[0];
  const allowed: Record<string, string[]> = {
    hal: ["hal"],
    ffi: ["ffi", "hal"],
    drivers: ["drivers", "hal"],
    system: ["system", "drivers", "hal", "ffi"],
    net: ["net", "drivers", "hal"],
    apps: ["apps", "net", "drivers", "hal"],
    lab: ["lab", "system", "apps", "net", "drivers", "hal", "ffi"],
    cli: ["cli", "system", "lab", "apps", "net", "drivers", "hal", "ffi"],
  };
  const bad: string[] = [];
  for (const [layer, ok] of Object.entries(allowed)) {
    for (const [file, target] of imports(layer)) {
      if (!ok.includes(top(target))) bad.push(`${file} imports ${target}`);
    }
  }
  // The lab shows where code runs: the guest's programs never reach into the outer side, and cli/ holds tasks only.
  for (const [file, target] of imports("lab/guest")) {
    if (target.startsWith("lab/outer/")) bad.push(`${file} (runs in the guest) imports ${target}`);
  }
  const tasks = Deno.readTextFileSync(`${ROOT}deno.json`);
  for (const e of Deno.readDirSync(`${ROOT}cli`)) {
    if (e.isFile && !tasks.includes(`cli/${e.name}`)) {
      bad.push(`cli/${e.name} is not a task (put helpers in cli/lib/)`);
    }
  }
  // mod.ts is the API for using devices; drivers.ts (the ./drivers export) the one for writing them.
  const code = (f: string) => Deno.readTextFileSync(`${ROOT}${f}`).replace(/\/\*\*[\s\S]*?\*\//g, "");
  const mod = code("mod.ts");
  const api =
    /^(hal\/errors|ffi\/lib|drivers\/(net\/nic|net\/packet_pool|net\/packet_batch|block\/disk|core\/device)|system\/|net\/|apps\/)/;
  for (const m of mod.matchAll(/from "\.\/([a-z_/]+)\.ts"/g)) {
    if (!api.test(m[1])) bad.push(`mod.ts exports internals of ${m[1]}.ts (they belong in drivers.ts)`);
  }
  const drv = code("drivers.ts");
  for (const m of drv.matchAll(/from "\.\/([a-z]+)\//g)) {
    if (!["hal", "ffi", "drivers"].includes(m[1])) bad.push(`drivers.ts exports from ${m[1]}/`);
  }
  assert.deepEqual(bad, []);
});

Deno.test("layers inside drivers: the class-agnostic core, class cores, buses, and the device side apart", () => {
  const folder = (p: string) => p.split("/").slice(0, 2).join("/");
  const bad: string[] = [];
  for (const [file, target] of imports("drivers")) {
    const from = folder(file), to = folder(target);
    // The device core serves every class and bus: it knows none of them.
    if (from === "drivers/core" && to !== "drivers/core" && !target.startsWith("hal/")) {
      bad.push(`${file} (the device core) imports ${target}`);
    }
    // A class core (drivers/net: NICs) builds on the device core only, never on a bus.
    if (from === "drivers/net" && /^drivers\/(virtio|xen|pci)\//.test(target)) {
      bad.push(`${file} (a class core) imports ${target}`);
    }
    // One bus does not reach into another.
    if (from === "drivers/virtio" && to === "drivers/xen") bad.push(`${file} imports ${target}`);
    if (from === "drivers/xen" && (to === "drivers/virtio" || to === "drivers/pci")) {
      bad.push(`${file} imports ${target}`);
    }
  }
  // The device side of a virtqueue shares the wire layout with the driver side, not its logic.
  for (const [file, target] of imports("drivers/virtio")) {
    if (
      file === "drivers/virtio/device_queue.ts" &&
      !/^(hal\/|drivers\/virtio\/(split_ring|features)\.ts$)/.test(target)
    ) {
      bad.push(`${file} (device side) imports ${target}`);
    }
  }
  assert.deepEqual(bad, []);
});

Deno.test("models speak the shared wire modules: no literal ring offsets, status bits or XenBus states", () => {
  const bad: string[] = [];
  for (const e of Deno.readDirSync(`${ROOT}tests/models`)) {
    const src = Deno.readTextFileSync(`${ROOT}tests/models/${e.name}`);
    const lines = src.split("\n");
    lines.forEach((line, i) => {
      const at = `tests/models/${e.name}:${i + 1}`;
      if (/\.(driver|device|desc)\s*\+\s*\d/.test(line)) bad.push(`${at}: ring offset ${line.trim()}`);
      if (/#status\s*[&|]\s*\d/.test(line)) bad.push(`${at}: status bit ${line.trim()}`);
      if (/state`?,\s*"[0-8]"|=== "[0-8]"/.test(line)) bad.push(`${at}: XenBus state string ${line.trim()}`);
    });
  }
  assert.deepEqual(bad, []);
});

Deno.test("driver table: probe, bind, openNic and openDisk ask one table what pvdrv drives, by class", async () => {
  const net = { vendorId: 0x1af4, deviceId: 0x1041, subsystemId: 1 };
  const legacyNet = { vendorId: 0x1af4, deviceId: 0x1000, subsystemId: 1 };
  const blk = { vendorId: 0x1af4, deviceId: 0x1042, subsystemId: 2 };
  const legacyBlk = { vendorId: 0x1af4, deviceId: 0x1001, subsystemId: 2 };
  assert.equal(pciDriverFor(net)?.name, "virtio-net");
  assert.equal(pciDriverFor(legacyNet)?.name, "virtio-net");
  assert.equal(pciDriverFor(blk)?.name, "virtio-blk");
  assert.equal(pciDriverFor(legacyBlk)?.class, DEVICE_CLASSES.disk);
  assert.equal(pciDriverFor({ vendorId: 0x1af4, deviceId: 0x1044, subsystemId: 0 }), null, "virtio-rng");
  assert.equal(pciDriverFor({ vendorId: 0x8086, deviceId: 0x100e, subsystemId: 0 }), null);
  assert.equal(xenbusDriverFor("vif")?.name, "netfront");
  assert.equal(xenbusDriverFor("vbd")?.name, "blkfront");
  assert.equal(xenbusDriverFor("vscsi"), null);
  assert.deepEqual(deviceKind(net), { kind: "virtio-net (modern)", supported: true });
  assert.deepEqual(deviceKind(blk), { kind: "virtio-block (modern)", supported: true });
  assert.ok(DRIVERS.every((d) => (d.pci !== undefined) !== (d.xenbus !== undefined)));
  assert.ok(NIC_DRIVERS.every((d) => d.class === DEVICE_CLASSES.nic));
  assert.ok(DISK_DRIVERS.every((d) => d.class === DEVICE_CLASSES.disk) && DISK_DRIVERS.length > 0);
  await assert.rejects(
    () => openNic("vbd/0"),
    (e) =>
      isPvdrvError(e, "nic") &&
      /vbd\/0 is a disk \(blkfront\), not a nic: open it with openDisk/.test(e.message),
  );
  await assert.rejects(
    () => openNic("vscsi/0"),
    (e) => isPvdrvError(e, "nic") && /no pvdrv driver/.test(e.message),
  );
  await assert.rejects(
    () => openDisk("vif/0"),
    (e) =>
      isPvdrvError(e, "disk") &&
      /vif\/0 is a nic \(netfront\), not a disk: open it with openNic/.test(e.message),
  );
});

/** A virtio-net NIC on the model and a netfront on the netback model, for checks both must pass. */
async function bothDrivers(): Promise<{ nic: Nic; owned: () => boolean }[]> {
  const model = new VirtioNetModel();
  let pciClosed = false;
  const pci = { ...model.pci(), close: () => void (pciClosed = true) };
  const virtio = VirtioNet.openPci(pci, { ownsPci: true });
  const server = new XenStoreServer();
  const grants = new ModelGrants(1024), evtchns = new ModelEvtchns();
  const back = new NetbackModel(server, grants, evtchns, {});
  const xs = new XenStore(server.connect(back.frontDomid).transport);
  let xsClosed = false;
  const owned = { close: async () => void (await xs.close(), xsClosed = true) };
  const nf = await Netfront.open(xs, grants, evtchns, { timeoutMs: 2000, owns: [owned] });
  return [{ nic: virtio, owned: () => pciClosed }, { nic: nf, owned: () => xsClosed }];
}

Deno.test("NIC core: one frame-size rule, whole-batch length check, async idempotent close closing what it owns", async () => {
  for (const { nic, owned } of await bothDrivers()) {
    assert.equal(nic.maxFrame, maxFrameFor(nic.mtu), `${nic.name}: maxFrame is mtu + 18`);
    assert.equal(nic.maxFrame, 1518, nic.name);
    const bufs: PacketBuffer[] = [];
    assert.equal(nic.allocTx(bufs, 3), 3);
    bufs[0].length = 60;
    bufs[1].length = nic.maxFrame + 1;
    bufs[2].length = 60;
    assert.throws(() => nic.sendBatch(bufs, 3), RangeError);
    // Nothing was taken: all three are still the application's, and a good batch of them goes out.
    for (const b of bufs) assert.equal(b.pool.owner(b), "app", nic.name);
    bufs[1].length = nic.maxFrame;
    assert.equal(nic.sendBatch(bufs, 3), 3);
    const closing = nic.close();
    assert.ok(closing instanceof Promise);
    assert.equal(nic.close(), closing, `${nic.name}: close is idempotent`);
    await closing;
    assert.ok(owned(), `${nic.name}: owned resources closed with the NIC`);
    assert.throws(() => nic.allocTx(bufs, 1), (e) => isPvdrvError(e, "nic") && /closed/.test(e.message));
  }
});

Deno.test("virtio bus: the driver refuses a virtio device that is not a network card", () => {
  const model = new VirtioNetModel({ features: NET_F.MAC });
  model.config.view.setUint16(2, 0x1042, true); // virtio-block's modern device id
  const bus = openVirtioPci(model.pci());
  assert.equal(bus.deviceType, 2);
  assert.throws(
    () => VirtioNet.open(bus),
    (e) => isPvdrvError(e, "virtio") && /not a network card/.test(e.message),
  );
});

Deno.test("errors: one base class with a kind", () => {
  const e = new PvdrvError("usage", "bad", { code: "EINVAL" });
  assert.ok(e instanceof Error);
  assert.equal(e.kind, "usage");
  assert.equal(e.code, "EINVAL");
  assert.equal(e.name, "PvdrvError");
});

Deno.test("ioctl structures: little-endian fields at the header's offsets (struct vfio_irq_set)", () => {
  const s = new IoctlStruct(24, true).u32(4, 0x24).u32(8, 2).u32(12, 0).u32(16, 1).i32(20, -1);
  assert.deepEqual(
    [...s.bytes],
    [24, 0, 0, 0, 0x24, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 255, 255, 255, 255],
  );
  assert.equal(new IoctlStruct(16).u64(8, 0x1_0000_0002n).getU64(8), 0x1_0000_0002n);
});

Deno.test("shim: a project importing mod.ts over the network fetches and builds it into a per-user cache", async () => {
  const cache = Deno.makeTempDirSync();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    try {
      return new Response(Deno.readFileSync(`${ROOT}${path.slice(1)}`));
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  try {
    const url = `http://127.0.0.1:${server.addr.port}/mod.ts`;
    const code = `const m = await import("${url}");
      const d = await import("${url.replace("mod.ts", "drivers.ts")}");
      const lib = await m.prepareNative();
      const mem = d.allocHostMemory(4096, false);
      console.log(JSON.stringify({ lib, size: mem.size }));
      mem.free();`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", "--no-lock", "--unstable-net", code],
      env: { XDG_CACHE_HOME: cache, PVDRV_LIB: "", DENO_DIR: `${cache}/deno` },
      cwd: cache,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const r = JSON.parse(text.trim().split("\n").pop()!);
    assert.equal(r.size, 4096);
    assert.ok(r.lib.startsWith(`${cache}/pvdrv/libpvdrv-`), r.lib);
    assert.ok(Deno.statSync(r.lib).isFile);
  } finally {
    await server.shutdown();
    Deno.removeSync(cache, { recursive: true });
  }
});

Deno.test("virtio-net with ownsPci closes the PCI function when the open fails, at every step", () => {
  const closes = (model: VirtioNetModel, mutate: (m: VirtioNetModel) => void = () => {}) => {
    mutate(model);
    let closed = 0;
    const pci = { ...model.pci(), close: () => void closed++ };
    assert.throws(() => VirtioNet.openPci(pci, { ownsPci: true }), (e) => isPvdrvError(e, "virtio"));
    return closed;
  };
  // Not a virtio device at all (openVirtioPci refuses), a virtio device of another type (the driver refuses it
  // untouched), and a network card whose handshake fails (FEATURES_OK refused).
  assert.equal(closes(new VirtioNetModel(), (m) => m.config.view.setUint16(0, 0x8086, true)), 1);
  assert.equal(closes(new VirtioNetModel(), (m) => m.config.view.setUint16(2, 0x1042, true)), 1);
  assert.equal(closes(new VirtioNetModel({ rejectFeatures: true })), 1);
});

Deno.test("errors: library code raises PvdrvError (or a RangeError for a bad argument), never a plain Error", () => {
  const plain: string[] = [];
  for (const dir of ["hal", "ffi", "drivers", "net", "apps"]) {
    const walk = (d: string) => {
      for (const e of Deno.readDirSync(`${ROOT}${d}`)) {
        const p = `${d}/${e.name}`;
        if (e.isDirectory) walk(p);
        else if (e.name.endsWith(".ts")) {
          Deno.readTextFileSync(`${ROOT}${p}`).split("\n").forEach((line, i) => {
            if (/\bnew Error\(/.test(line)) plain.push(`${p}:${i + 1}`);
          });
        }
      }
    };
    walk(dir);
  }
  assert.deepEqual(plain, []);
});
