/** Builds a fake sysfs tree for enumeration and bind tests. */

/** One device of the fixture tree. */
export interface FakeDevice {
  address: string;
  vendor: number;
  device: number;
  class: number;
  subsystemDevice?: number;
  driver?: string;
  group?: number;
  netif?: { name: string; up: boolean };
  /** A disk the kernel made for it: its device number, partitions, and what holds it. */
  disk?: {
    name: string;
    dev: string;
    holders?: string[];
    parts?: { name: string; dev: string; holders?: string[] }[];
  };
  config?: Uint8Array;
  resource?: string;
}

const hex = (n: number, w: number) => "0x" + n.toString(16).padStart(w, "0");

/** Create the tree in a temp dir; returns its root. */
export function makeSysfs(devices: FakeDevice[], drivers: string[] = []): string {
  const root = Deno.makeTempDirSync({ prefix: "pvdrv-sysfs-" });
  const bus = `${root}/bus/pci`;
  Deno.mkdirSync(`${bus}/devices`, { recursive: true });
  Deno.mkdirSync(`${root}/devices/pci0000:00`, { recursive: true });
  Deno.writeTextFileSync(`${bus}/drivers_probe`, "");
  for (const drv of drivers) Deno.mkdirSync(`${bus}/drivers/${drv}`, { recursive: true });
  for (const d of devices) {
    const dir = `${root}/devices/pci0000:00/${d.address}`;
    Deno.mkdirSync(dir, { recursive: true });
    Deno.symlinkSync(dir, `${bus}/devices/${d.address}`);
    Deno.writeTextFileSync(`${dir}/vendor`, hex(d.vendor, 4) + "\n");
    Deno.writeTextFileSync(`${dir}/device`, hex(d.device, 4) + "\n");
    Deno.writeTextFileSync(`${dir}/class`, hex(d.class, 6) + "\n");
    Deno.writeTextFileSync(`${dir}/subsystem_vendor`, "0x1af4\n");
    Deno.writeTextFileSync(`${dir}/subsystem_device`, hex(d.subsystemDevice ?? 1, 4) + "\n");
    Deno.writeTextFileSync(`${dir}/revision`, "0x01\n");
    Deno.writeTextFileSync(`${dir}/driver_override`, "(null)\n");
    Deno.writeTextFileSync(
      `${dir}/resource`,
      d.resource ?? "0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
    );
    Deno.writeFileSync(`${dir}/config`, d.config ?? new Uint8Array(64));
    if (d.driver) {
      Deno.mkdirSync(`${bus}/drivers/${d.driver}`, { recursive: true });
      Deno.writeTextFileSync(`${bus}/drivers/${d.driver}/unbind`, "");
      Deno.symlinkSync(`${bus}/drivers/${d.driver}`, `${dir}/driver`);
    }
    if (d.group !== undefined) {
      Deno.mkdirSync(`${root}/kernel/iommu_groups/${d.group}`, { recursive: true });
      Deno.symlinkSync(`${root}/kernel/iommu_groups/${d.group}`, `${dir}/iommu_group`);
    }
    if (d.disk) {
      Deno.mkdirSync(`${dir}/virtio2/block/${d.disk.name}`, { recursive: true });
      const node = (at: string, dev: string, holders: string[] = []) => {
        Deno.mkdirSync(`${at}/holders`, { recursive: true });
        Deno.writeTextFileSync(`${at}/dev`, dev + "\n");
        for (const h of holders) Deno.mkdirSync(`${at}/holders/${h}`);
      };
      node(`${root}/block/${d.disk.name}`, d.disk.dev, d.disk.holders);
      for (const [i, p] of (d.disk.parts ?? []).entries()) {
        node(`${root}/block/${d.disk.name}/${p.name}`, p.dev, p.holders);
        Deno.writeTextFileSync(`${root}/block/${d.disk.name}/${p.name}/partition`, `${i + 1}\n`);
      }
    }
    if (d.netif) {
      Deno.mkdirSync(`${dir}/virtio3/net/${d.netif.name}`, { recursive: true });
      Deno.mkdirSync(`${root}/class/net/${d.netif.name}`, { recursive: true });
      Deno.writeTextFileSync(`${root}/class/net/${d.netif.name}/flags`, d.netif.up ? "0x1003\n" : "0x1002\n");
      Deno.writeTextFileSync(`${root}/class/net/${d.netif.name}/operstate`, d.netif.up ? "up\n" : "down\n");
    }
  }
  return root;
}
