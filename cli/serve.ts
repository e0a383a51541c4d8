/**
 * `deno task serve <nic>`: an HTTP server (Deno.serve) reached through a pvdrv NIC, by way of the TAP bridge: the
 * kernel's TCP runs on the TAP, every frame crosses pvdrv's driver.
 * @module
 */
import { intArg, parse, runMain, UsageError } from "./lib/common.ts";
import { NIC_OPTIONS, NIC_USAGE, nicArg } from "./lib/nic_args.ts";
import { HOST_OPTIONS, HOST_USAGE } from "./lib/host_args.ts";
import { bridgeConfig, bridgeLine, startBridge } from "./lib/tap_bridge.ts";
import { bytesResponse } from "../apps/pattern_http.ts";

const USAGE = `usage: deno task serve <nic> (--ip CIDR | --dhcp) [options]
  <nic>             PCI address of a virtio-net device bound to vfio-pci or uio_pci_generic, or vif/N (Xen)
  --port N          HTTP port (default 8080)
  --dir DIR         serve the files under DIR (default: only the built-in pages)
  --name NAME       TAP interface name (default pvtap%d)
  Built in: GET /         what this is, and the bridge's counters
            GET /bytes/N  N bytes (up to 1 GiB) of a fixed pattern: byte i is (i * 7 + (i >> 8)) & 255
${HOST_USAGE}
${NIC_USAGE.replace("(default poll)", "(default: interrupts)")}`;

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    port: { type: "string" },
    dir: { type: "string" },
    name: { type: "string" },
    ...HOST_OPTIONS,
    ...NIC_OPTIONS,
  });
  if (values.help) return void console.log(USAGE);
  const nic = nicArg(positionals);
  const cfg = bridgeConfig(values, nic, true); // every argument checked before the NIC is touched
  const port = intArg("port", values.port, 8080, 1, 65535);
  if (values.dir !== undefined) {
    let ok = false;
    try {
      ok = Deno.statSync(values.dir).isDirectory;
    } catch { /* reported below */ }
    if (!ok) throw new UsageError(`--dir ${values.dir} is not a directory`);
  }
  const b = await startBridge(cfg);
  const hostname = b.address!.split("/")[0];
  const root = values.dir ? await Deno.realPath(values.dir) : null;
  let requests = 0;
  const server = Deno.serve({ hostname, port, onListen: () => {} }, async (req) => {
    requests++;
    const path = decodeURIComponent(new URL(req.url).pathname);
    const bytes = bytesResponse(path);
    if (bytes) return bytes;
    if (path === "/") {
      return new Response(
        `pvdrv serve: ${b.nic} through ${b.tap} (${b.mac}), ${b.address}\n${
          bridgeLine(b.stats())
        }\nrequests ${requests}\n`,
      );
    }
    if (root && !path.split("/").includes("..")) {
      try {
        const f = await Deno.open(`${root}${path}`);
        const st = await f.stat();
        if (st.isFile) return new Response(f.readable, { headers: { "content-length": String(st.size) } });
        f.close();
      } catch { /* not found */ }
    }
    return new Response("not found\n", { status: 404 });
  });
  console.log(`serve: http://${hostname}:${port}/ through ${b.tap} bridged to ${b.nic} (${b.mac})`);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await server.shutdown();
    await b.stop();
  };
  for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => void stop());
  const s = await b.done.finally(() => stop());
  await server.finished;
  console.log(`serve: stopped after ${requests} requests; ${bridgeLine(s)}`);
  return 0;
});
