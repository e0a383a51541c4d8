/**
 * The host's transmit side: frames are written into TX buffers taken one at a time, queued, and sent together
 * with one doorbell, once per received batch (or at once outside it). What the ring does not take is given back
 * and counted; nothing is allocated per frame.
 * @module
 */
import type { Nic } from "../drivers/net/nic.ts";
import type { PacketBuffer } from "../drivers/net/packet_pool.ts";
import type { HostStats } from "./host_stats.ts";

/** Frames queued before a doorbell at the most (a received batch's replies fit). */
export const TX_BATCH = 64;

/** A batch of frames on their way out of one NIC queue. */
export class TxBatch {
  readonly #tx: PacketBuffer[] = new Array(TX_BATCH);
  readonly #one: PacketBuffer[] = new Array(1);
  #n = 0;
  /** Inside a received batch: {@link TxBatch.flushOutside} waits for the batch's own flush. */
  inBatch = false;

  /** Sends on `queue` of `nic`, counting in `stats`. */
  constructor(readonly nic: Nic, readonly queue: number, readonly stats: HostStats) {}

  /** A TX buffer for one frame, or null (counted in txDropped) when none is free. */
  take(): PacketBuffer | null {
    if (this.#n === TX_BATCH) this.flush();
    if (this.nic.allocTx(this.#one, 1, this.queue) === 0) {
      this.stats.txDropped++;
      return null;
    }
    return this.#one[0]; // fresh from the pool: length, flags and offload fields cleared
  }

  /** Queue a written frame for the next doorbell. */
  push(b: PacketBuffer): void {
    this.#tx[this.#n++] = b;
  }

  /** Send the queued frames with one doorbell; what the ring does not take is released and counted. */
  flush(): void {
    const n = this.#n;
    if (n === 0) return;
    this.#n = 0;
    const tx = this.#tx;
    let k = 0;
    try {
      k = this.nic.sendBatch(tx, n, this.queue);
    } finally {
      if (k < n) {
        for (let i = k; i < n; i++) tx[i - k] = tx[i];
        this.nic.release(tx, n - k, this.queue);
        this.stats.txDropped += n - k;
      }
      this.stats.txFrames += k;
    }
  }

  /** Flush now unless inside a received batch, which flushes once at its end. */
  flushOutside(): void {
    if (!this.inBatch) this.flush();
  }

  /** Return an unsent buffer taken with {@link TxBatch.take}. */
  giveBack(b: PacketBuffer): void {
    this.#one[0] = b;
    this.nic.release(this.#one, 1, this.queue);
  }
}
