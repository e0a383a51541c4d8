/**
 * The guest side of lab/c/mqpeer.c, the wire peer of the multi-queue TAP NIC (0000:00:0a.0): control frames
 * (ethertype 0x88b6, ASCII) that zero its counters, turn reflection on or off, ask for a blast of flow frames, and
 * read its counters back over the wire. Runs on any {@link Nic}; control frames go out on queue 0.
 * @module
 */
import type { Nic } from "../../drivers/net/nic.ts";
import type { PacketBuffer } from "../../drivers/net/packet_pool.ts";
import type { MqPeerCounts } from "../topology.ts";
import { MIN_FLOW_FRAME } from "../../apps/frames.ts";

/** Ethertype of mqpeer's control frames. */
export const MQ_CTRL_ETHERTYPE = 0x88b6;
const BROADCAST = new Uint8Array(6).fill(0xff);
const enc = new TextEncoder();
const dec = new TextDecoder();

/** mqpeer's counters as read by {@link MqPeerClient.stats}, with the TAP device's MAC. */
export interface MqPeerStats extends MqPeerCounts {
  /** Frames the TAP device took from QEMU (what the guest sent), counted by the host kernel; never zeroed. */
  tapRx: number;
  /** The peer's (TAP device's) MAC. */
  mac: Uint8Array;
}

/** Talks to mqpeer through a NIC on its link. */
export class MqPeerClient {
  readonly #bufs: PacketBuffer[] = [];
  #token = 0;
  /** Control frames sent so far (on queue 0). */
  sent = 0;

  /** Uses `nic` (owned by the caller). */
  constructor(readonly nic: Nic) {}

  /** Send control command `cmd` ("zero", "listen 0|1", "blast COUNT FLOWS FIRST SIZE PPS"). */
  async command(cmd: string): Promise<void> {
    const b = this.#bufs;
    for (let i = 0; this.nic.allocTx(b, 1, 0) === 0; i++) {
      if (i === 1000) throw new Error("mqpeer: no TX buffer for a control frame");
      this.nic.reclaimTx(0);
      await new Promise((r) => setTimeout(r, 1));
    }
    const f = b[0], text = enc.encode(cmd);
    f.data.fill(0, 0, 60);
    f.data.set(BROADCAST, 0);
    f.data.set(this.nic.mac, 6);
    f.data[12] = MQ_CTRL_ETHERTYPE >> 8;
    f.data[13] = MQ_CTRL_ETHERTYPE & 0xff;
    f.data.set(text, 14);
    f.length = Math.max(60, 14 + text.length + 1);
    // The ring may still be full of a flood's frames: wait for the device to complete some.
    for (let i = 0; this.nic.sendBatch(b, 1, 0) !== 1; i++) {
      if (i === 1000) {
        this.nic.release(b, 1, 0);
        throw new Error("mqpeer: the TX ring took no control frame in a second");
      }
      this.nic.reclaimTx(0);
      await new Promise((r) => setTimeout(r, 1));
    }
    this.sent++;
  }

  /**
   * Ask for `count` flow frames of `size` bytes, round-robin over flows `first`..`first + flows - 1`, at `pps`
   * frames/s (0: as fast as the TAP takes them); a new blast replaces a running one.
   */
  blast(o: { count: number; flows: number; first: number; size: number; pps: number }): Promise<void> {
    return this.command(`blast ${o.count} ${o.flows} ${o.first} ${o.size} ${o.pps}`);
  }

  /** End a running blast. */
  stopBlast(): Promise<void> {
    return this.blast({ count: 0, flows: 1, first: 0, size: MIN_FLOW_FRAME, pps: 0 });
  }

  /**
   * Return once the peer has acted on every command sent before (control frames go in order on queue 0, and
   * the peer answers in order): call it before closing the NIC, whose reset would drop a control frame still in
   * the TX ring. Received frames are released unread meanwhile, like {@link stats}.
   */
  async confirm(): Promise<void> {
    await this.stats();
  }

  /**
   * Ask for the peer's counters and wait for the reply on any queue (frames that are not the reply are released
   * unread: call it when the peer sends nothing else). Each request carries a new token, so a late reply to an
   * earlier request is never taken for this one. Retries every 500 ms; throws after `timeoutMs`.
   */
  async stats(timeoutMs = 5000): Promise<MqPeerStats> {
    const t0 = performance.now();
    const b = this.#bufs;
    while (performance.now() - t0 < timeoutMs) {
      const token = ++this.#token;
      await this.command(`stats ${token}`);
      const asked = performance.now();
      while (performance.now() - asked < 500) {
        for (let q = 0; q < this.nic.queues; q++) {
          const n = this.nic.receiveBatch(b, 32, q);
          let found: MqPeerStats | null = null;
          for (let i = 0; i < n && !found; i++) found = parseStats(b[i].data, b[i].length, token);
          this.nic.release(b, n, q);
          if (found) return found;
        }
        await new Promise((r) => setTimeout(r, 1));
      }
    }
    throw new Error(`mqpeer: no stats reply in ${timeoutMs} ms`);
  }
}

/** mqpeer's "stats TOKEN …" control frame answering `token`, or null when `d[0..len)` is something else. */
export function parseStats(d: Uint8Array, len: number, token: number): MqPeerStats | null {
  if (len < 20 || d[12] !== MQ_CTRL_ETHERTYPE >> 8 || d[13] !== (MQ_CTRL_ETHERTYPE & 0xff)) return null;
  const end = d.indexOf(0, 14);
  const words = dec.decode(d.subarray(14, end < 0 || end > len ? len : end)).split(" ");
  if (words[0] !== "stats" || words.length !== 11) return null;
  const n = words.slice(1).map(Number);
  if (!n.every((x) => Number.isSafeInteger(x) && x >= 0) || n[0] !== token) return null;
  const [, valid, corrupt, foreign, bytes, reflected, blasted, dropped, tapRx, socketDrops] = n;
  return {
    valid,
    corrupt,
    foreign,
    bytes,
    reflected,
    blasted,
    dropped,
    tapRx,
    socketDrops,
    mac: d.slice(6, 12),
  };
}
