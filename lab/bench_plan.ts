/**
 * What `deno task bench --vm` measures, shared by the host (which counts) and the guest (which drives): the
 * matrix of drivers, frame sizes and batch sizes, the measuring windows, and the console lines the two exchange.
 * @module
 */

/** The drivers compared on the same NIC in one boot. */
export type BenchDriver = "pvdrv" | "pvdrv-packed" | "testpmd" | "kernel" | "pktgen";
/** What a row measures: frames sent (host-counted), received, or forwarded from 0000:00:06.0 to 0000:00:09.0. */
export type BenchTest = "tx" | "rx" | "fwd";

/** The measuring plan. */
export interface BenchPlan {
  /** Frame sizes (bytes, without FCS). */
  sizes: number[];
  /** Burst/batch sizes. */
  batches: number[];
  /** Windows per measurement in each round (a cell's median, min and max are over all its rounds' windows). */
  windows: number;
  /**
   * Rounds: pvdrv and testpmd take the NIC in turn (pvdrv, testpmd, pvdrv, testpmd, …), each round measuring
   * every cell, so a cell's ratio is the median of per-round ratios of neighbours in time, with their spread.
   */
  rounds: number;
  /** Whether pvdrv also runs each round on packed rings (virtio 1.2 §2.8), right after its split-ring cells. */
  packed: boolean;
  /** Seconds per window. */
  windowSec: number;
  /** Seconds before the first window (ramp-up; discarded). */
  warmSec: number;
  /** Seconds pvdrv runs its paths unmeasured before its first phase (V8 compiles them meanwhile). */
  warmupSec: number;
  /** Frames/s the host blaster offers for RX and forwarding (more than any driver here takes). */
  offered: number;
  /** Fixed offered rates for CPU per packet (frames/s). */
  cpuRates: number[];
  /** Seconds of each CPU measurement. */
  cpuSec: number;
}

/** The full matrix (about 12 minutes of guest time). */
export const FULL_PLAN: BenchPlan = {
  sizes: [64, 1514],
  batches: [1, 8, 32, 128, 256],
  windows: 2,
  rounds: 3,
  packed: true,
  windowSec: 1,
  warmSec: 0.5,
  warmupSec: 4,
  offered: 300_000,
  cpuRates: [10_000, 50_000],
  cpuSec: 3,
};

/** A smoke-sized plan (one size, one batch, short windows): proves the machinery, not the numbers. */
export const QUICK_PLAN: BenchPlan = {
  sizes: [64],
  batches: [32],
  windows: 3,
  rounds: 2,
  packed: true,
  windowSec: 0.4,
  warmSec: 0.3,
  warmupSec: 2,
  offered: 100_000,
  cpuRates: [10_000],
  cpuSec: 1,
};

/** One measured cell of the matrix. */
export interface BenchRow {
  /** What was measured. */
  test: BenchTest;
  /** Who drove the NIC. */
  driver: BenchDriver;
  /** Frame size. */
  size: number;
  /** Batch (burst) size. */
  batch: number;
  /** Frames/s per window. */
  windows: number[];
  /** The round (1-based) of pvdrv's and testpmd's rows; the kernel's and pktgen's run once, in round 1. */
  round: number;
  /** Frames/s the host offered (rx, fwd). */
  offered?: number;
  /** Where the count came from. */
  countedBy: string;
}

/** CPU per packet at a fixed offered receive rate. */
export interface CpuRow {
  /** "pvdrv-poll", "pvdrv-irq", "testpmd" or "kernel". */
  mode: string;
  /** Offered frames/s. */
  rate: number;
  /** Frames the driver received in the window. */
  received: number;
  /** Window seconds. */
  seconds: number;
  /** Guest CPU seconds (all CPUs, /proc/stat non-idle) in the window. */
  busySeconds: number;
}

/** Guest → host console lines. */
export const LINE = {
  /** `PVDRV-PHASE <test> <driver> <size> <batch> <round>`: a measured phase starts (the host marks its clock). */
  phase: "PVDRV-PHASE",
  /** The phase ended. */
  phaseEnd: "PVDRV-PHASE-END",
  /** `PVDRV-BLAST <rate> <size> <mac>`: the host blaster starts; `PVDRV-BLAST-STOP` stops it. */
  blast: "PVDRV-BLAST",
  /** See blast. */
  blastStop: "PVDRV-BLAST-STOP",
  /** `PVDRV-RESULT <json>`: a row the guest measured itself (rx, cpu). */
  result: "PVDRV-RESULT",
  /** Every phase ran. */
  done: "PVDRV-BENCH-DONE",
} as const;
