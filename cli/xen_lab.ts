/**
 * `deno task xen-lab`: build and boot the nested Xen lab and run pvdrv's netfront against dom0's xen-netback.
 * @module
 */
import { checkXenRun, isReportLine, runXenLab, xenBenchSummary } from "../lab/outer/xen.ts";
import { LabError } from "../lab/outer/qemu.ts";
import { parse, runMain } from "./lib/common.ts";

await runMain("usage: deno task xen-lab [--verbose]", async () => {
  const { values } = parse(Deno.args, { verbose: { type: "boolean" } }, false);
  try {
    const r = await runXenLab({
      onLine: (l) => {
        if (values.verbose || isReportLine(l)) console.log(l);
      },
    });
    const checks = checkXenRun(r);
    for (const c of checks) console.log(`${c.name} ... ${c.ok ? "ok" : "FAILED"} (${c.detail})`);
    for (const l of xenBenchSummary(r)) console.log(`bench: ${l}`);
    console.log(`xen-lab: ${r.seconds.toFixed(0)} s; domU tests exit ${r.domUExit}`);
    return r.domUExit === 0 && checks.every((c) => c.ok) ? 0 : 1;
  } catch (e) {
    if (e instanceof LabError) {
      console.error(`xen-lab: ${e.message}`);
      return 3;
    }
    throw e;
  }
});
