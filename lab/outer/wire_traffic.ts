/**
 * The host's side of the VM benchmark: build/pvwire (lab/c/pvwire.c), a C sink on the host ends of 0000:00:06.0 and
 * 0000:00:09.0 and a C blaster into 0000:00:06.0, so counts never come from the driver under test. It prints
 * cumulative counters every 20 ms; {@link WireTraffic} keeps them as samples for {@link windowRates}.
 * @module
 */
import { buildLabTool } from "./build_c.ts";
import { freeUdpPort } from "./wire_peer.ts";
import type { WireSample } from "../bench_stats.ts";

export { type RateSummary, summarize, windowRates, type WireSample } from "../bench_stats.ts";

/** The running wire tool (pvwire) on the outer ends of the benchmark's wires. */
export class WireTraffic {
  /** Port of the 0000:00:06.0 sink (pass as `wirePeerPort`). */
  readonly sink1Port = freeUdpPort();
  /** Port of the 0000:00:09.0 sink (pass as `forwardSinkPort`). */
  readonly sink2Port = freeUdpPort();
  /** Port QEMU listens on for 0000:00:06.0 (pass as `guestPortForWire`). */
  readonly guestPort = freeUdpPort();
  /** Every sample so far. */
  readonly samples: WireSample[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #done: Promise<void>;
  #offset = 0; // pvwire clock minus performance.now() seconds, at the latest sample

  /** Build (if needed) and start pvwire. */
  constructor() {
    const tool = buildLabTool("pvwire");
    this.#child = new Deno.Command(tool, {
      args: [String(this.sink1Port), String(this.sink2Port), String(this.guestPort)],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    this.#done = this.#read();
  }

  async #read(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of this.#child.stdout) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const f = buf.slice(0, i).split(" ");
        buf = buf.slice(i + 1);
        if (f[0] !== "s" || f.length !== 7) continue;
        const t = Number(f[1]);
        this.#offset = t - performance.now() / 1000;
        this.samples.push({ t, sink1: Number(f[2]), sink2: Number(f[3]), blasted: Number(f[6]) });
      }
    }
  }

  /** Now, on pvwire's clock (seconds). */
  now(): number {
    return performance.now() / 1000 + this.#offset;
  }

  /** Start blasting `size`-byte test frames to `mac` at `rate` frames/s (0: as fast as the host can). */
  blast(rate: number, size: number, mac: string): void {
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac) || !(size >= 60 && size <= 1518) || !(rate >= 0)) {
      throw new RangeError(`bad blast request: rate ${rate}, size ${size}, mac ${mac}`);
    }
    this.#write(`blast ${Math.round(rate)} ${size} ${mac}\n`);
  }

  /** Stop blasting. */
  stopBlast(): void {
    this.#write("stop\n");
  }

  #write(s: string): void {
    this.#stdin.write(new TextEncoder().encode(s)).catch(() => {});
  }

  /** Stop the tool (closing its stdin ends it). */
  async close(): Promise<void> {
    try {
      await this.#stdin.close();
    } catch { /* gone */ }
    await this.#done;
    await this.#child.status;
  }
}
