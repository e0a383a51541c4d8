/**
 * The legacy virtio-PCI transport (virtio 1.2 §4.1.4.10) register by register against a fake I/O BAR, and the
 * capability checks the modern transport relies on.
 */
import assert from "assert";
import { bit, F, featureNames, VIRTIO_ID } from "../../drivers/virtio/features.ts";
import { NO_VECTOR, VirtioError } from "../../drivers/virtio/transport.ts";
import { checkCapInBar, parseConfig, PciConfigError } from "../../drivers/pci/config.ts";
import { ModelRegion } from "../../hal/mmio.ts";
import type { PciFunction } from "../../hal/pci.ts";
import { ModelDmaAllocator } from "../../hal/dma.ts";
import { LegacyTransport } from "../../drivers/virtio/pci.ts";

/** A legacy device's I/O BAR: registers as the spec lays them out, with a fixed queue size of 256. */
function legacyDevice(opts: { bar0Io?: boolean; size?: number } = {}) {
  const writes: [number, number, number][] = [];
  let status = 0, sel = 0;
  const pfn = new Map<number, number>(), msix = new Map<number, number>();
  const io = new ModelRegion("legacy io", opts.size ?? 0x40, {
    read: (off, w) => {
      if (off === 0x00 && w === 4) return 0x8000_0021; // host features
      if (off === 0x0c && w === 2) return sel < 3 ? 256 : 0; // queue_num: fixed sizes
      if (off === 0x12 && w === 1) return status;
      if (off === 0x13 && w === 1) return 3; // ISR
      if (off === 0x16 && w === 2) return msix.get(sel) ?? NO_VECTOR;
      return undefined;
    },
    write: (off, w, v) => {
      writes.push([off, w, v]);
      if (off === 0x12) status = v;
      if (off === 0x0e) sel = v;
      if (off === 0x08) pfn.set(sel, v);
      if (off === 0x16) msix.set(sel, v === 7 ? NO_VECTOR : v); // vector 7 is refused
    },
  });
  const cfg = new Uint8Array(64);
  const dv = new DataView(cfg.buffer);
  dv.setUint16(0, 0x1af4, true);
  dv.setUint16(2, 0x1000, true);
  dv.setUint32(0x10, opts.bar0Io ?? true ? 0xc001 : 0xfe000000, true);
  const config = new ModelRegion("legacy config", 64);
  new Uint8Array(config.view.buffer).set(cfg);
  const pci = {
    address: "fake:00.0",
    config,
    bar: (i: number) => {
      if (i !== 0) throw new Error("no BAR");
      return io;
    },
    dma: new ModelDmaAllocator(),
  } as unknown as PciFunction;
  return { pci, io, writes, pfn, msix, status: () => status };
}

Deno.test("legacy transport: features, status, queues by page frame, notify, ISR, config offset with MSI-X", () => {
  const d = legacyDevice();
  const t = new LegacyTransport(d.pci);
  assert.equal(t.kind, "legacy");
  assert.equal(t.numQueues(), 0, "legacy devices do not report a queue count");
  assert.equal(t.deviceFeatures(), 0x8000_0021n);
  t.setDriverFeatures(0x21n);
  assert.deepEqual(d.writes.at(-1), [0x04, 4, 0x21]);
  assert.throws(() => t.setDriverFeatures(1n << 32n), /32 feature bits/);
  t.setStatus(7);
  assert.equal(t.status(), 7);
  t.reset();
  assert.equal(d.status(), 0);
  assert.equal(t.queueMaxSize(1), 256);
  assert.equal(t.queueMaxSize(5), 0);
  t.setupQueue(1, 256, { desc: 0x12345000, driver: 0, device: 0 }, NO_VECTOR);
  assert.equal(d.pfn.get(1), 0x12345, "queue address as a 4 KiB page frame number");
  assert.throws(
    () => t.setupQueue(1, 128, { desc: 0x1000, driver: 0, device: 0 }, NO_VECTOR),
    /fixed size 256/,
  );
  assert.throws(() => t.setupQueue(1, 256, { desc: 0x1800, driver: 0, device: 0 }, NO_VECTOR), /4 KiB page/);
  assert.throws(
    () => t.setupQueue(1, 256, { desc: 2 ** 44, driver: 0, device: 0 }, NO_VECTOR),
    /below 2\^44/,
  );
  d.writes.length = 0;
  t.notifier(2)();
  assert.deepEqual(d.writes, [[0x10, 2, 2]]);
  assert.equal(t.readIsr(), 3);
  assert.equal(t.configGeneration(), 0);
  assert.equal(t.setConfigVector(0), NO_VECTOR, "no MSI-X: no vector");
  // Device config follows the header at 0x14, or at 0x18 when MSI-X is on.
  d.io.view.setUint8(0x14, 0xaa);
  d.io.view.setUint8(0x18, 0xbb);
  assert.equal(t.deviceConfig.read8(0), 0xaa);
  const m = new LegacyTransport(d.pci, true);
  assert.equal(m.deviceConfig.read8(0), 0xbb);
  m.setupQueue(0, 256, { desc: 0x2000, driver: 0, device: 0 }, 3);
  assert.equal(d.msix.get(0), 3);
  assert.throws(
    () => m.setupQueue(0, 256, { desc: 0x2000, driver: 0, device: 0 }, 7),
    /refused MSI-X vector 7/,
  );
});

Deno.test("legacy transport: BAR0 must be an I/O BAR large enough for the header", () => {
  assert.throws(() => new LegacyTransport(legacyDevice({ bar0Io: false }).pci), VirtioError);
  assert.throws(() => new LegacyTransport(legacyDevice({ size: 0x14 }).pci), /too small/);
  assert.throws(() => new LegacyTransport(legacyDevice({ size: 0x18 }).pci, true), /too small/);
});

Deno.test("config: capability pointers are masked to dword alignment; capabilities must fit their BAR", () => {
  const cfg = new Uint8Array(256);
  const dv = new DataView(cfg.buffer);
  dv.setUint16(0, 0x1af4, true);
  dv.setUint16(2, 0x1041, true);
  dv.setUint16(6, 0x10, true);
  cfg[0x34] = 0x43; // low bits are reserved (PCI 3.0 §6.7): the list starts at 0x40
  cfg[0x40] = 0x05; // MSI
  cfg[0x41] = 0x52; // next: 0x50
  cfg[0x50] = 0x01; // power management
  cfg[0x51] = 0x00;
  const c = parseConfig(cfg);
  assert.deepEqual(c.capabilities.map((x) => x.offset), [0x40, 0x50]);
  const cap = { type: 1, bar: 0, offset: 0x1000, length: 0x38 } as Parameters<typeof checkCapInBar>[0];
  checkCapInBar(cap, 0x1038);
  assert.throws(() => checkCapInBar(cap, 0x1037), PciConfigError, "the length counts, not only the offset");
  assert.throws(() => checkCapInBar({ ...cap, bar: 6 }, 0x10000), /names BAR 6/);
});

Deno.test("config: class names — Ethernet is network class 02, subclass 00 only", async () => {
  const { className } = await import("../../drivers/pci/config.ts");
  assert.equal(className(0x020000), "ethernet");
  assert.equal(className(0x028000), "network");
  assert.equal(className(0x010000), "storage");
});

Deno.test("featureNames decodes a device's own bits by its type; the reserved bits the same for all", () => {
  const f = bit(0) | bit(5) | bit(9) | bit(20) | F.VERSION_1;
  assert.deepEqual(featureNames(f, VIRTIO_ID.NET), ["CSUM", "MAC", "bit 9", "bit 20", "VERSION_1"]);
  assert.deepEqual(featureNames(f, VIRTIO_ID.BLOCK), ["bit 0", "RO", "FLUSH", "bit 20", "VERSION_1"]);
  assert.deepEqual(featureNames(f, 99), ["bit 0", "bit 5", "bit 9", "bit 20", "VERSION_1"]);
});
