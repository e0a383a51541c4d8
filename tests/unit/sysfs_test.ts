/** Reading PCI devices from sysfs (ffi/sysfs.ts) and opening them with VFIO or UIO (ffi/pci.ts), on fixture trees. */
import assert from "assert";
import { interfaceInUse, parsePciAddress, parseResources, readDevice } from "../../ffi/sysfs.ts";
import { makeSysfs } from "./sysfs_fixture.ts";
import { openPci } from "../../ffi/pci.ts";

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

Deno.test("sysfs: addresses, resources", () => {
  assert.equal(parsePciAddress("00:03.0"), "0000:00:03.0");
  assert.throws(() => parsePciAddress("0000:00:03.9"), /not a PCI address/);
  assert.throws(() => parsePciAddress("../../etc"), /not a PCI address/);
  const bars = parseResources(
    "0x000000000000c000 0x000000000000c03f 0x0000000000040101\n" +
      "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" +
      "0x00000000fe000000 0x00000000fe003fff 0x000000000014220c\n",
  );
  assert.equal(bars.length, 2);
  assert.deepEqual([bars[0].index, bars[0].io, bars[0].size], [0, true, 64]);
  assert.deepEqual([bars[1].index, bars[1].io, bars[1].is64, bars[1].prefetchable, bars[1].size], [
    2,
    false,
    true,
    true,
    0x4000,
  ]);
});

const NET = { vendor: 0x1af4, device: 0x1041, class: 0x020000 };

Deno.test("openPci: the driver the device is bound to picks VFIO or UIO; anything else is told to bind first", () => {
  const root = makeSysfs([
    { address: "0000:00:04.0", ...NET, driver: "virtio-pci" },
    { address: "0000:00:05.0", ...NET, driver: "vfio-pci" }, // no IOMMU group: VFIO refuses before any open
    { address: "0000:00:06.0", ...NET, driver: "uio_pci_generic" }, // no uio node: UIO refuses before any open
  ], ["vfio-pci", "uio_pci_generic"]);
  try {
    assert.throws(() => openPci("0000:00:04.0", root), /bound to virtio-pci: bind it first/);
    assert.throws(() => openPci("0000:00:05.0", root), /has no IOMMU group/);
    assert.throws(() => openPci("0000:00:06.0", root), /not uio_pci_generic|no uio/);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("sysfs: driver_override reads as null when unset ('(null)', empty or absent), else the driver", () => {
  const root = makeSysfs([
    { address: "0000:00:04.0", ...NET },
    { address: "0000:00:05.0", ...NET },
    { address: "0000:00:06.0", ...NET },
    { address: "0000:00:07.0", ...NET },
  ]);
  try {
    const dev = (a: string) => `${root}/bus/pci/devices/${a}/driver_override`;
    Deno.writeTextFileSync(dev("0000:00:05.0"), "vfio-pci\n");
    Deno.writeTextFileSync(dev("0000:00:06.0"), "\n");
    Deno.removeSync(dev("0000:00:07.0"));
    assert.deepEqual(
      ["04", "05", "06", "07"].map((d) => readDevice(`0000:00:${d}.0`, root).driverOverride),
      [null, "vfio-pci", null, null],
    );
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
