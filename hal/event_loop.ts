/**
 * Yielding to Deno's event loop from a busy driver loop.
 * @module
 */

/**
 * Let timers and I/O run, then continue. setImmediate costs a few µs; a chained `setTimeout(0)` is clamped to
 * >= 4 ms by Deno (the HTML nesting rule), which would cap a loop that yields often.
 */
export const tick = (): Promise<void> => new Promise<void>((r) => globalThis.setImmediate(r));

/** Items (frames, requests) a busy loop handles between yields: enough to amortise a yield, few enough for I/O. */
export const ITEMS_PER_YIELD = 4096;
/** Empty polls of an idle, busy-polled ring between yields. */
export const EMPTY_POLLS_PER_YIELD = 64;
/** Longest a loop blocks its thread in one in-thread interrupt sleep (ms); an idle slice lets the event loop run. */
export const SLEEP_SLICE_MS = 10;

/**
 * The one yield policy of every loop that polls a device (receive, count, forward, the network host, the TAP
 * bridge): after each poll, `due(n)` says whether to `await tick()` now — once per {@link ITEMS_PER_YIELD} items
 * handled, or once per `emptyPerYield` polls that found nothing. Counting, never the clock or a timer: reading the
 * clock costs more than a small batch, and Deno clamps chained timers to >= 4 ms.
 */
export class Pacer {
  #items = 0;
  #empty = 0;

  /** A pacer yielding every `emptyPerYield` empty polls (a stalled sender waits longer: its device is busy). */
  constructor(readonly emptyPerYield: number = EMPTY_POLLS_PER_YIELD) {}

  /** After a poll that handled `n` items: true when the loop should yield now. */
  due(n: number): boolean {
    if (n > 0) {
      if ((this.#items += n) < ITEMS_PER_YIELD) return false;
    } else if (++this.#empty < this.emptyPerYield) return false;
    this.#items = 0;
    this.#empty = 0;
    return true;
  }
}

/**
 * Fewest polls (or frames) between clock reads in a polling loop: performance.now() costs ≈ 90 ns natively, more
 * than a driver's work for a frame, so a loop that read it per batch of 1 would mostly measure the clock.
 */
export const CLOCK_EVERY = 64;
/** A polling loop reads the clock about this often (ms); see {@link PollClock}. */
const CLOCK_MS = 4;

/**
 * The clock of a polling loop, read about every {@link CLOCK_MS} rather than per poll or batch: the polls (or
 * frames) between reads follow the loop's own pace, from {@link CLOCK_EVERY} to 8192, since a read may cost far
 * more than a poll — ≈ 90 ns natively, ≈ 0.1 ms in the lab VM, whose clock is the emulated HPET (a third of the
 * TX path's time there, read per poll; an eighth, read every 64 frames).
 */
export class PollClock {
  #every = CLOCK_EVERY;
  #left = CLOCK_EVERY;
  #at: number;
  /** The time (performance.now() ms) as last read. */
  now: number;

  /** A clock read once now. */
  constructor() {
    this.now = this.#at = performance.now();
  }

  /** Count `n` polls or frames; true when that made the clock due and {@link now} was read again. */
  advance(n = 1): boolean {
    if ((this.#left -= n) > 0) return false;
    const now = performance.now(), counted = this.#every - this.#left;
    const perMs = counted / Math.max(now - this.#at, 0.001);
    this.#every = Math.min(8192, Math.max(CLOCK_EVERY, Math.floor(perMs * CLOCK_MS)));
    this.#left = this.#every;
    this.#at = this.now = now;
    return true;
  }

  /**
   * Read the clock now (a loop that needs the exact time, e.g. when frames came), or take `now` if the caller just
   * read it; the count starts again.
   */
  read(now: number = performance.now()): number {
    this.now = this.#at = now;
    this.#left = this.#every;
    return this.now;
  }
}

/**
 * V8 flags for a process that runs a driver loop: a 16 MiB young generation (each of its two semi-spaces). A
 * polling or interrupt-driven loop yields to the event loop about once a millisecond while traffic flows, and each
 * yield allocates ≈ 0.6–0.9 kB inside Deno's `setImmediate` (measured); with V8's default young generation (it
 * stays near 1 MiB while little survives) that meant a scavenge every second or so, 11–13 ms each in the TCG lab,
 * which is what put pvdrv's ping p99 above the kernel's (docs/benchmarks.md). 16 MiB moves them to one every
 * 10–20 s of traffic. The tasks in deno.json and the lab's task runner pass these; an application embedding pvdrv
 * passes them to `deno run --v8-flags=`.
 */
export const DRIVER_V8_FLAGS: readonly string[] = ["--min-semi-space-size=16", "--max-semi-space-size=16"];
