/**
 * `deno task xen-agent [--dry-run] [--once] [--poweroff CMD] [--reboot CMD] [--xenstore-only]`: act on the
 * toolstack's shutdown requests (`xl shutdown`, `xl reboot`) through xenstore's control/shutdown and, on Linux,
 * through the kernel's poweroff helper.
 * @module
 */
import { installKernelHandoff, POWEROFF_CMD, runAgent, type ShutdownAction } from "../drivers/xen/agent.ts";
import { XenStore } from "../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../ffi/xenbus.ts";
import { parse, runMain, UsageError } from "./lib/common.ts";

const USAGE = `usage: deno task xen-agent [options]
  --dry-run         report requests but do not power off or reboot
  --once            exit after the first request
  --poweroff CMD    command run for poweroff (default: poweroff)
  --reboot CMD      command run for reboot (default: reboot)
  --xenstore-only   do not take over the kernel's poweroff helper (${POWEROFF_CMD})
On Linux the kernel acknowledges control/shutdown itself and runs its poweroff helper; unless --xenstore-only,
the agent makes that helper signal it, so poweroff requests reach it (reboot requests stay with the kernel).`;

await runMain(USAGE, async () => {
  const { values } = parse(Deno.args, {
    "dry-run": { type: "boolean" },
    once: { type: "boolean" },
    poweroff: { type: "string" },
    reboot: { type: "string" },
    "xenstore-only": { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, false);
  if (values.help) return void console.log(USAGE);
  const cmds: Record<ShutdownAction, string[]> = {
    poweroff: (values.poweroff ?? "poweroff").split(/\s+/).filter(Boolean),
    reboot: (values.reboot ?? "reboot").split(/\s+/).filter(Boolean),
  };
  for (const [k, v] of Object.entries(cmds)) if (!v.length) throw new UsageError(`--${k} needs a command`);
  const xs = new XenStore(new XenbusDevice());
  const stop = new AbortController();
  for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => stop.abort());
  const handoff = !values["xenstore-only"];
  console.error(
    `xen-agent: watching control/shutdown${handoff ? ` and ${POWEROFF_CMD}` : ""}${
      values["dry-run"] ? " (dry run)" : ""
    }`,
  );
  try {
    await runAgent(xs, {
      once: values.once,
      log: (m) => console.log(`xen-agent: ${m}`),
      external: handoff
        ? (deliver) => {
          const restore = installKernelHandoff(Deno.pid);
          const onUsr2 = () => deliver("poweroff", `the kernel's ${POWEROFF_CMD}`);
          Deno.addSignalListener("SIGUSR2", onUsr2);
          return () => {
            Deno.removeSignalListener("SIGUSR2", onUsr2);
            restore();
          };
        }
        : undefined,
      act: async (a) => {
        if (values["dry-run"]) return console.log(`xen-agent: would ${a} (dry run)`);
        const [cmd, ...args] = cmds[a];
        console.log(`xen-agent: running ${cmds[a].join(" ")}`);
        const r = await new Deno.Command(cmd, { args }).output();
        if (!r.success) throw new Error(`${cmds[a].join(" ")} failed (exit ${r.code})`);
      },
    }, stop.signal);
  } finally {
    await xs.close();
  }
});
