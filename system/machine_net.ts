/**
 * What the machine's own network uses: interfaces that carry a default route (`/proc/net/route`,
 * `/proc/net/ipv6_route`) and interfaces with an address (other than IPv6 link-local). `bind` refuses such an
 * interface's device even with `--force`, and `probe` marks it active: unbinding it would cut the machine off.
 * @module
 */
import { SYSFS } from "../ffi/sysfs.ts";

/** The interfaces the running network depends on. */
export interface MachineNet {
  /** Interfaces with a default route (IPv4 or IPv6). */
  defaultRoute: Set<string>;
  /** Addresses per interface (IPv6 link-local left out). */
  addresses: Map<string, string[]>;
}

/** An empty view (no interface in use), for fixture trees. */
export function noMachineNet(): MachineNet {
  return { defaultRoute: new Set(), addresses: new Map() };
}

function readOr(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** Interfaces with a default route, from the text of `/proc/net/route` and `/proc/net/ipv6_route`. */
export function parseDefaultRoutes(route: string, ipv6Route: string): Set<string> {
  const out = new Set<string>();
  for (const line of route.split("\n").slice(1)) {
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && Number.parseInt(f[1], 16) === 0 && Number.parseInt(f[7], 16) === 0) out.add(f[0]);
  }
  for (const line of ipv6Route.split("\n")) {
    // dest prefixlen src srclen nexthop metric refcnt use flags iface
    const f = line.trim().split(/\s+/);
    if (f.length >= 10 && /^0+$/.test(f[0]) && f[1] === "00" && f[9] !== "lo") out.add(f[9]);
  }
  return out;
}

/** Read the running machine's view (`procRoot` for tests; addresses from `Deno.networkInterfaces`). */
export function readMachineNet(
  procRoot = "/proc",
  interfaces: () => Deno.NetworkInterfaceInfo[] = () => Deno.networkInterfaces(),
): MachineNet {
  const defaultRoute = parseDefaultRoutes(
    readOr(`${procRoot}/net/route`),
    readOr(`${procRoot}/net/ipv6_route`),
  );
  const addresses = new Map<string, string[]>();
  let list: Deno.NetworkInterfaceInfo[] = [];
  try {
    list = interfaces();
  } catch { /* no --allow-sys: routes still protect the default interface */ }
  for (const i of list) {
    if (i.family === "IPv6" && /^fe80:/i.test(i.address)) continue;
    const a = addresses.get(i.name) ?? [];
    a.push(i.cidr ?? i.address);
    addresses.set(i.name, a);
  }
  return { defaultRoute, addresses };
}

/** Why `iface` must never be taken from the kernel, or null when nothing depends on it. */
export function protectedReason(iface: string, net: MachineNet): string | null {
  if (net.defaultRoute.has(iface)) return `${iface} carries the default route`;
  const a = net.addresses.get(iface);
  if (a?.length) return `${iface} has address ${a.join(", ")}`;
  return null;
}

/** The machine's network view for sysfs `root`: the real one for the real sysfs, none for a fixture tree. */
export function machineNetFor(root: string, given?: MachineNet): MachineNet {
  return given ?? (root === SYSFS ? readMachineNet() : noMachineNet());
}
