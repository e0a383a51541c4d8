/**
 * A guest agent like the Windows PV drivers' XenIface lite agent: advertises control/feature-poweroff and
 * control/feature-reboot, watches control/shutdown and acts on "poweroff" and "reboot" (clearing the request
 * first, as xenagent does). Anything else in the key is ignored and reported.
 * @module
 */
import type { XenStore } from "./xenstore.ts";

/** What the toolstack can ask for. */
export type ShutdownAction = "poweroff" | "reboot";

/** Agent options. */
export interface AgentOptions {
  /** Performs the action (default: nothing — the CLI passes a real one unless --dry-run). */
  act: (a: ShutdownAction) => Promise<void> | void;
  /** Told about every request seen, handled or not. */
  log?: (msg: string) => void;
  /** Stop after handling one request (tests, one-shot use). */
  once?: boolean;
}

/** Run the agent until `signal` aborts (or after one action with `once`). */
export async function runAgent(
  xs: XenStore,
  o: AgentOptions,
  signal?: AbortSignal,
): Promise<ShutdownAction | null> {
  const log = o.log ?? (() => {});
  await xs.write("control/feature-poweroff", "1");
  await xs.write("control/feature-reboot", "1");
  const it = xs.watch("control/shutdown");
  const onAbort = () => void it.return!();
  signal?.addEventListener("abort", onAbort);
  try {
    for await (const _ of it) {
      const v = (await xs.tryRead("control/shutdown")) ?? "";
      if (v === "") continue;
      if (v !== "poweroff" && v !== "reboot") {
        log(`ignoring control/shutdown='${v.slice(0, 32)}' (this agent handles poweroff and reboot)`);
        continue;
      }
      await xs.write("control/shutdown", "");
      log(`control/shutdown requested ${v}`);
      await o.act(v);
      if (o.once) return v;
    }
    return null;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    await it.return!();
  }
}
