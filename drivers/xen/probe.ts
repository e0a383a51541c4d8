/**
 * Xen detection from sysfs: the hypervisor (/sys/hypervisor), the guest type, the devices on the xen bus
 * (/sys/bus/xen/devices: vif-0, vbd-768...) with the kernel driver holding each, and the /dev/xen nodes. The
 * Xen platform PCI device (5853:0001) of HVM guests shows in the PCI probe. Read-only.
 * @module
 */

/** One device on the xen bus. */
export interface XenBusDevice {
  /** sysfs name, e.g. vif-0. */
  name: string;
  /** xenstore node relative to this domain, e.g. device/vif/0. */
  nodename: string;
  /** Device type (vif, vbd...). */
  devtype: string;
  /** Kernel driver holding it (e.g. vif for xen-netfront), or null: free for userspace. */
  driver: string | null;
}

/** What the probe sees of Xen. */
export interface XenProbe {
  /** "xen" when running on Xen, else null. */
  hypervisor: string | null;
  /** "PV", "HVM" or "PVH" when known. */
  guestType: string | null;
  /** Devices on the xen bus. */
  devices: XenBusDevice[];
  /** Nodes under /dev/xen (xenbus, gntalloc, evtchn...). */
  devNodes: string[];
}

function text(path: string): string | null {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return null;
  }
}

function list(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

/** Probe Xen under sysfs `root` and device directory `dev`. */
export function probeXen(root = "/sys", dev = "/dev"): XenProbe {
  const devices = list(`${root}/bus/xen/devices`).map((name) => {
    const d = `${root}/bus/xen/devices/${name}`;
    let driver: string | null = null;
    try {
      const t = Deno.readLinkSync(`${d}/driver`);
      driver = t.slice(t.lastIndexOf("/") + 1);
    } catch { /* none */ }
    return { name, nodename: text(`${d}/nodename`) ?? "", devtype: text(`${d}/devtype`) ?? "", driver };
  });
  return {
    hypervisor: text(`${root}/hypervisor/type`),
    guestType: text(`${root}/hypervisor/guest_type`),
    devices,
    devNodes: list(`${dev}/xen`),
  };
}

/** Render the probe as text. */
export function formatXen(x: XenProbe, backends: Record<string, string> = {}): string {
  if (!x.hypervisor) return "Xen: not running on Xen";
  const lines = [
    `Xen: ${x.hypervisor}${x.guestType ? ` (${x.guestType} guest)` : ""}; /dev/xen: ${
      x.devNodes.join(" ") || "-"
    }`,
  ];
  for (const d of x.devices) {
    const held = d.driver
      ? `held by kernel driver ${d.driver}`
      : d.devtype === "vif"
      ? `free: deno task send vif/${d.nodename.split("/").pop()}`
      : "free";
    lines.push(`  ${d.name.padEnd(10)} ${d.nodename.padEnd(16)} ${backends[d.nodename] ?? ""}  ${held}`);
  }
  return lines.join("\n");
}
