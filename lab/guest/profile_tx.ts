/**
 * Where pvdrv's TX time goes inside the lab VM: `deno task vm -- deno run -A lab/guest/profile_tx.ts [--batch N]
 * [--size N] [--seconds N] [--ring split|packed]` binds 0000:00:04.0 (a lab NIC whose frames go to the guest
 * kernel's 0000:00:05.0) to vfio-pci, warms the TX path up, then sends header-only frames under V8's sampling
 * profiler and prints the rate, the doorbells per frame and self time per function (lab/profile.ts). The same
 * frames as `bench --vm`'s TX cells; what it names is where a cell's time goes.
 * @module
 */
import { parseArgs } from "node:util";
import { bindDevice } from "../../system/bind.ts";
import { VfioPciFunction } from "../../ffi/pci.ts";
import { type RingFormat, VirtioNet } from "../../drivers/virtio/net.ts";
import { parseMac } from "../../drivers/net/nic.ts";
import { generate } from "../../apps/traffic.ts";
import { LAB } from "../topology.ts";
import { profiled, profileTable, selfTime } from "../profile.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    batch: { type: "string" },
    size: { type: "string" },
    seconds: { type: "string" },
    ring: { type: "string" },
  },
});
const batch = Number(values.batch ?? 32),
  size = Number(values.size ?? 64),
  seconds = Number(values.seconds ?? 5);
const ring = (values.ring ?? "split") as RingFormat;
const NIC = LAB.vfioKernelPeer.pci;
bindDevice(NIC, "vfio-pci", { force: true }); // a lab NIC of this guest
const nic = VirtioNet.openPci(VfioPciFunction.open(NIC), { ownsPci: true, ring });
try {
  const o = { count: 2 ** 31 - 1, minSize: size, maxSize: size, dst: parseMac("02:00:00:00:00:fe"), batch };
  await generate(nic, { ...o, headerOnly: true, durationMs: 3000 }); // warm-up: V8 compiles the path
  const before = nic.stats()[0];
  let sent = 0;
  const profile = await profiled(async () => {
    sent = (await generate(nic, { ...o, headerOnly: true, durationMs: seconds * 1000 })).sent;
  });
  const after = nic.stats()[0];
  console.log(
    `pvdrv TX on ${ring} rings, ${size}-byte frames, batch ${batch}: ${
      (sent / seconds / 1000).toFixed(1)
    }k frames/s, ` +
      `${((after.notifications - before.notifications) / sent).toFixed(3)} doorbells per frame`,
  );
  console.log(profileTable(selfTime(profile, 15)));
} finally {
  await nic.close();
}
