import assert from "assert";
import { probe } from "../../../system/probe.ts";
import { readDevice } from "../../../ffi/sysfs.ts";
import { UioPciFunction, VfioPciFunction } from "../../../ffi/pci.ts";
import { readConfigOf, VIRTIO_PCI_CAP } from "../../../drivers/pci/config.ts";
import { IRQ_MSIX } from "../../../ffi/vfio.ts";
import { ensureBound, guestTest, LAB, OUT } from "./env.ts";

guestTest("probe lists the lab's virtio-net NICs with IOMMU groups", () => {
  const p = probe();
  const byAddr = Object.fromEntries(p.map((e) => [e.address, e]));
  assert.equal(byAddr[LAB.vfioKernelPeer.pci]?.kind, "virtio-net (modern)");
  assert.equal(byAddr[LAB.vfioWirePeer.pci]?.kind, "virtio-net (modern)");
  assert.equal(byAddr[LAB.uioKernelPeer.pci]?.kind, "virtio-net (transitional)");
  assert.equal(byAddr[LAB.kernelPeer.pci]?.driver, "virtio-pci");
  for (const e of p.filter((x) => x.kind.startsWith("virtio-net"))) {
    assert.notEqual(e.iommuGroup, null, e.address);
  }
  // Save real QEMU config spaces as fixtures for the unit tests.
  for (const [name, pci] of [["modern", LAB.vfioKernelPeer.pci], ["transitional", LAB.uioKernelPeer.pci]]) {
    Deno.writeFileSync(
      `${OUT}/virtio-net-${name}-qemu.config`,
      Deno.readFileSync(`/sys/bus/pci/devices/${pci}/config`),
    );
  }
});

guestTest(
  "VFIO: bind, open the group, map BARs, read virtio common config, map DMA, route MSI-X",
  async () => {
    ensureBound(LAB.vfioKernelPeer.pci, "vfio-pci");
    assert.equal(readDevice(LAB.vfioKernelPeer.pci).driver, "vfio-pci");
    const f = VfioPciFunction.open(LAB.vfioKernelPeer.pci);
    try {
      const cfg = readConfigOf(f);
      assert.equal(cfg.vendorId, 0x1af4);
      assert.equal(cfg.deviceId, 0x1041);
      const common = cfg.virtio.find((c) => c.type === VIRTIO_PCI_CAP.COMMON)!;
      const device = cfg.virtio.find((c) => c.type === VIRTIO_PCI_CAP.DEVICE)!;
      assert.ok(common && device, "virtio common and device capabilities");
      assert.ok(f.barSize(common.bar) >= common.offset + common.length);
      const bar = f.bar(common.bar);
      // virtio 1.2 §4.1.4.3: device_feature_select (0x00), device_feature (0x04), num_queues (0x12).
      bar.write32(common.offset + 0x00, 1);
      const hi = bar.read32(common.offset + 0x04);
      assert.ok(hi & 1, "VIRTIO_F_VERSION_1 offered");
      assert.ok(hi & 2, "VIRTIO_F_ACCESS_PLATFORM offered (iommu_platform=on)");
      bar.write32(common.offset + 0x00, 0);
      const lo = bar.read32(common.offset + 0x04);
      assert.ok(lo & (1 << 5), "VIRTIO_NET_F_MAC offered");
      const numQueues = bar.read16(common.offset + 0x12);
      assert.ok(numQueues >= 2, `num_queues ${numQueues}`);
      // The MAC in the device config (virtio 1.2 §5.1.4) is the one QEMU was given.
      const db = f.bar(device.bar);
      const mac = Array.from(
        { length: 6 },
        (_, i) => db.read8(device.offset + i).toString(16).padStart(2, "0"),
      ).join(":");
      assert.equal(mac, LAB.vfioKernelPeer.mac);

      const dma = f.dma.alloc(3 * 4096 + 5);
      assert.equal(dma.size, 4 * 4096);
      assert.ok(dma.deviceAddress >= 2 ** 32 && dma.deviceAddress % 4096 === 0);
      dma.bytes.fill(0xa5);
      const big = f.dma.alloc(2 * 1024 * 1024); // huge pages when available
      assert.ok(big.deviceAddress % (2 * 1024 * 1024) === 0);
      dma.free();
      big.free();

      const irqs = f.irqs("msix", 2);
      assert.equal(irqs.length, 2);
      const woke = irqs[1].wait();
      assert.equal(irqs[0].poll(), false);
      f.device.triggerIrq(IRQ_MSIX, 1);
      await woke;
      assert.equal(irqs[0].poll(), false, "only vector 1 fired");
      f.disableIrqs();
    } finally {
      f.close();
    }
    assert.throws(() => VfioPciFunction.open(LAB.kernelPeer.pci), /not vfio-pci/);
  },
);

guestTest("UIO: bind the transitional NIC and read its legacy registers through the I/O BAR", () => {
  ensureBound(LAB.uioKernelPeer.pci, "uio_pci_generic");
  const f = UioPciFunction.open(LAB.uioKernelPeer.pci);
  try {
    const cfg = readConfigOf(f);
    assert.equal(cfg.deviceId, 0x1000);
    assert.equal(cfg.subsystemId, 1, "legacy subsystem id 1 = network");
    assert.ok(cfg.interruptPin > 0);
    // Legacy virtio header (virtio 1.2 §4.1.4.10): host_features 0x00, queue_num 0x0c, queue_sel 0x0e,
    // device_status 0x12; the net config (MAC) follows at 0x14 without MSI-X.
    const io = f.bar(0);
    const features = io.read32(0x00);
    assert.ok(features & (1 << 5), "VIRTIO_NET_F_MAC offered");
    io.write16(0x0e, 0);
    const qsize = io.read16(0x0c);
    assert.ok(qsize >= 64 && (qsize & (qsize - 1)) === 0, `queue 0 size ${qsize}`);
    io.write8(0x12, 0); // reset
    assert.equal(io.read8(0x12), 0);
    const mac = Array.from({ length: 6 }, (_, i) => io.read8(0x14 + i).toString(16).padStart(2, "0")).join(
      ":",
    );
    assert.equal(mac, LAB.uioKernelPeer.mac);
    assert.throws(() => io.read32(f.barSize(0)), /outside the region/);
  } finally {
    f.close();
  }
});
