/**
 * `deno task vm [options] -- <command...>`: boot the lab guest, run a command in the project folder there, print
 * its output and exit with its status.
 * @module
 */
import { shellQuote } from "../lab/outer/qemu.ts";
import { runLabCommand } from "./lib/lab_command.ts";
import { buildGuest, ensureQemu } from "../lab/outer/guest_image.ts";
import { intArg, parse, runMain, UsageError } from "./lib/common.ts";

const USAGE = `usage: deno task vm [--timeout SEC] [--memory MIB] [--mq] -- <command...>
       deno task vm --build          build (or check) the guest image only
  Boots the QEMU lab (VFIO-capable virtio-net NICs, see README) and runs <command> in /pvdrv.
  --mq adds 0000:00:0a.0, 4 queue pairs on a multi-queue TAP device in a network namespace made for the run,
  answered there by lab/c/mqpeer.c (whose counters are printed at the end).
  examples:  deno task vm -- deno task probe
             deno task vm -- true`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    timeout: { type: "string" },
    memory: { type: "string" },
    build: { type: "boolean" },
    mq: { type: "boolean" },
    rebuild: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const timeoutSec = intArg("timeout", values.timeout, 900, 10, 24 * 3600);
  const memoryMb = intArg("memory", values.memory, 2048, 512, 16384);
  if (values.build || values.rebuild) {
    await ensureQemu();
    const img = await buildGuest({ force: values.rebuild });
    console.log(
      `${img.built ? "built" : "cached"}: ${img.kernel} ${img.initrd}${
        img.built ? ` (${img.buildSeconds.toFixed(1)} s)` : ""
      }`,
    );
    return 0;
  }
  const args = positionals[0] === "--" ? positionals.slice(1) : positionals;
  if (!args.length) throw new UsageError("no command given");
  const cmd = args.length === 1 ? args[0] : args.map(shellQuote).join(" ");
  return await runLabCommand(cmd, { timeoutSec, memoryMb, multiQueueTap: values.mq });
});
