/**
 * Run one command in the lab guest for a task: its exit status back, lab failures as one line (exit 3).
 * @module
 */
import { LabError, type LabOptions, runInGuest } from "../../lab/outer/qemu.ts";

/** Boot the lab, run `cmd` in the project folder there, print the boot and command times; returns the exit status. */
export async function runLabCommand(cmd: string, opts: LabOptions): Promise<number> {
  try {
    const r = await runInGuest(cmd, opts);
    console.error(
      `lab: boot ${r.bootSeconds.toFixed(1)} s, command ${r.commandSeconds.toFixed(1)} s, exit ${r.code}`,
    );
    if (r.mqPeer) console.error(`lab: multi-queue TAP peer counted ${JSON.stringify(r.mqPeer)}`);
    return r.code;
  } catch (e) {
    if (e instanceof LabError) {
      console.error(`lab: ${e.message}`);
      return 3;
    }
    throw e;
  }
}
