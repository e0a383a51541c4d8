/**
 * Xen detection from sysfs: the hypervisor (/sys/hypervisor), the guest type, the devices on the xen bus
 * (/sys/bus/xen/devices: vif-0, vbd-768...) with the kernel driver holding each, and the /dev/xen nodes. The
 * Xen platform PCI device (5853:0001) of HVM guests shows in the PCI probe. Read-only.
 * @module
 */
import { linkName, listDir, readText } from "../ffi/sysfs.ts";

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

/** Probe Xen under sysfs `root` and device directory `dev`. */
export function probeXen(root = "/sys", dev = "/dev"): XenProbe {
  const devices = listDir(`${root}/bus/xen/devices`).map((name) => {
    const d = `${root}/bus/xen/devices/${name}`;
    const driver = linkName(`${d}/driver`);
    return {
      name,
      nodename: readText(`${d}/nodename`) ?? "",
      devtype: readText(`${d}/devtype`) ?? "",
      driver,
    };
  });
  return {
    hypervisor: readText(`${root}/hypervisor/type`),
    guestType: readText(`${root}/hypervisor/guest_type`),
    devices,
    devNodes: listDir(`${dev}/xen`),
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
