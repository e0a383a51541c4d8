/**
 * Arguments of the tasks that make a pvdrv NIC a network host (ping, udp, tap, serve): its address, by --ip or
 * --dhcp, the gateway, and the interrupt mode such a task defaults to.
 * @module
 */
import { type Cidr, hostCidrProblem, ipText, parseCidr, parseIp } from "../../net/ipv4.ts";
import { NetHost } from "../../net/host.ts";
import type { IrqMode, Nic } from "../../drivers/net/nic.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { intArg, UsageError } from "./common.ts";
import { irqArg } from "./nic_args.ts";

/** Options of {@link hostArgs}, spread into a task's `parse` options. */
export const HOST_OPTIONS = {
  ip: { type: "string" },
  gw: { type: "string" },
  dhcp: { type: "boolean" },
} as const;

/** Usage lines of {@link HOST_OPTIONS}. */
export const HOST_USAGE = `  --ip CIDR         this host's address, such as 10.0.0.2/24
  --dhcp            lease the address with DHCP instead (renewed while the task runs)
  --gw IP           default gateway (DHCP's router when leasing)`;

/** The address choice: a static CIDR or DHCP. */
export interface HostArgs {
  /** Static address. */
  cidr?: Cidr;
  /** Gateway. */
  gateway?: number;
  /** Lease with DHCP. */
  dhcp: boolean;
}

/** An IPv4 address argument, or a UsageError naming the option. */
export function ipArg(what: string, v: string): number {
  try {
    return parseIp(v);
  } catch {
    throw new UsageError(`${what} must be an IPv4 address such as 10.0.0.1, got '${v}'`);
  }
}

/** "IP:PORT", or a UsageError. */
export function endpointArg(what: string, v: string): { ip: number; port: number } {
  const m = v.match(/^([^:]+):(\d{1,5})$/);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw new UsageError(`${what} must be IP:PORT such as 10.0.0.1:7, got '${v}'`);
  }
  return { ip: ipArg(what, m[1]), port: Number(m[2]) };
}

/** --size N / --sizes MIN-MAX as UDP payload bytes (4 .. 65000; default 64). */
export function payloadSizes(size: string | undefined, sizes: string | undefined): [number, number] {
  if (size !== undefined && sizes !== undefined) throw new UsageError("give --size or --sizes, not both");
  const min = intArg("size", size, 64, 4, 65000);
  if (sizes === undefined) return [min, min];
  const m = sizes.match(/^(\d+)-(\d+)$/);
  if (!m || Number(m[1]) < 4 || Number(m[1]) > Number(m[2]) || Number(m[2]) > 65000) {
    throw new UsageError(`--sizes must be MIN-MAX with 4 <= MIN <= MAX <= 65000, got '${sizes}'`);
  }
  return [Number(m[1]), Number(m[2])];
}

/** --ip / --dhcp / --gw: at most one of --ip and --dhcp (exactly one when `required`). */
export function hostArgs(v: { ip?: string; gw?: string; dhcp?: boolean }, required = true): HostArgs {
  if (v.ip !== undefined && v.dhcp) throw new UsageError("--ip and --dhcp exclude each other: give one");
  if (required && v.ip === undefined && !v.dhcp) {
    throw new UsageError("give this host an address: --ip CIDR or --dhcp");
  }
  let cidr: Cidr | undefined;
  if (v.ip !== undefined) {
    try {
      cidr = parseCidr(v.ip);
    } catch {
      throw new UsageError(`--ip must be an address with a prefix such as 10.0.0.2/24, got '${v.ip}'`);
    }
    const why = hostCidrProblem(cidr);
    if (why === "prefix") throw new UsageError(`--ip prefix must be /1 to /30, got /${cidr.prefix}`);
    if (why === "reserved") {
      throw new UsageError(`--ip ${v.ip} is the subnet's network or broadcast address, not a host's`);
    }
  }
  return { cidr, gateway: v.gw === undefined ? undefined : ipArg("--gw", v.gw), dhcp: !!v.dhcp };
}

/**
 * --irq for tasks that wait more than they work (ping, udp, tap, serve): interrupts by default — MSI-X for a
 * VFIO function, the INTx line for uio_pci_generic, the event channel for vif/N.
 */
export function hostIrqArg(v: string | undefined, nic: string): IrqMode {
  if (v !== undefined) return irqArg(v);
  if (nic.startsWith("vif/")) return "msix";
  try {
    return readDevice(nic).driver === "uio_pci_generic" ? "intx" : "msix";
  } catch {
    return "msix"; // openNic explains a missing device
  }
}

/** Start a host on `nic` with the address from `a`; with DHCP, resolves once leased (or throws after 30 s). */
export async function startHost(nic: Nic, a: HostArgs, irq: IrqMode): Promise<NetHost> {
  let host: NetHost;
  try {
    host = NetHost.start(nic, { ip: a.cidr, gateway: a.gateway, interrupts: irq !== "poll" });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (a.dhcp) {
    try {
      await host.dhcp(30_000);
    } catch (e) {
      await host.close();
      throw e;
    }
    if (a.gateway !== undefined) host.gateway = a.gateway;
    console.error(`dhcp: leased ${host.address}${host.gateway ? ` via ${ipText(host.gateway)}` : ""}`);
  }
  return host;
}
