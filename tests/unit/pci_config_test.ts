/** PCI config space parsing (drivers/pci/config.ts) on real captures and hostile capability lists. */
import assert from "assert";
import {
  CAP_MSIX,
  CAP_VENDOR,
  parseConfig,
  PciConfigError,
  VIRTIO_PCI_CAP,
} from "../../drivers/pci/config.ts";

const fixture = (name: string) => Deno.readFileSync(new URL(`../fixtures/${name}`, import.meta.url));

Deno.test("config: modern virtio-net (this host's own NIC) — header, virtio caps, MSI-X", () => {
  const c = parseConfig(fixture("virtio-net-modern-host.config"));
  assert.equal(c.vendorId, 0x1af4);
  assert.equal(c.deviceId, 0x1041);
  assert.equal(c.classCode, 0x020000);
  assert.deepEqual(c.capabilities.map((x) => x.id), [
    CAP_VENDOR,
    CAP_VENDOR,
    CAP_VENDOR,
    CAP_VENDOR,
    CAP_VENDOR,
    CAP_MSIX,
  ]);
  const types = c.virtio.map((v) => v.type);
  assert.deepEqual(types, [
    VIRTIO_PCI_CAP.COMMON,
    VIRTIO_PCI_CAP.ISR,
    VIRTIO_PCI_CAP.DEVICE,
    VIRTIO_PCI_CAP.NOTIFY,
    VIRTIO_PCI_CAP.PCI_CFG,
  ]);
  const common = c.virtio.find((v) => v.type === VIRTIO_PCI_CAP.COMMON)!;
  assert.deepEqual([common.bar, common.offset, common.length], [0, 0, 0x38]);
  const isr = c.virtio.find((v) => v.type === VIRTIO_PCI_CAP.ISR)!;
  assert.deepEqual([isr.bar, isr.offset, isr.length], [0, 0x2000, 1]);
  const notify = c.virtio.find((v) => v.type === VIRTIO_PCI_CAP.NOTIFY)!;
  assert.equal(notify.notifyOffMultiplier, 4);
  assert.equal(c.msix?.tableSize, 3);
  assert.equal(c.msix?.tableBar, 0);
  assert.equal(c.msix?.tableOffset, 0x8000);
  assert.equal(c.msix?.pbaOffset, 0x48000);
});

Deno.test("config: hostile capability lists are rejected, not followed", () => {
  const base = fixture("virtio-net-modern-host.config").slice();
  const loop = base.slice();
  loop[0x41] = 0x40; // first cap points at itself
  assert.throws(() => parseConfig(loop), PciConfigError);
  const intoHeader = base.slice();
  intoHeader[0x34] = 0x10;
  assert.throws(() => parseConfig(intoHeader), /out of range/);
  const truncNotify = base.slice(0, 0x72);
  truncNotify[0x06] |= 0x10;
  assert.throws(() => parseConfig(truncNotify), PciConfigError);
  assert.throws(() => parseConfig(new Uint8Array(10)), /too short/);
  const none = new Uint8Array(64).fill(0xff);
  assert.throws(() => parseConfig(none), /no device/);
});

Deno.test("config: QEMU's transitional virtio-net (captured in the lab) — legacy I/O BAR plus modern caps", () => {
  const c = parseConfig(fixture("virtio-net-transitional-qemu.config"));
  assert.equal(c.deviceId, 0x1000);
  assert.equal(c.subsystemId, 1);
  assert.equal(c.interruptPin, 1);
  assert.equal(c.bars[0] & 1, 1, "BAR0 is an I/O BAR");
  assert.ok(c.virtio.length >= 4);
  assert.ok(
    c.virtio.filter((v) => v.type !== VIRTIO_PCI_CAP.PCI_CFG).every((v) => v.bar === 4),
    "modern structures live in BAR4",
  );
  assert.ok(c.msix && c.msix.tableSize >= 3);
});

Deno.test("config: QEMU's modern virtio-net (captured in the lab)", () => {
  const c = parseConfig(fixture("virtio-net-modern-qemu.config"));
  assert.equal(c.deviceId, 0x1041);
  assert.equal(c.bars[0] & 1, 0);
  const notify = c.virtio.find((v) => v.type === VIRTIO_PCI_CAP.NOTIFY)!;
  assert.equal(notify.notifyOffMultiplier, 4);
});
