/**
 * A wire between two virtio-net device models: what one sends the other receives. It completes checksums the way a
 * device does for frames sent with VIRTIO_NET_HDR_F_NEEDS_CSUM (virtio 1.2 §5.1.6.2), and lets a test drop or
 * rewrite frames in flight, or inject its own.
 */
import type { VirtioNetModel } from "./virtio_net_device.ts";

/** csum_offset of UDP's checksum field within its header (TCP's is 16). */
const UDP_CSUM_OFFSET = 6;

/** One direction's hook: return null to drop the frame, or the frame to deliver (possibly rewritten). */
export type Tap = (frame: Uint8Array) => Uint8Array | null;

/** Complete a NEEDS_CSUM frame as the device would: sum from csum_start to the end into csum_start + offset. */
export function completeDeviceChecksum(header: Uint8Array, frame: Uint8Array): void {
  if (!(header[0] & 1)) return;
  const start = header[6] | (header[7] << 8), off = header[8] | (header[9] << 8);
  let acc = 0;
  for (let i = start; i < frame.length; i += 2) {
    acc += (frame[i] << 8) | (i + 1 < frame.length ? frame[i + 1] : 0);
  }
  while (acc > 0xffff) acc = (acc & 0xffff) + Math.floor(acc / 0x10000);
  // RFC 768: a UDP checksum that computes to 0 is sent as all ones (0 means "none"); real devices do the same.
  const c = (~acc & 0xffff) || (off === UDP_CSUM_OFFSET ? 0xffff : 0);
  frame[start + off] = c >> 8;
  frame[start + off + 1] = c & 0xff;
}

/** Two models joined back to back. */
export class Wire {
  /** Frames carried a → b and b → a. */
  carried = [0, 0];
  /** Frames dropped for lack of an RX buffer. */
  lost = 0;
  /** Hooks per direction (0: a → b, 1: b → a). */
  taps: (Tap | null)[] = [null, null];
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(readonly a: VirtioNetModel, readonly b: VirtioNetModel) {}

  /** Move every frame sent so far to the other side; returns how many moved. */
  pump(): number {
    let n = 0;
    for (const [dir, from, to] of [[0, this.a, this.b], [1, this.b, this.a]] as const) {
      const frames = from.sent[0].splice(0), headers = from.sentHeaders[0].splice(0);
      for (let i = 0; i < frames.length; i++) {
        completeDeviceChecksum(headers[i], frames[i]);
        const f = this.taps[dir] ? this.taps[dir]!(frames[i]) : frames[i];
        if (!f) continue;
        if (to.deliver(f)) this.carried[dir]++, n++;
        else this.lost++;
      }
    }
    return n;
  }

  /** Pump every millisecond until {@link Wire.stop}. */
  start(): this {
    this.#timer = setInterval(() => this.pump(), 1);
    return this;
  }

  /** Stop pumping. */
  stop(): void {
    clearInterval(this.#timer);
  }
}
