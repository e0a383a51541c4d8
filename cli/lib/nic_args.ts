/**
 * Arguments and process handling shared by the NIC tasks.
 * @module
 */
import { parsePciAddress } from "../../ffi/sysfs.ts";
import { UsageError } from "./common.ts";
import type { IrqMode } from "../../drivers/net/nic.ts";
import type { RingFormat } from "../../drivers/virtio/net.ts";
import { pinDriver } from "../../ffi/cpu.ts";

/** Options every NIC task takes (spread into its `parse` options), and their usage lines. */
export const NIC_OPTIONS = {
  irq: { type: "string" },
  mtu: { type: "string" },
  ring: { type: "string" },
  cpu: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** Usage lines of {@link NIC_OPTIONS}. */
export const NIC_USAGE = `  --irq MODE        poll | msix | intx (default poll)
  --mtu N           vif/N only: MTU, up to 65517 (above 1500: multi-slot frames, needs feature-sg)
  --ring FORMAT     virtio-net on PCI only: split | packed (packed when the device offers it; default split)
  --cpu N           run the task on CPU N and deliver the NIC's interrupts there (default: anywhere)
  --json            print the summary as JSON`;

/** The one positional NIC name: a PCI address (normalised) or vif/N. */
export function nicArg(positionals: string[]): string {
  if (positionals.length !== 1) {
    throw new UsageError(
      "expected exactly one NIC (a PCI address such as 0000:00:04.0, vif/0 on Xen, or vhost-user:PATH)",
    );
  }
  const name = positionals[0];
  if (/^vhost-user(-client)?:/.test(name)) {
    if (!/^vhost-user(-client)?:\/?[^\0]+$/.test(name)) throw new UsageError(`'${name}' needs a socket path`);
    return name;
  }
  if (/^vif\//.test(name)) {
    if (!/^vif\/\d{1,5}$/.test(name) || Number(name.slice(4)) > 65535) {
      throw new UsageError(`'${name}' is not a Xen vif (expected vif/N, N a number such as 0)`);
    }
    return name;
  }
  try {
    return parsePciAddress(name);
  } catch {
    throw new UsageError(
      `'${name}' is not a NIC: expected a PCI address such as 0000:00:04.0, vif/N on Xen, or vhost-user:PATH`,
    );
  }
}

/** --irq. */
export function irqArg(v: string | undefined): IrqMode {
  if (v === undefined) return "poll";
  if (v === "poll" || v === "msix" || v === "intx") return v;
  throw new UsageError(`--irq must be poll, msix or intx, got '${v}'`);
}

/**
 * --irq for `disk`: a virtio disk takes poll, msix or intx (the mode it is opened in); a Xen vbd always has its
 * event channel, so it takes poll or evtchn (whether the loop sleeps on it).
 */
export function diskIrqArg(
  v: string | undefined,
  disk: string,
): { name: string; mode: IrqMode; sleep: boolean } {
  if (!/^vbd\//.test(disk)) {
    const mode = irqArg(v);
    return { name: mode, mode, sleep: mode !== "poll" };
  }
  if (v === undefined || v === "poll") return { name: "poll", mode: "poll", sleep: false };
  if (v === "evtchn") return { name: v, mode: "poll", sleep: true };
  throw new UsageError(`--irq for a Xen vbd must be poll or evtchn, got '${v}'`);
}

/** --ring: a virtio-net PCI NIC's virtqueue format (virtio 1.2 §2.7 split, §2.8 packed). */
export function ringArg(v: string | undefined, nic: string): RingFormat | undefined {
  if (v === undefined) return undefined;
  if (v !== "split" && v !== "packed") throw new UsageError(`--ring must be split or packed, got '${v}'`);
  if (!/^[0-9a-f]{4}:/.test(nic)) throw new UsageError(`--ring applies to virtio-net on PCI, not '${nic}'`);
  return v;
}

/** --cpu: a CPU number (whether it is online is checked when the loop is pinned). */
export function cpuArg(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,4}$/.test(v) || Number(v) > 1023) {
    throw new UsageError(`--cpu must be a CPU number 0..1023, got '${v}'`);
  }
  return Number(v);
}

/**
 * Run this task (every thread of the process) on `cpu` and steer NIC `name`'s interrupts there (a PCI NIC's; a vif
 * or a vhost-user port has only the process pinned). An interrupt the kernel will not move is reported, not fatal.
 */
export function pinNicTask(name: string, cpu: number | undefined): void {
  if (cpu === undefined) return;
  const r = pinDriver(/^[0-9a-f]{4}:/.test(name) ? name : null, cpu);
  for (const why of r.refused) console.error(`pvdrv: ${why}`);
}

/** --mtu: netfront only (virtio-net uses the device's own MTU). */
export function mtuArg(v: string | undefined, nic: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^vif\//.test(nic)) throw new UsageError("--mtu applies to vif/N (virtio-net uses the device's MTU)");
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 68 || n > 65517) throw new UsageError(`--mtu must be 68..65517, got '${v}'`);
  return n;
}

/** Run `cleanup` and exit on SIGINT/SIGTERM (the device is reset or disconnected, nothing is left mapped). */
export function onSignals(cleanup: () => void | Promise<void>): void {
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, async () => {
      try {
        await cleanup();
      } finally {
        Deno.exit(130);
      }
    });
  }
}
