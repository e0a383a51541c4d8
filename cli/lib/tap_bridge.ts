/**
 * Starting and stopping the TAP bridge's worker (cli/lib/bridge_worker.ts) from a task's main thread.
 * @module
 */
import type { BridgeStats } from "../../apps/bridge.ts";
import { emptyBridgeStats } from "../../apps/bridge.ts";
import type { IrqMode, QueueStats } from "../../drivers/net/nic.ts";
import { ipText } from "../../net/ipv4.ts";
import { UsageError } from "./common.ts";
import { hostArgs, hostIrqArg } from "./host_args.ts";
import { cpuArg, mtuArg, ringArg } from "./nic_args.ts";
import type { RingFormat } from "../../drivers/virtio/net.ts";

/** What the worker is told. */
export interface BridgeConfig {
  /** The NIC (PCI address or vif/N). */
  nic: string;
  /** Interrupt mode. */
  irq: IrqMode;
  /** Netfront MTU. */
  mtu?: number;
  /** virtio-net ring format. */
  ring?: RingFormat;
  /** Run the bridge's loop on this CPU, with the NIC's interrupts (--cpu). */
  cpu?: number;
  /** TAP name (may end in %d). */
  tap: string;
  /** Static address for the TAP ("10.0.0.2/24"). */
  cidr?: string;
  /** Default gateway. */
  gateway?: string;
  /** Lease the address with DHCP. */
  dhcp: boolean;
  /** Int32 [0]: the stop flag, set by the main thread. */
  control: SharedArrayBuffer;
}

/**
 * The bridge's configuration from a task's options (--name, --ip/--dhcp/--gw, --irq, --mtu), checked; the address
 * is optional for `tap` (the user may configure the interface) and required for `serve`.
 */
export function bridgeConfig(
  v: {
    name?: string;
    ip?: string;
    gw?: string;
    dhcp?: boolean;
    irq?: string;
    mtu?: string;
    ring?: string;
    cpu?: string;
  },
  nic: string,
  addressRequired: boolean,
): Omit<BridgeConfig, "control"> {
  const addr = hostArgs(v, addressRequired);
  const tap = v.name ?? "pvtap%d";
  if (!/^[A-Za-z0-9_.%-]{1,15}$/.test(tap)) throw new UsageError(`--name '${tap}' is not an interface name`);
  return {
    nic,
    irq: hostIrqArg(v.irq, nic),
    mtu: mtuArg(v.mtu, nic),
    ring: ringArg(v.ring, nic),
    cpu: cpuArg(v.cpu),
    tap,
    cidr: addr.cidr ? `${ipText(addr.cidr.ip)}/${addr.cidr.prefix}` : undefined,
    gateway: addr.gateway === undefined ? undefined : ipText(addr.gateway),
    dhcp: addr.dhcp,
  };
}

/** One status line of the bridge's counters (tap and serve print it). */
export function bridgeLine(s: BridgeStats): string {
  return `nic→tap ${s.toTap} (${s.toTapBytes} B), tap→nic ${s.toNic} (${s.toNicBytes} B), dropped ` +
    `${s.tapDropped}/${s.nicDropped}, dhcp ${s.intercepted}`;
}

/** The bridge once up. */
export interface BridgeReady {
  /** The TAP interface's name. */
  tap: string;
  /** Its MAC (the NIC's). */
  mac: string;
  /** The NIC's name. */
  nic: string;
  /** The TAP's address, if any. */
  address: string | null;
  /** The default gateway set, if any. */
  gateway: string | null;
}

/** Messages from the worker. */
export type BridgeMessage =
  | { ready: BridgeReady }
  | { report: BridgeStats }
  | { address: string }
  | { closed: BridgeStats; nicStats: QueueStats }
  | { error: string }
  | { exited: true };

/** A running bridge. */
export interface BridgeHandle extends BridgeReady {
  /** The latest counters (updated about once a second). */
  stats(): BridgeStats;
  /** The NIC's own counters, all queues summed, once the bridge has stopped (null before). */
  nicStats(): QueueStats | null;
  /** Stop it: the NIC is closed, the TAP removed; resolves with the final counters. */
  stop(): Promise<BridgeStats>;
  /** Resolves when the worker has exited (on stop or failure); rejects with the error that ended it. */
  readonly done: Promise<BridgeStats>;
}

/** Start the bridge; resolves once the TAP is up and configured, rejects with the worker's error. */
export function startBridge(
  cfg: Omit<BridgeConfig, "control">,
  onAddress?: (a: string) => void,
): Promise<BridgeHandle> {
  const control = new SharedArrayBuffer(4), flag = new Int32Array(control);
  const worker = new Worker(new URL("./bridge_worker.ts", import.meta.url), { type: "module" });
  let latest = emptyBridgeStats(), final: BridgeStats | null = null, error: Error | null = null;
  let nicStats: QueueStats | null = null;
  let ready: (r: BridgeReady) => void,
    fail: (e: Error) => void,
    finish: (s: BridgeStats) => void,
    abort: (e: Error) => void;
  const up = new Promise<BridgeReady>((a, b) => (ready = a, fail = b));
  const done = new Promise<BridgeStats>((a, b) => (finish = a, abort = b));
  done.catch(() => {});
  worker.onmessage = (e: MessageEvent<BridgeMessage>) => {
    const m = e.data;
    if ("ready" in m) ready(m.ready);
    else if ("report" in m) latest = m.report;
    else if ("address" in m) onAddress?.(m.address);
    else if ("closed" in m) final = latest = m.closed, nicStats = m.nicStats;
    else if ("error" in m) error ??= new Error(m.error);
    else if ("exited" in m) {
      worker.terminate();
      if (error) fail(error), abort(error);
      else finish(final ?? latest);
    }
  };
  worker.onerror = (e) => {
    e.preventDefault();
    const err = new Error(e.message);
    worker.terminate();
    fail(err);
    abort(err);
  };
  worker.postMessage({ ...cfg, control });
  return up.then((r) => ({
    ...r,
    stats: () => latest,
    nicStats: () => nicStats,
    stop: () => {
      Atomics.store(flag, 0, 1);
      return done;
    },
    done,
  }));
}
