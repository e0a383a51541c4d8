/**
 * `deno task xen-lab`: build and boot the nested Xen lab and run pvdrv's netfront against dom0's xen-netback.
 * @module
 */
import { isReportLine, runXenLab, XEN_FRAMES } from "../tests/xen/lab.ts";
import { LabError } from "../tests/vm/lab.ts";
import { parse, runMain } from "./common.ts";

await runMain("usage: deno task xen-lab [--verbose]", async () => {
  const { values } = parse(Deno.args, { verbose: { type: "boolean" } }, false);
  try {
    const r = await runXenLab({
      onLine: (l) => {
        if (values.verbose || isReportLine(l)) console.log(l);
      },
    });
    const recv = r.dom0Recv;
    console.log(
      `xen-lab: ${r.seconds.toFixed(0)} s; domU tests exit ${r.domUExit}; dom0 verified ${
        recv?.received ?? 0
      }/${XEN_FRAMES} (${recv?.corrupt ?? "?"} corrupt)`,
    );
    return r.domUExit === 0 && recv?.received === XEN_FRAMES && recv.corrupt === 0 ? 0 : 1;
  } catch (e) {
    if (e instanceof LabError) {
      console.error(`xen-lab: ${e.message}`);
      return 3;
    }
    throw e;
  }
});
