/**
 * `deno task demo`: build the lab (first run: a minute; then cached), boot it, and move real packets through
 * pvdrv's virtio-net driver over VFIO — to a peer on this host and to the guest kernel's own stack.
 * @module
 */
import { LabError, runInGuest, WirePeer } from "../lab/outer/qemu.ts";
import { intArg, parse, runMain } from "./lib/common.ts";

const USAGE = `usage: deno task demo [--frames N]
  Boots the QEMU lab and moves N frames (default 20000) each way through pvdrv's virtio-net driver.`;

await runMain(USAGE, async () => {
  const { values } = parse(
    Deno.args,
    { frames: { type: "string" }, help: { type: "boolean", short: "h" } },
    false,
  );
  if (values.help) return void console.log(USAGE);
  const frames = intArg("frames", values.frames, 20000, 1, 10_000_000);
  const host = new WirePeer();
  const reflecting = host.reflect();
  console.log(`pvdrv demo: host peer on udp 127.0.0.1:${host.port}; booting the lab (QEMU, TCG)...`);
  try {
    const r = await runInGuest(`PVDRV_DEMO_FRAMES=${frames} deno run -A --no-check lab/guest/demo.ts`, {
      wirePeerPort: host.port,
      guestPortForWire: host.guestPort,
    });
    const h = host.reflected;
    console.log(`\n== 5. the host's view ==`);
    console.log(
      `   the wire peer verified ${h.valid} frames from pvdrv (${h.corrupt} corrupt, ${h.foreign} other) and echoed them`,
    );
    console.log(`\nlab: boot ${r.bootSeconds.toFixed(1)} s, demo ${r.commandSeconds.toFixed(1)} s`);
    if (r.code !== 0) return r.code;
    return h.valid === frames && h.corrupt === 0 ? 0 : 1;
  } catch (e) {
    if (e instanceof LabError) {
      console.error(`lab: ${e.message}`);
      return 3;
    }
    throw e;
  } finally {
    host.close();
    await reflecting;
  }
});
