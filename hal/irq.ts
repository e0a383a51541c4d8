/**
 * The interrupt seam: an {@link IrqSource} is something a driver awaits (an MSI-X vector or the INTx line through
 * VFIO, /dev/uioN, a Xen event channel, a model's signal). Real sources share one parked poll() per process
 * (ffi/irq.ts).
 * @module
 */

/** Something a driver can await: an interrupt vector, an event channel. */
export interface IrqSource {
  /** Resolves at the next signal (signals that arrived since the last wait count). */
  wait(): Promise<void>;
  /** Consume a pending signal without waiting; true if there was one. */
  poll(): boolean;
  /**
   * Block the calling thread (its event loop too) until a signal arrives or `timeoutMs` passes; true when a
   * signal was consumed. For dedicated receive loops: one poll() syscall, no thread hop. An in-process source
   * cannot be signalled while its thread blocks, so it only polls. With `alsoFd` (a file descriptor, real sources
   * only) the sleep also ends when that becomes readable: a bridge sleeps on its NIC and its TAP at once.
   */
  waitSync(timeoutMs: number, alsoFd?: number): boolean;
  /** Stop waiting and release the source. */
  close(): void;
}
