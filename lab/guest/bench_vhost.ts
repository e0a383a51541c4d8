/**
 * The guest half of `bench --vhost`: the same traffic, from the guest kernel's virtio_net, served on the host by
 * each backend in turn. For each cell it asks the host (through /out, lab/outer/qmp.ts) to put a backend on the
 * NIC, waits for the link, then either sends with `pvpeer txrate` (guest TX) or lets the host send (guest RX), and
 * counts on the interface's own counters (tx_packets, rx_packets), the same way for every backend. Prints one
 * `PVDRV-VHOST-BENCH {json}` line per cell.
 *
 *   deno run -A lab/guest/bench_vhost.ts SECONDS CELLS_JSON
 * @module
 */
import { VHOST_BENCH_DGRAM, VHOST_LAB } from "../topology.ts";
import { readDevice } from "../../ffi/sysfs.ts";

const OUT = "/out/qmp-requests";
const PVPEER = new URL("../../build/pvpeer", import.meta.url).pathname;

/** One measurement. */
export interface VhostCell {
  /** Who serves the NIC on the host. */
  backend: "pvdrv" | "dpdk" | "qemu";
  /** Guest TX or RX. */
  dir: "tx" | "rx";
  /** Frame size (without FCS). */
  size: number;
  /** Offered rate (guest TX only; 0: as fast as it goes). */
  rate: number;
}

async function ask(execute: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
  const name = `${execute}-${Date.now()}`;
  Deno.writeTextFileSync(`${OUT}/${name}.tmp`, JSON.stringify({ execute, arguments: args }));
  Deno.renameSync(`${OUT}/${name}.tmp`, `${OUT}/${name}.json`);
  for (let i = 0; i < 1200; i++) {
    try {
      const a = JSON.parse(Deno.readTextFileSync(`${OUT}/${name}.done`));
      if (a.error) throw new Error(`${execute}: ${a.error.desc}`);
      return a.return ?? {};
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the host did not answer ${execute}`);
}

function counter(dev: string, name: string): number {
  return Number(Deno.readTextFileSync(`/sys/class/net/${dev}/statistics/${name}`));
}

async function up(dev: string): Promise<void> {
  await new Deno.Command("ip", { args: ["link", "set", dev, "up"] }).output();
  for (let i = 0; i < 400; i++) {
    if (Deno.readTextFileSync(`/sys/class/net/${dev}/carrier`).trim() === "1") return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${dev}: no carrier 20 s after the backend started`);
}

const [secondsArg, cellsArg] = Deno.args;
const seconds = Number(secondsArg), cells = JSON.parse(cellsArg) as VhostCell[];
const vhostDev = readDevice(VHOST_LAB.kernelA.pci).netInterfaces[0];
const dgramDev = readDevice(VHOST_BENCH_DGRAM.pci).netInterfaces[0];
for (const c of cells) {
  const dev = c.backend === "qemu" ? dgramDev : vhostDev;
  const mac = Deno.readTextFileSync(`/sys/class/net/${dev}/address`).trim();
  await ask("pvdrv-vhost-backend", { ...c, mac });
  await up(dev);
  await new Promise((r) => setTimeout(r, 300)); // the backend's first frames settle
  const key = c.dir === "tx" ? "tx_packets" : "rx_packets";
  await ask("pvdrv-vhost-mark", {});
  const before = counter(dev, key), t0 = performance.now();
  if (c.dir === "tx") {
    const args = ["txrate", dev, String(seconds), String(c.size), "02:70:76:62:65:99"];
    if (c.rate) args.push(String(c.rate));
    await new Deno.Command(PVPEER, { args, stdout: "null", stderr: "inherit" }).output();
  } else {
    await new Promise((r) => setTimeout(r, seconds * 1000));
  }
  const frames = counter(dev, key) - before, t = (performance.now() - t0) / 1000;
  const host = await ask("pvdrv-vhost-mark", {});
  console.log(`PVDRV-VHOST-BENCH ${JSON.stringify({ ...c, frames, seconds: t, pps: frames / t, host })}`);
}
await ask("pvdrv-vhost-backend", { backend: "none" });
