/** An in-process interrupt source for device models. */
import type { IrqSource } from "../../hal/irq.ts";

/** Signals from a model, awaited by a driver. */
export class ModelIrq implements IrqSource {
  #pending = 0;
  #waiters: (() => void)[] = [];
  /** Times the model raised it. */
  raised = 0;
  /**
   * Runs while a driver blocks in {@link waitSync}: what the device does during that sleep (a model shares the
   * driver's thread, so nothing else can).
   */
  whileBlocked: (() => void) | null = null;
  /** Raise the interrupt. */
  signal(): void {
    this.raised++;
    this.#pending++;
    const w = this.#waiters.splice(0);
    for (const f of w) f();
  }
  async wait(): Promise<void> {
    while (!this.poll()) await new Promise<void>((r) => this.#waiters.push(r));
  }
  waitSync(_timeoutMs: number): boolean {
    this.whileBlocked?.();
    return this.poll();
  }
  poll(): boolean {
    if (this.#pending === 0) return false;
    this.#pending = 0;
    return true;
  }
  close(): void {}
}
