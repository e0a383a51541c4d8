/**
 * `deno task soak [--minutes N] [--sample-seconds S] [--frames F]`: boot the lab and soak pvdrv's virtio-net driver
 * (tests/vm/guest/soak.ts): both transports, polling and interrupts, traffic both ways, heap/RSS/fds/DMA sampled.
 * @module
 */
import { runLabCommand } from "./lib/lab_command.ts";
import { intArg, parse, runMain } from "./lib/common.ts";

const USAGE = `usage: deno task soak [--minutes N] [--sample-seconds S] [--frames F]
  --minutes N          how long (default 15)
  --sample-seconds S   sampling interval (default 60; 10 for runs of 2 minutes or less)
  --frames F           frames each way per configuration and round (default 5000)`;

if (import.meta.main) {
  await runMain(USAGE, async () => {
    const { values } = parse(Deno.args, {
      minutes: { type: "string" },
      "sample-seconds": { type: "string" },
      frames: { type: "string" },
      help: { type: "boolean", short: "h" },
    }, false);
    if (values.help) return void console.log(USAGE);
    const minutes = intArg("minutes", values.minutes, 15, 1, 24 * 60);
    const every = intArg("sample-seconds", values["sample-seconds"], minutes <= 2 ? 10 : 60, 5, 3600);
    const frames = intArg("frames", values.frames, 5000, 100, 10_000_000);
    return await runLabCommand(soakCommand(minutes, every, frames), {
      timeoutSec: minutes * 60 + 600,
      onLine: (l) => console.log(l),
    });
  });
}

/** The guest command of a soak. */
export function soakCommand(minutes: number, every: number, frames: number): string {
  return `deno run -A --no-check --v8-flags=--expose-gc tests/vm/guest/soak.ts --minutes ${minutes} ` +
    `--sample-seconds ${every} --frames ${frames}`;
}
