/**
 * PCI enumeration through sysfs (`/sys/bus/pci/devices`). Every function takes the sysfs root, so tests run on a
 * fixture tree and nothing here writes anything.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";

/** Default sysfs mount. */
export const SYSFS = "/sys";

/** A BAR as sysfs `resource` describes it. */
export interface BarResource {
  /** BAR index 0..5. */
  index: number;
  /** Start address (bus address for memory, port for I/O). */
  start: bigint;
  /** Size in bytes. */
  size: number;
  /** I/O-port BAR. */
  io: boolean;
  /** 64-bit memory BAR. */
  is64: boolean;
  /** Prefetchable. */
  prefetchable: boolean;
}

/** What sysfs says about one PCI function. */
export interface PciDeviceInfo {
  /** Domain:bus:device.function, e.g. 0000:00:03.0. */
  address: string;
  /** Vendor id. */
  vendorId: number;
  /** Device id. */
  deviceId: number;
  /** Class code. */
  classCode: number;
  /** Subsystem vendor id. */
  subsystemVendorId: number;
  /** Subsystem device id. */
  subsystemId: number;
  /** Revision. */
  revision: number;
  /** Bound driver name, or null. */
  driver: string | null;
  /** driver_override contents, or null. */
  driverOverride: string | null;
  /** IOMMU group number, or null when there is no IOMMU. */
  iommuGroup: number | null;
  /** Implemented BARs. */
  bars: BarResource[];
  /** Network interfaces the kernel created for it (directly or through virtio). */
  netInterfaces: string[];
  /** uio device names (uio0...) when bound to a UIO driver. */
  uio: string[];
  /** Block devices (disks) the kernel created for it (directly or through virtio). */
  blockDevices: string[];
}

const PCI_ADDR = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

/** Validate and normalise a PCI address; accepts the short "00:03.0" form. */
export function parsePciAddress(s: string): string {
  const a = s.trim().toLowerCase();
  const full = /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(a) ? `0000:${a}` : a;
  if (!PCI_ADDR.test(full)) throw new RangeError(`'${s}' is not a PCI address (expected like 0000:00:03.0)`);
  return full;
}

/** Trimmed contents of a sysfs attribute, or null when it cannot be read. */
export function readText(path: string): string | null {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return null;
  }
}

function readHex(path: string): number {
  const t = readText(path);
  if (t === null) return 0;
  const v = Number.parseInt(t, 16);
  return Number.isFinite(v) ? v : 0;
}

/** Last component of a symlink's target (a driver or group name), or null. */
export function linkName(path: string): string | null {
  try {
    const t = Deno.readLinkSync(path);
    return t.slice(t.lastIndexOf("/") + 1);
  } catch {
    return null;
  }
}

/** Sorted entries of a directory, or none when it cannot be read. */
export function listDir(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

const IORESOURCE_IO = 0x100, IORESOURCE_MEM_64 = 0x100000, IORESOURCE_PREFETCH = 0x2000;

/** Parse a sysfs `resource` file: one "start end flags" line per resource; BARs are lines 0..5. */
export function parseResources(text: string): BarResource[] {
  const out: BarResource[] = [];
  text.split("\n").slice(0, 6).forEach((line, index) => {
    const f = line.trim().split(/\s+/);
    if (f.length < 3) return;
    const start = BigInt(f[0]), end = BigInt(f[1]), flags = Number(BigInt(f[2]));
    if (end === 0n && start === 0n) return;
    out.push({
      index,
      start,
      size: Number(end - start + 1n),
      io: (flags & IORESOURCE_IO) !== 0,
      is64: (flags & IORESOURCE_MEM_64) !== 0,
      prefetchable: (flags & IORESOURCE_PREFETCH) !== 0,
    });
  });
  return out;
}

/** Sysfs directory of a device. */
export function devicePath(address: string, root = SYSFS): string {
  return `${root}/bus/pci/devices/${parsePciAddress(address)}`;
}

/** Read one device's sysfs entry. */
export function readDevice(address: string, root = SYSFS): PciDeviceInfo {
  const dir = devicePath(address, root);
  if (readText(`${dir}/vendor`) === null) {
    throw new PvdrvError("device", `no PCI device ${address} under ${root}`);
  }
  const group = linkName(`${dir}/iommu_group`);
  const net = listDir(`${dir}/net`);
  const block = listDir(`${dir}/block`);
  for (const sub of listDir(dir)) {
    if (!/^virtio\d+$/.test(sub)) continue;
    net.push(...listDir(`${dir}/${sub}/net`));
    block.push(...listDir(`${dir}/${sub}/block`));
  }
  const override = readText(`${dir}/driver_override`);
  return {
    address: parsePciAddress(address),
    vendorId: readHex(`${dir}/vendor`),
    deviceId: readHex(`${dir}/device`),
    classCode: readHex(`${dir}/class`),
    subsystemVendorId: readHex(`${dir}/subsystem_vendor`),
    subsystemId: readHex(`${dir}/subsystem_device`),
    revision: readHex(`${dir}/revision`),
    driver: linkName(`${dir}/driver`),
    driverOverride: override === null || override === "(null)" || override === "" ? null : override,
    iommuGroup: group === null ? null : Number(group),
    bars: parseResources(readText(`${dir}/resource`) ?? ""),
    netInterfaces: net,
    uio: listDir(`${dir}/uio`),
    blockDevices: block,
  };
}

/** All PCI functions, sorted by address. */
export function listDevices(root = SYSFS): PciDeviceInfo[] {
  return listDir(`${root}/bus/pci/devices`).filter((a) => PCI_ADDR.test(a)).map((a) => readDevice(a, root));
}

/** The raw config space (as much as this process may read: 64 bytes unprivileged, 256/4096 as root). */
export function readConfigBytes(address: string, root = SYSFS): Uint8Array {
  return Deno.readFileSync(`${devicePath(address, root)}/config`);
}

/** Whether a network interface is up or has addresses (then it is carrying traffic: never unbind it). */
export function interfaceInUse(name: string, root = SYSFS): boolean {
  const flags = readHex(`${root}/class/net/${name}/flags`);
  const oper = readText(`${root}/class/net/${name}/operstate`);
  return (flags & 1) !== 0 || oper === "up";
}
