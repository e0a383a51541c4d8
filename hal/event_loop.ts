/**
 * Yielding to Deno's event loop from a busy driver loop.
 * @module
 */

/**
 * Let timers and I/O run, then continue. setImmediate costs a few µs; a chained `setTimeout(0)` is clamped to
 * >= 4 ms by Deno (the HTML nesting rule), which would cap a loop that yields often.
 */
export const tick = (): Promise<void> => new Promise<void>((r) => globalThis.setImmediate(r));
