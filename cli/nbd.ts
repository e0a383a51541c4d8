/**
 * `deno task nbd <pci> [--socket PATH | --port N] [--attach /dev/nbdN] [--read-only] [--name NAME]`: export a
 * pvdrv disk over NBD (a Unix socket or TCP on loopback), and optionally attach a kernel NBD device to it.
 * @module
 */
import { openDisk } from "../system/table.ts";
import { listenNbd, NbdExport } from "../apps/nbd/server.ts";
import { attachNbd, type NbdAttachment } from "./lib/nbd_attach.ts";
import { intArg, parse, runMain, UsageError } from "./lib/common.ts";
import { diskIrqArg } from "./lib/nic_args.ts";

const USAGE = `usage: deno task nbd <disk> [options]
  <disk>              PCI address of a virtio-blk device bound to vfio-pci or uio_pci_generic, or vbd/N (a
                      Xen virtual disk of this domain)
  --socket PATH       serve on this Unix socket (default: a fresh one under /tmp)
  --port N            serve on TCP 127.0.0.1:N instead
  --attach /dev/nbdN  also attach that kernel NBD device to the export (modprobe nbd first), so the disk
                      appears as a block device: mkfs, mount, ...; detached on SIGINT/SIGTERM
  --name NAME         the export's name (default "")
  --read-only         refuse writes
  --irq MODE          completion: poll (default), or sleep on the interrupt: msix or intx for a virtio disk,
                      evtchn for a Xen vbd
  --json              one JSON line when ready, and one per session`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    socket: { type: "string" },
    port: { type: "string" },
    attach: { type: "string" },
    name: { type: "string" },
    "read-only": { type: "boolean" },
    irq: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return void console.log(USAGE);
  const [name, ...extra] = positionals;
  if (!name) throw new UsageError("missing <disk>");
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  if (values.socket !== undefined && values.port !== undefined) {
    throw new UsageError("--socket and --port exclude each other");
  }
  if (values.attach !== undefined && values.port !== undefined) {
    throw new UsageError("--attach needs a Unix socket, not --port");
  }
  if (values.attach !== undefined && !/^\/dev\/nbd\d{1,3}$/.test(values.attach)) {
    throw new UsageError(`--attach takes a kernel NBD device like /dev/nbd0, got '${values.attach}'`);
  }
  const port = values.port === undefined ? undefined : intArg("port", values.port, 0, 1, 65535);
  const irq = diskIrqArg(values.irq, name);
  const disk = await openDisk(name, { irq: irq.mode });
  const exportName = values.name ?? "";
  const exp = new NbdExport(disk, {
    name: exportName,
    readOnly: values["read-only"] ?? false,
    interrupts: irq.sleep,
  });
  const path = values.socket ??
    (port === undefined ? `${Deno.makeTempDirSync({ prefix: "pvdrv-nbd-" })}/nbd.sock` : "");
  const say = (o: Record<string, unknown>, text: string) =>
    console.log(values.json ? JSON.stringify(o) : text);
  const listener = listenNbd(
    exp,
    port === undefined ? { path } : { port },
    (s) =>
      say(
        { session: s },
        `nbd: session ended${
          s.ended ? ` (${s.ended})` : ""
        }: ${s.requests} requests, ${s.errors} errors, ${s.bytesRead} bytes read, ${s.bytesWritten} written`,
      ),
  );
  let attached: NbdAttachment | null = null;
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      await attached?.detach().catch(() => {});
      listener.close();
      await listener.done;
      await disk.close();
    })();
    return stopping;
  };
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => void stop().then(() => Deno.exit(0)));
  }
  const where = port === undefined ? path : `127.0.0.1:${port}`;
  if (values.attach) {
    try {
      attached = await attachNbd(values.attach, path, exportName);
    } catch (e) {
      await stop();
      throw e;
    }
  }
  say(
    { serving: name, at: where, size: disk.info.capacity, attached: values.attach ?? null },
    `nbd: serving ${disk.name} (${disk.info.capacity} bytes) on ${where}${
      values.attach ? `, attached as ${values.attach}` : ""
    }`,
  );
  if (attached) await attached.done;
  else await listener.done;
  await stop();
});
