/**
 * `deno task xen-agent [--dry-run] [--once]`: act on the toolstack's shutdown requests (`xl shutdown`,
 * `xl reboot`) through xenstore's control/shutdown.
 * @module
 */
import { runAgent } from "../drivers/xen/agent.ts";
import { XenStore } from "../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../ffi/xenbus.ts";
import { parse, runMain } from "./common.ts";

const USAGE = `usage: deno task xen-agent [--dry-run] [--once]
  --dry-run   report requests but do not power off or reboot
  --once      exit after the first request`;

await runMain(USAGE, async () => {
  const { values } = parse(Deno.args, {
    "dry-run": { type: "boolean" },
    once: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, false);
  if (values.help) return void console.log(USAGE);
  const xs = new XenStore(new XenbusDevice());
  const stop = new AbortController();
  for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => stop.abort());
  console.error(`xen-agent: watching control/shutdown${values["dry-run"] ? " (dry run)" : ""}`);
  await runAgent(xs, {
    once: values.once,
    log: (m) => console.log(`xen-agent: ${m}`),
    act: async (a) => {
      if (values["dry-run"]) return console.log(`xen-agent: would ${a} (dry run)`);
      const r = await new Deno.Command(a === "poweroff" ? "poweroff" : "reboot").output();
      if (!r.success) throw new Error(`${a} failed (exit ${r.code})`);
    },
  }, stop.signal);
  await xs.close();
});
