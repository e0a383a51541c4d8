/**
 * The fuzzer's oracle, shared by every target: the seeded PRNG, the outcome classes, and the classifier that turns
 * what an iteration threw into one of them (see fuzz.ts for what each class means).
 * @module
 */
import { VirtqueueError } from "../../drivers/virtio/virtqueue.ts";
import { VirtioError } from "../../drivers/virtio/transport.ts";
import { PciConfigError } from "../../drivers/pci/config.ts";
import { RingError } from "../../drivers/xen/ring.ts";
import { XenStoreError } from "../../drivers/xen/xenstore.ts";
import { RegionBoundsError } from "../../hal/mmio.ts";

/** Outcome classes. */
export type Outcome = "ok" | "clean-break" | "other-exception" | "hang" | "silent" | "leak" | "memory";
/** The outcomes that fail a run. */
export const BAD: Outcome[] = ["other-exception", "hang", "silent", "leak", "memory"];

/** What one target did. */
export interface TargetReport {
  /** Target name. */
  target: string;
  /** Iterations run (a fresh model and driver each). */
  iterations: number;
  /** Hostile-run events: steps, frames moved, and (virtio-race) bytes flipped. */
  events: number;
  /** Iterations per outcome. */
  counts: Record<Outcome, number>;
  /** First few bad outcomes, each reproducible. */
  failures: { outcome: Outcome; seed: number; iteration: number; event: number; detail: string }[];
  /** Heap growth between the first and last tenth of the run, after GC (0.05 = 5%). */
  heapGrowth: number;
  /** Wall time. */
  seconds: number;
}

/** A small seeded PRNG (mulberry32). */
export class Rng {
  #s: number;
  /** A generator whose whole sequence follows from `seed`. */
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform integer in lo..hi (both included). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  /** True with probability `p`. */
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  /** One element of `a`. */
  pick<T>(a: readonly T[]): T {
    return a[Math.floor(this.next() * a.length)];
  }
}

/** Error classes a driver refuses with: a clean break, not a crash. */
export const CLEAN = [
  VirtqueueError,
  VirtioError,
  PciConfigError,
  RegionBoundsError,
  RingError,
  XenStoreError,
];
/** Whether `e` is a clean refusal: one of {@link CLEAN}, with a message. */
export function isClean(e: unknown): boolean {
  return CLEAN.some((c) => e instanceof c) && !!(e as Error).message;
}

/** One iteration's result. */
export interface Result {
  outcome: Outcome;
  events: number;
  event: number;
  detail: string;
}

/** The driver accepted what it should not: thrown by an oracle check. */
export class Silent extends Error {}
/** Something stayed allocated after close: thrown by an oracle check. */
export class Leak extends Error {}

/** Bound an async step: a step that never settles is a hang. */
export async function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, rej) => timer = setTimeout(() => rej(new Hang(what)), ms));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}
/** A step did not finish within its bound. */
export class Hang extends Error {}

/** The outcome of an iteration that threw `e` at `event` of `events`. */
export function classify(e: unknown, events: number, event: number): Result {
  if (e instanceof Silent) return { outcome: "silent", events, event, detail: e.message };
  if (e instanceof Leak) return { outcome: "leak", events, event, detail: e.message };
  if (e instanceof Hang) return { outcome: "hang", events, event, detail: e.message };
  if (isClean(e)) return { outcome: "clean-break", events, event, detail: (e as Error).message };
  const err = e as Error;
  return {
    outcome: "other-exception",
    events,
    event,
    detail: `${err?.name}: ${err?.message}\n${err?.stack ?? ""}`,
  };
}

/**
 * The end of an iteration: run `teardown` (close the driver, give back what the harness holds), then require the
 * model's DMA memory to be all freed. A failure there turns an ok or clean-break result into a leak (or whatever
 * it threw); a worse result stands.
 */
export async function finishIteration(
  result: Result,
  events: number,
  step: number,
  dma: { live: number; kept: number },
  teardown: () => void | Promise<void>,
): Promise<Result> {
  try {
    await teardown();
    if (dma.live !== 0 || dma.kept !== 0) {
      throw new Leak(`after close: ${dma.live} DMA regions live, ${dma.kept} kept`);
    }
  } catch (e) {
    if (result.outcome === "ok" || result.outcome === "clean-break") result = classify(e, events, step);
  }
  result.events = events;
  return result;
}
