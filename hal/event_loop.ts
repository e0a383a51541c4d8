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
