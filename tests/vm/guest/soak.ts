/**
 * The soak, inside the lab guest: rounds of traffic both ways between pvdrv and the guest kernel, on both
 * transports (VFIO modern, UIO legacy) in polling and interrupt mode (MSI-X, INTx), frames of 60–1514 bytes, every
 * one verified by the side that receives it. Each configuration opens its NIC, moves its frames and closes it, so
 * teardown is soaked too. Between rounds, with every NIC closed, it samples the heap (after GC), RSS, open fds,
 * live DMA regions and free huge pages. Passes when nothing was lost or corrupt and the figures sampled after the
 * warm-up (the first quarter of the run) are flat (see {@link flat}).
 *
 * `deno run -A --v8-flags=--expose-gc tests/vm/guest/soak.ts --minutes N [--sample-seconds S] [--frames F]`
 * @module
 */
import { parseArgs } from "parse-args";
import { VirtioNet } from "../../../drivers/virtio/net.ts";
import { UioPciFunction, VfioPciFunction } from "../../../ffi/pci.ts";
import { parseMac } from "../../../drivers/net/nic.ts";
import { generate, receive } from "../../../apps/traffic.ts";
import { ensureBound, LAB } from "./env.ts";
import { kernelInterface, Peer } from "../../../lab/guest/kernel_peer.ts";
import type { PciFunction } from "../../../hal/pci.ts";
import type { IrqMode } from "../../../drivers/net/nic.ts";

const WINDOW = 64;

/** One sample between rounds. */
export interface SoakSample {
  /** Seconds since the soak started. */
  seconds: number;
  /** V8 heap in use after GC (bytes). */
  heap: number;
  /** Resident set size (bytes). */
  rss: number;
  /** Open file descriptors. */
  fds: number;
  /** DMA regions still live (every NIC is closed between rounds: 0). */
  dmaRegions: number;
  /** Free huge pages (UIO's DMA memory goes back to this pool). */
  hugePagesFree: number;
}

interface Config {
  name: string;
  pci: string;
  peer: string;
  irq: IrqMode;
  open: (pci: string) => PciFunction;
}

const vfio = (pci: string) => {
  ensureBound(pci, "vfio-pci");
  return VfioPciFunction.open(pci);
};
const uio = (pci: string) => {
  ensureBound(pci, "uio_pci_generic");
  return UioPciFunction.open(pci);
};

const CONFIGS: Config[] = [
  { name: "vfio poll", pci: LAB.vfioKernelPeer.pci, peer: LAB.kernelPeer.pci, irq: "poll", open: vfio },
  { name: "vfio msix", pci: LAB.vfioKernelPeer.pci, peer: LAB.kernelPeer.pci, irq: "msix", open: vfio },
  { name: "uio poll", pci: LAB.uioKernelPeer.pci, peer: LAB.uioPeer.pci, irq: "poll", open: uio },
  { name: "uio intx", pci: LAB.uioKernelPeer.pci, peer: LAB.uioPeer.pci, irq: "intx", open: uio },
];

/** DMA regions live across every allocator opened so far (all NICs closed between rounds: must be 0). */
let liveRegions = 0;

async function round(
  c: Config,
  frames: number,
): Promise<{ lost: number; corrupt: number }> {
  const k = await kernelInterface(c.peer);
  const pci = c.open(c.pci);
  const nic = VirtioNet.openPci(pci, { ownsPci: true, irq: c.irq });
  try {
    const kr = new Peer(["recv", k.name, String(frames), "15000", "16"]);
    await kr.ready;
    await generate(nic, {
      count: frames,
      minSize: 60,
      maxSize: 1514,
      dst: parseMac(k.mac),
      window: kr.window(WINDOW), // each round has its own peer, counting sequence numbers from 0
    });
    const got = await kr.result();
    const mac = Array.from(nic.mac, (b) => b.toString(16).padStart(2, "0")).join(":");
    const ks = new Peer(["send", k.name, String(frames), "60", "1514", mac, String(WINDOW)]);
    const rx = await receive(nic, {
      count: frames,
      idleTimeoutMs: 15000,
      progressEvery: 16,
      interrupts: c.irq !== "poll",
      onProgress: (ok) => ks.ack(ok),
    });
    await ks.result();
    return {
      lost: (frames - got.received) + (frames - rx.received),
      corrupt: got.corrupt + rx.corrupt + rx.duplicate + got.duplicate,
    };
  } finally {
    nic.close();
    liveRegions = (pci.dma as { live?: number }).live ?? 0;
  }
}

function sample(t0: number): SoakSample {
  (globalThis as { gc?: () => void }).gc?.();
  const m = Deno.memoryUsage();
  const meminfo = Deno.readTextFileSync("/proc/meminfo");
  return {
    seconds: Math.round((performance.now() - t0) / 1000),
    heap: m.heapUsed,
    rss: m.rss,
    fds: [...Deno.readDirSync("/proc/self/fd")].length,
    dmaRegions: liveRegions,
    hugePagesFree: Number(meminfo.match(/HugePages_Free:\s+(\d+)/)?.[1] ?? -1),
  };
}

/**
 * Whether the figures sampled after the warm-up are flat: none grows in the later half of them by more than 5% over
 * its highest value in the earlier half (a leak grows; V8 and malloc make RSS wander below its high-water mark).
 * RSS is judged only in runs of 10 minutes or more: in shorter ones V8 is still growing its heap spaces.
 */
export function flat(
  samples: SoakSample[],
  warmupSeconds: number,
  judgeRss: boolean,
): { ok: boolean; detail: string } {
  const after = samples.filter((s) => s.seconds >= warmupSeconds);
  if (after.length < 2) return { ok: false, detail: `only ${after.length} sample(s) after the warm-up` };
  const half = Math.max(1, Math.floor(after.length / 2));
  const early = after.slice(0, half), late = after.slice(half);
  const bad: string[] = [];
  const keys = ["heap", "fds", "dmaRegions", "hugePagesFree", ...(judgeRss ? ["rss" as const] : [])] as const;
  for (const key of keys) {
    const e = Math.max(...early.map((s) => s[key])), l = Math.max(...late.map((s) => s[key]));
    const lo = Math.min(...after.map((s) => s[key]));
    if (key === "hugePagesFree" ? lo < e * 0.95 : e === 0 ? l !== 0 : l > e * 1.05) {
      bad.push(`${key}: ${e} in the earlier half, ${key === "hugePagesFree" ? lo : l} later`);
    }
  }
  return { ok: bad.length === 0, detail: bad.length ? bad.join("; ") : `flat (${keys.join(", ")})` };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      minutes: { type: "string" },
      "sample-seconds": { type: "string" },
      frames: { type: "string" },
    },
  });
  const minutes = Number(values.minutes ?? 1);
  const every = Number(values["sample-seconds"] ?? (minutes <= 2 ? 10 : 60));
  const frames = Number(values.frames ?? 5000);
  const t0 = performance.now(), end = t0 + minutes * 60_000;
  const samples: SoakSample[] = [];
  let rounds = 0, moved = 0, lost = 0, corrupt = 0, nextSample = 0;
  while (performance.now() < end || samples.length < 3) {
    for (const c of CONFIGS) {
      const r = await round(c, frames);
      moved += 2 * frames;
      lost += r.lost;
      corrupt += r.corrupt;
    }
    rounds++;
    if (performance.now() - t0 >= nextSample * 1000 || performance.now() >= end) {
      const s = sample(t0);
      samples.push(s);
      console.log(
        `soak sample ${s.seconds} s: heap ${(s.heap / 1e6).toFixed(1)} MB, rss ${
          (s.rss / 1e6).toFixed(1)
        } MB, ` +
          `fds ${s.fds}, DMA regions ${s.dmaRegions}, huge pages free ${s.hugePagesFree}`,
      );
      nextSample = s.seconds + every;
    }
  }
  const f = flat(samples, minutes * 60 / 4, minutes >= 10);
  const ok = lost === 0 && corrupt === 0 && f.ok;
  console.log(JSON.stringify({ minutes, rounds, moved, lost, corrupt, samples, flat: f }));
  console.log(
    `soak (${minutes} min, ${rounds} rounds of ${CONFIGS.map((c) => c.name).join(", ")}; ${moved} frames, ` +
      `${lost} lost, ${corrupt} corrupt; ${f.detail}) ... ${ok ? "ok" : "FAILED"}`,
  );
  Deno.exit(ok ? 0 : 1);
}
