/**
 * A guest agent like the Windows PV drivers' XenIface lite agent: advertises control/feature-poweroff and
 * control/feature-reboot (and itself in data/pvdrv-agent), watches control/shutdown and acts on "poweroff" and
 * "reboot" (clearing the request first, as xenagent does). Anything else in the key is ignored and reported.
 *
 * On a Linux domU the kernel (drivers/xen/manage.c) also watches control/shutdown, acknowledges the request before
 * any userspace watcher can read it, and runs the `kernel.poweroff_cmd` usermode helper. {@link installKernelHandoff}
 * points that helper at the agent, so `xl shutdown` reaches the agent there too.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { XenStore } from "./xenstore.ts";

/** What the toolstack can ask for. */
export type ShutdownAction = "poweroff" | "reboot";

/** Agent options. */
export interface AgentOptions {
  /** Performs the action (the CLI passes a real one unless --dry-run). */
  act: (a: ShutdownAction) => Promise<void> | void;
  /** Told about every request seen, handled or not. */
  log?: (msg: string) => void;
  /** Stop after handling one request (tests, one-shot use). */
  once?: boolean;
  /** Requests arriving outside xenstore: `subscribe(deliver)` starts them, its result stops them. */
  external?: (deliver: (a: ShutdownAction, via: string) => void) => () => void;
}

/** Where this agent announces itself (relative to the domain's home). */
export const AGENT_KEY = "data/pvdrv-agent";

/** Run the agent until `signal` aborts (or after one action with `once`). */
export async function runAgent(
  xs: XenStore,
  o: AgentOptions,
  signal?: AbortSignal,
): Promise<ShutdownAction | null> {
  const log = o.log ?? (() => {});
  await xs.write("control/feature-poweroff", "1");
  await xs.write("control/feature-reboot", "1");
  const pending: [ShutdownAction, string][] = [];
  let wake: (() => void) | null = null;
  const deliver = (a: ShutdownAction, via: string) => {
    pending.push([a, via]);
    wake?.();
  };
  const it = xs.watch("control/shutdown");
  const pump = (async () => {
    for await (const _ of it) {
      const v = (await xs.tryRead("control/shutdown")) ?? "";
      if (v === "") continue;
      if (v !== "poweroff" && v !== "reboot") {
        log(`ignoring control/shutdown='${v.slice(0, 32)}' (this agent handles poweroff and reboot)`);
        continue;
      }
      await xs.write("control/shutdown", "");
      deliver(v, "control/shutdown");
    }
  })();
  pump.catch((e) => log(`xenstore watch ended: ${e.message}`));
  const unsubscribe = o.external?.(deliver);
  const onAbort = () => wake?.();
  signal?.addEventListener("abort", onAbort);
  await xs.write(AGENT_KEY, "running");
  try {
    while (!signal?.aborted) {
      const next = pending.shift();
      if (!next) {
        await new Promise<void>((r) => wake = r);
        wake = null;
        continue;
      }
      const [a, via] = next;
      log(`${a} requested (through ${via})`);
      await o.act(a);
      if (o.once) return a;
    }
    return null;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    unsubscribe?.();
    await it.return!();
    await pump.catch(() => {});
    await xs.rm(AGENT_KEY).catch(() => {});
  }
}

/** The sysctl that names the kernel's orderly-poweroff helper. */
export const POWEROFF_CMD = "/proc/sys/kernel/poweroff_cmd";

/**
 * Point the kernel's poweroff helper at this process: the kernel runs `<kill> -USR2 <pid>` when it accepts a
 * poweroff request. Returns a function restoring the previous helper.
 */
export function installKernelHandoff(
  pid: number,
  path = POWEROFF_CMD,
  kill: string | null = ["/bin/kill", "/usr/bin/kill"].find((p) => exists(p)) ?? null,
): () => void {
  if (!kill) {
    throw new PvdrvError("xen", "no kill program (/bin/kill) for the kernel's poweroff helper to run");
  }
  const before = Deno.readTextFileSync(path).trim();
  Deno.writeTextFileSync(path, `${kill} -USR2 ${pid}\n`);
  return () => Deno.writeTextFileSync(path, `${before}\n`);
}

function exists(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}
