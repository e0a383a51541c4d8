/**
 * System management (system/): the driver table by class, probe, bind, and what the machine uses (network and disks),
 * all on fixture trees: never on this machine's devices.
 */
import assert from "assert";
import { bindDevice, BindRefused } from "../../system/bind.ts";
import { makeSysfs } from "./sysfs_fixture.ts";
import { listDevices, readDevice } from "../../ffi/sysfs.ts";
import { formatTable, probe, type ProbeEntry } from "../../system/probe.ts";
import { deviceKind } from "../../system/ids.ts";
import { protectedReason, readMachineNet } from "../../system/machine_net.ts";
import { DEVICE_CLASSES, openNic } from "../../system/table.ts";
import { readMachineDisks } from "../../system/machine_disks.ts";

const NET = { vendor: 0x1af4, device: 0x1041, class: 0x020000 };

const fixture = (name: string) => Deno.readFileSync(new URL(`../fixtures/${name}`, import.meta.url));

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

Deno.test("sysfs: enumeration of a fixture tree and the probe's verdicts", () => {
  const cfg = fixture("virtio-net-modern-host.config").slice();
  cfg[0x3d] = 1; // INTx pin
  const root = makeSysfs([
    {
      address: "0000:00:03.0",
      ...NET,
      driver: "virtio-pci",
      group: 3,
      netif: { name: "eth0", up: true },
      config: cfg,
    },
    { address: "0000:00:04.0", ...NET, driver: "vfio-pci", group: 4, config: cfg },
    {
      address: "0000:00:05.0",
      vendor: 0x1af4,
      device: 0x1000,
      class: 0x020000,
      subsystemDevice: 1,
      driver: "virtio-pci",
      config: cfg,
    },
    { address: "0000:00:06.0", vendor: 0x5853, device: 0x0001, class: 0xff8000 },
    { address: "0000:00:07.0", vendor: 0x8086, device: 0x10d3, class: 0x020000 },
  ], ["vfio-pci"]);
  try {
    const all = listDevices(root);
    assert.deepEqual(all.map((d) => d.address), [
      "0000:00:03.0",
      "0000:00:04.0",
      "0000:00:05.0",
      "0000:00:06.0",
      "0000:00:07.0",
    ]);
    const d3 = readDevice("00:03.0", root);
    assert.equal(d3.driver, "virtio-pci");
    assert.equal(d3.iommuGroup, 3);
    assert.deepEqual(d3.netInterfaces, ["eth0"]);
    const p = probe(root);
    const by = Object.fromEntries(p.map((e) => [e.address, e]));
    assert.equal(by["0000:00:03.0"].kind, "virtio-net (modern)");
    assert.equal(by["0000:00:03.0"].inUse, true);
    // Never suggest --force: the device is marked active, with the reason.
    assert.equal(by["0000:00:03.0"].bindCommand, "");
    assert.equal(by["0000:00:03.0"].active, "eth0 is up");
    assert.doesNotMatch(formatTable(p), /--force/);
    assert.match(formatTable(p), /- \(active: eth0 is up\)/);
    assert.equal(by["0000:00:04.0"].vfio, "bound");
    assert.equal(by["0000:00:04.0"].bindCommand, "");
    assert.equal(by["0000:00:05.0"].kind, "virtio-net (transitional)");
    assert.equal(by["0000:00:05.0"].vfio, "no (no IOMMU group)");
    assert.equal(by["0000:00:05.0"].uio, "yes (load uio_pci_generic)");
    assert.match(by["0000:00:05.0"].bindCommand, /bind 0000:00:05.0 uio$/);
    assert.equal(by["0000:00:06.0"].kind, "xen-platform");
    assert.equal(by["0000:00:07.0"].kind, "-");
    assert.match(formatTable(p), /0000:00:05\.0\s+1af4:1000\s+virtio-net \(transitional\)/);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("probe: a NIC with the default route or an address is active and never offered", () => {
  const root = makeSysfs([
    { address: "0000:00:03.0", ...NET, driver: "virtio-pci", group: 3, netif: { name: "eth0", up: false } },
    { address: "0000:00:04.0", ...NET, driver: "virtio-pci", group: 4, netif: { name: "eth1", up: false } },
    { address: "0000:00:05.0", ...NET, driver: "virtio-pci", group: 5, netif: { name: "eth2", up: false } },
  ], ["vfio-pci"]);
  try {
    const net = { defaultRoute: new Set(["eth0"]), addresses: new Map([["eth1", ["10.0.0.2/24"]]]) };
    const by = Object.fromEntries(probe(root, { net }).map((e) => [e.address, e]));
    assert.match(by["0000:00:03.0"].active, /eth0 carries the default route: never bound/);
    assert.match(by["0000:00:04.0"].active, /eth1 has address 10\.0\.0\.2\/24/);
    assert.equal(by["0000:00:03.0"].bindCommand, "");
    assert.equal(by["0000:00:04.0"].bindCommand, "");
    assert.equal(by["0000:00:05.0"].bindCommand, "deno task bind 0000:00:05.0 vfio");
    assert.equal(by["0000:00:05.0"].active, "");
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("host net: default routes (IPv4 and IPv6) and addresses, link-local left out", () => {
  const proc = Deno.makeTempDirSync();
  try {
    Deno.mkdirSync(`${proc}/net`);
    Deno.writeTextFileSync(
      `${proc}/net/route`,
      "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n" +
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" +
        "eth1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    );
    Deno.writeTextFileSync(
      `${proc}/net/ipv6_route`,
      "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 " +
        "00000400 00000002 00000000 00000003     eth3\n" +
        "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 " +
        "00000100 00000002 00000000 00000001     eth4\n",
    );
    const ifs = [
      { family: "IPv4", name: "eth2", address: "192.0.2.9", cidr: "192.0.2.9/24" },
      { family: "IPv6", name: "eth4", address: "fe80::1", cidr: "fe80::1/64" },
    ] as Deno.NetworkInterfaceInfo[];
    const net = readMachineNet(proc, () => ifs);
    assert.deepEqual([...net.defaultRoute].sort(), ["eth0", "eth3"]);
    assert.equal(protectedReason("eth0", net), "eth0 carries the default route");
    assert.equal(protectedReason("eth1", net), null, "a subnet route alone is not the default route");
    assert.equal(protectedReason("eth2", net), "eth2 has address 192.0.2.9/24");
    assert.equal(protectedReason("eth4", net), null, "IPv6 link-local does not count");
  } finally {
    Deno.removeSync(proc, { recursive: true });
  }
});

Deno.test("bind: only devices pvdrv drives, never the machine's own network or root disk, even with --force", () => {
  const root = makeSysfs([
    {
      address: "0000:00:02.0",
      vendor: 0x1af4,
      device: 0x1042,
      class: 0x010000,
      driver: "virtio-pci",
      group: 2,
      disk: { name: "vda", dev: "254:0" },
    },
    {
      address: "0000:00:03.0",
      vendor: 0x1af4,
      device: 0x1005,
      class: 0x00ff00,
      subsystemDevice: 4,
      group: 3,
    },
    { address: "0000:00:04.0", ...NET, driver: "virtio-pci", group: 4, netif: { name: "eth0", up: true } },
    { address: "0000:00:05.0", ...NET, driver: "virtio-pci", group: 5, netif: { name: "eth1", up: false } },
    { address: "0000:00:06.0", ...NET, driver: "virtio-pci", group: 6, netif: { name: "eth2", up: true } },
    { address: "0000:00:07.0", vendor: 0x8086, device: 0x10d3, class: 0x020000, driver: "e1000e", group: 7 },
  ], ["vfio-pci"]);
  const override = (a: string) => Deno.readTextFileSync(`${root}/bus/pci/devices/${a}/driver_override`);
  const unbind = () => Deno.readTextFileSync(`${root}/bus/pci/drivers/virtio-pci/unbind`);
  try {
    const machineNet = { defaultRoute: new Set(["eth0"]), addresses: new Map([["eth1", ["10.0.0.2/24"]]]) };
    for (const force of [false, true]) {
      const disks = { mounts: [{ dev: "254:0", mountPoint: "/" }], swaps: [] };
      const o = { root, force, machine: { net: machineNet, disks } };
      assert.throws(
        () => bindDevice("0000:00:02.0", "vfio-pci", o),
        /vda holds the root filesystem.*never takes such a device, --force or not/,
      );
      assert.throws(() => bindDevice("0000:00:03.0", "uio_pci_generic", o), /virtio-rng/);
      assert.throws(() => bindDevice("0000:00:07.0", "vfio-pci", o), /not a device pvdrv drives/);
      assert.throws(() => bindDevice("0000:00:04.0", "vfio-pci", o), /eth0 carries the default route/);
      assert.throws(() => bindDevice("0000:00:05.0", "vfio-pci", o), /eth1 has address 10\.0\.0\.2/);
    }
    for (const a of ["0000:00:02.0", "0000:00:03.0", "0000:00:04.0", "0000:00:05.0", "0000:00:07.0"]) {
      assert.equal(override(a), "(null)\n", `${a} untouched`);
    }
    assert.equal(unbind(), "");
    // Up but without an address or route: only with --force.
    assert.throws(
      () => bindDevice("0000:00:06.0", "vfio-pci", { root, machine: { net: machineNet } }),
      /eth2 is up.*--force/,
    );
    assert.throws(
      () => bindDevice("0000:00:06.0", "vfio-pci", { root, machine: { net: machineNet }, force: true }),
      /did not bind/,
    );
    assert.equal(override("0000:00:06.0"), "vfio-pci");
    // Giving back a device that is already on its kernel driver changes nothing.
    Deno.writeTextFileSync(`${root}/bus/pci/drivers/virtio-pci/unbind`, "");
    Deno.writeTextFileSync(`${root}/bus/pci/drivers_probe`, "");
    assert.equal(bindDevice("0000:00:05.0", "kernel", { root }), "virtio-pci");
    assert.equal(unbind(), "");
    assert.equal(Deno.readTextFileSync(`${root}/bus/pci/drivers_probe`), "");
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("bind: refuses a device whose interface is up; binds through driver_override otherwise", () => {
  const root = makeSysfs([
    { address: "0000:00:03.0", ...NET, driver: "virtio-pci", group: 3, netif: { name: "eth0", up: true } },
    { address: "0000:00:04.0", ...NET, driver: "virtio-pci", group: 4, netif: { name: "eth1", up: false } },
    { address: "0000:00:05.0", ...NET, driver: "virtio-pci" },
  ], ["vfio-pci"]);
  try {
    assert.throws(() => bindDevice("0000:00:03.0", "vfio-pci", { root }), BindRefused);
    assert.equal(Deno.readTextFileSync(`${root}/bus/pci/devices/0000:00:03.0/driver_override`), "(null)\n");
    assert.throws(() => bindDevice("0000:00:05.0", "vfio-pci", { root }), /no IOMMU group/);
    assert.throws(() => bindDevice("0000:00:04.0", "uio_pci_generic", { root }), /not loaded/);
    // The fake tree cannot rebind, so the final check reports it: but the writes happened in order.
    assert.throws(() => bindDevice("0000:00:04.0", "vfio-pci", { root }), /did not bind to vfio-pci/);
    const dir = `${root}/bus/pci/devices/0000:00:04.0`;
    assert.equal(Deno.readTextFileSync(`${dir}/driver_override`), "vfio-pci");
    assert.equal(Deno.readTextFileSync(`${root}/bus/pci/drivers/virtio-pci/unbind`), "0000:00:04.0");
    assert.equal(Deno.readTextFileSync(`${root}/bus/pci/drivers_probe`), "0000:00:04.0");
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("probe: device kinds", () => {
  assert.deepEqual(deviceKind({ vendorId: 0x1af4, deviceId: 0x1041, subsystemId: 1 }), {
    kind: "virtio-net (modern)",
    supported: true,
  });
  assert.deepEqual(deviceKind({ vendorId: 0x1af4, deviceId: 0x1000, subsystemId: 1 }), {
    kind: "virtio-net (transitional)",
    supported: true,
  });
  // A transitional id names its type (virtio 1.2 §4.1.2.3), whatever the subsystem id says.
  assert.deepEqual(deviceKind({ vendorId: 0x1af4, deviceId: 0x1000, subsystemId: 0 }), {
    kind: "virtio-net (transitional)",
    supported: true,
  });
  assert.equal(
    deviceKind({ vendorId: 0x1af4, deviceId: 0x1001, subsystemId: 1 }).kind,
    "virtio-block (transitional)",
  );
  assert.equal(deviceKind({ vendorId: 0x1af4, deviceId: 0x1042, subsystemId: 2 }).supported, true);
  assert.equal(
    deviceKind({ vendorId: 0x1af4, deviceId: 0x1044, subsystemId: 0 }).supported,
    false,
    "virtio-rng",
  );
  assert.equal(
    deviceKind({ vendorId: 0x1af4, deviceId: 0x103f, subsystemId: 1 }).kind,
    "virtio-net (transitional)",
  );
  assert.equal(
    deviceKind({ vendorId: 0x1af4, deviceId: 0x1040 + 2, subsystemId: 0 }).kind,
    "virtio-block (modern)",
  );
  assert.equal(deviceKind({ vendorId: 0x1af4, deviceId: 0x107f, subsystemId: 0 }).kind, "virtio-63 (modern)");
  assert.equal(deviceKind({ vendorId: 0x1af4, deviceId: 0x1080, subsystemId: 0 }).kind, "virtio (unknown)");
});

Deno.test("probe: Xen hypervisor, guest type and xen-bus devices with the kernel driver holding each", async () => {
  const { probeXen, formatXen } = await import("../../system/xen_probe.ts");
  const root = Deno.makeTempDirSync();
  const dev = Deno.makeTempDirSync();
  try {
    Deno.mkdirSync(`${root}/hypervisor`, { recursive: true });
    Deno.writeTextFileSync(`${root}/hypervisor/type`, "xen\n");
    Deno.writeTextFileSync(`${root}/hypervisor/guest_type`, "PV\n");
    for (
      const [name, node, drv] of [["vif-0", "device/vif/0", null], ["vif-1", "device/vif/1", "vif"]] as const
    ) {
      const d = `${root}/bus/xen/devices/${name}`;
      Deno.mkdirSync(d, { recursive: true });
      Deno.writeTextFileSync(`${d}/nodename`, node + "\n");
      Deno.writeTextFileSync(`${d}/devtype`, "vif\n");
      if (drv) {
        Deno.mkdirSync(`${root}/bus/xen/drivers/${drv}`, { recursive: true });
        Deno.symlinkSync(`${root}/bus/xen/drivers/${drv}`, `${d}/driver`);
      }
    }
    Deno.mkdirSync(`${dev}/xen`);
    for (const n of ["evtchn", "gntalloc", "xenbus"]) Deno.writeTextFileSync(`${dev}/xen/${n}`, "");
    const x = probeXen(root, dev);
    assert.equal(x.hypervisor, "xen");
    assert.equal(x.guestType, "PV");
    assert.deepEqual(x.devices.map((d) => [d.name, d.nodename, d.driver]), [["vif-0", "device/vif/0", null], [
      "vif-1",
      "device/vif/1",
      "vif",
    ]]);
    assert.deepEqual(x.devNodes, ["evtchn", "gntalloc", "xenbus"]);
    const text = formatXen(x, { "device/vif/0": "/local/domain/0/backend/vif/1/0 (state 2)" });
    assert.match(text, /vif-0 .*state 2\).*free: deno task send vif\/0/);
    assert.match(text, /vif-1 .*held by kernel driver vif/);
    assert.equal(probeXen(`${root}/nowhere`).hypervisor, null);
  } finally {
    Deno.removeSync(root, { recursive: true });
    Deno.removeSync(dev, { recursive: true });
  }
});

Deno.test("probe: the table pads every column but the last to its widest cell", () => {
  const e = (address: string, kind: string, bind: string): ProbeEntry => ({
    address,
    id: "1af4:1041",
    class: "ethernet",
    kind,
    supported: true,
    driver: null,
    iommuGroup: null,
    interfaces: [],
    disks: [],
    inUse: false,
    active: "",
    vfio: "yes",
    uio: "no",
    bindCommand: bind,
  });
  const lines = formatTable([e("0000:00:04.0", "virtio-net (modern)", "x"), e("0000:00:05.0", "-", "")])
    .split("\n");
  assert.equal(lines.length, 3);
  // Columns line up: each starts where the header's does; the last cell is not padded (no trailing spaces).
  const at = lines[0].indexOf("KIND");
  for (const l of lines.slice(1)) {
    assert.equal(l.indexOf(l.includes("virtio") ? "virtio" : "-  ", at - 1), at);
  }
  assert.equal(lines[0].indexOf("DRIVER"), at + "virtio-net (modern)".length + 2);
  for (const l of lines) assert.equal(l, l.trimEnd(), `no padding after the last column: '${l}'`);
  assert.ok(lines[1].endsWith("  x"));
});

Deno.test("openNic: the driver table picks the driver; a device no driver serves, or not yet bound, is refused", async () => {
  const root = makeSysfs([
    { address: "0000:00:04.0", ...NET, driver: "virtio-pci" },
    { address: "0000:00:05.0", vendor: 0x8086, device: 0x10d3, class: 0x020000 },
  ]);
  try {
    await assert.rejects(
      () => openNic("0000:00:04.0", { sysfs: root }),
      /bound to virtio-pci: bind it first/,
    );
    await assert.rejects(() => openNic("0000:00:05.0", { sysfs: root }), /8086:10d3\) has no pvdrv driver/);
    await assert.rejects(() => openNic("blk/0"), /no pvdrv driver serves XenBus blk devices/);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("disks the machine uses (root, mounted, swap, held) are active and never bound; a free one is not", () => {
  const BLK = { vendor: 0x1af4, device: 0x1042, class: 0x010000, subsystemDevice: 2 };
  const root = makeSysfs([
    { address: "0000:00:02.0", ...BLK, driver: "virtio-pci", group: 2, disk: { name: "vda", dev: "254:0" } },
    {
      address: "0000:00:03.0",
      ...BLK,
      driver: "virtio-pci",
      group: 3,
      disk: {
        name: "vdb",
        dev: "254:16",
        parts: [{ name: "vdb1", dev: "254:17" }, { name: "vdb2", dev: "254:18" }],
      },
    },
    {
      address: "0000:00:04.0",
      ...BLK,
      driver: "virtio-pci",
      group: 4,
      disk: { name: "vdc", dev: "254:32", parts: [{ name: "vdc1", dev: "254:33" }] },
    },
    {
      address: "0000:00:05.0",
      ...BLK,
      driver: "virtio-pci",
      group: 5,
      disk: { name: "vdd", dev: "254:48", parts: [{ name: "vdd1", dev: "254:49", holders: ["dm-0"] }] },
    },
    { address: "0000:00:06.0", ...BLK, driver: "virtio-pci", group: 6, disk: { name: "vde", dev: "254:64" } },
  ], ["vfio-pci"]);
  try {
    const proc = Deno.makeTempDirSync();
    Deno.mkdirSync(`${proc}/self`);
    Deno.writeTextFileSync(
      `${proc}/self/mountinfo`,
      "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
        "30 22 254:18 / /srv/my\\040data rw - ext4 /dev/vdb2 rw\n" +
        "31 22 0:5 / /dev rw - devtmpfs devtmpfs rw\n",
    );
    Deno.writeTextFileSync(
      `${proc}/swaps`,
      "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/vdc1  partition\t1048572\t\t0\t\t-2\n",
    );
    const disks = readMachineDisks(proc);
    Deno.removeSync(proc, { recursive: true });
    const by = Object.fromEntries(probe(root, { disks }).map((e) => [e.address, e]));
    assert.match(by["0000:00:02.0"].active, /^vda holds the root filesystem: never bound$/);
    assert.match(by["0000:00:03.0"].active, /^vdb2 is mounted on \/srv\/my data/);
    assert.match(by["0000:00:04.0"].active, /^vdc1 is used as swap/);
    assert.match(by["0000:00:05.0"].active, /^vdd1 is held by dm-0/);
    assert.equal(by["0000:00:06.0"].active, "", "a disk nothing uses is not active");
    assert.deepEqual(by["0000:00:03.0"].disks, ["vdb"]);
    assert.match(formatTable(Object.values(by)), /vdb .*active: vdb2 is mounted/);
    // The disk class answers the same for bind's table lookup, --force or not.
    const m = { net: { defaultRoute: new Set<string>(), addresses: new Map() }, disks };
    const info = (a: string) => readDevice(a, root);
    assert.equal(DEVICE_CLASSES.disk.inUse(info("0000:00:02.0"), root, m)?.level, "protected");
    assert.equal(DEVICE_CLASSES.disk.inUse(info("0000:00:06.0"), root, m), null);
    assert.equal(
      DEVICE_CLASSES.nic.inUse(info("0000:00:02.0"), root, m),
      null,
      "a disk is no NIC's business",
    );
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
