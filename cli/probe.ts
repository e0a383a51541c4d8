/**
 * `deno task probe [--json] [--sysfs DIR] [--all]`: list PCI devices and what pvdrv can do with them. Read-only.
 * @module
 */
import { formatTable, probe } from "../drivers/pci/probe.ts";
import { parse, runMain, UsageError } from "./common.ts";

const USAGE = `usage: deno task probe [--json] [--all] [--sysfs DIR]
  --json        machine-readable output
  --all         list every PCI function (default: virtio and Xen devices only)
  --sysfs DIR   sysfs root (default /sys)`;

await runMain(USAGE, () => {
  const { values, positionals } = parse(Deno.args, {
    json: { type: "boolean" },
    all: { type: "boolean" },
    sysfs: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  let entries = probe(values.sysfs ?? "/sys");
  if (!values.all) entries = entries.filter((e) => e.kind !== "-");
  if (values.json) console.log(JSON.stringify(entries, null, 2));
  else {console.log(
      entries.length ? formatTable(entries) : "no virtio or Xen PCI devices (use --all to list every device)",
    );}
});
