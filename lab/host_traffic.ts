/**
 * The host's side of the VM benchmark: build/pvhost (lab/pvhost.c), a C sink on the host ends of 0000:00:06.0 and
 * 0000:00:09.0 and a C blaster into 0000:00:06.0, so counts never come from the driver under test. It prints
 * cumulative counters every 20 ms; {@link HostTraffic} keeps them as samples for {@link windowRates}.
 * @module
 */
import { buildLabTool, freeUdpPort } from "./qemu.ts";

/** One counter sample from pvhost. */
export interface HostSample {
  /** Host monotonic seconds (pvhost's clock). */
  t: number;
  /** Frames counted from 0000:00:06.0. */
  sink1: number;
  /** Frames counted from 0000:00:09.0. */
  sink2: number;
  /** Frames the blaster has sent. */
  blasted: number;
}

/** The running host tool. */
export class HostTraffic {
  /** Port of the 0000:00:06.0 sink (pass as `hostPeerPort`). */
  readonly sink1Port = freeUdpPort();
  /** Port of the 0000:00:09.0 sink (pass as `forwardSinkPort`). */
  readonly sink2Port = freeUdpPort();
  /** Port QEMU listens on for 0000:00:06.0 (pass as `guestPortForHost`). */
  readonly guestPort = freeUdpPort();
  /** Every sample so far. */
  readonly samples: HostSample[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #done: Promise<void>;
  #offset = 0; // pvhost clock minus performance.now() seconds, at the latest sample

  /** Build (if needed) and start pvhost. */
  constructor() {
    const tool = buildLabTool("pvhost");
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

  /** Now, on pvhost's clock (seconds). */
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

/** Median, min and max of some windows' rates. */
export interface RateSummary {
  /** Median rate (frames/s). */
  median: number;
  /** Slowest window. */
  min: number;
  /** Fastest window. */
  max: number;
  /** Every window's rate, in order. */
  windows: number[];
}

/** Summarize per-window rates. */
export function summarize(windows: number[]): RateSummary {
  if (!windows.length) return { median: 0, min: 0, max: 0, windows };
  const s = [...windows].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { median, min: s[0], max: s.at(-1)!, windows };
}

/**
 * Rates of `count` over `n` equal windows of [from, to] (seconds), each from the samples nearest its edges;
 * windows without samples on both sides are left out.
 */
export function windowRates(
  samples: HostSample[],
  count: (s: HostSample) => number,
  from: number,
  to: number,
  n: number,
): number[] {
  const at = (t: number): HostSample | undefined => {
    let best: HostSample | undefined, bestD = Infinity;
    for (const s of samples) {
      const d = Math.abs(s.t - t);
      if (d < bestD) [best, bestD] = [s, d];
    }
    return bestD <= 0.05 ? best : undefined;
  };
  const out: number[] = [];
  const w = (to - from) / n;
  for (let i = 0; i < n; i++) {
    const a = at(from + i * w), b = at(from + (i + 1) * w);
    if (a && b && b.t > a.t) out.push((count(b) - count(a)) / (b.t - a.t));
  }
  return out;
}
