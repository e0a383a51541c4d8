/**
 * An in-process virtio-net device (virtio 1.2 §5.1) on the shared virtio-PCI device model (virtio_pci_model.ts):
 * TX and control queues consumed, frames delivered on RX queues, the MAC, status, max_virtqueue_pairs and MTU in
 * its device config. The driver under test runs unchanged against it. Tests can also make it misbehave.
 */
import { F, NET_F, VIRTIO_ID } from "../../drivers/virtio/features.ts";
import { Chain, type DeviceQueue, type DeviceRing } from "../../drivers/virtio/device_queue.ts";
import { EVENT_FLAGS, PDESC, PDESC_F } from "../../drivers/virtio/packed_ring.ts";
import {
  availEntry,
  availEventOffset,
  RING,
  usedElem,
  usedEventOffset,
} from "../../drivers/virtio/split_ring.ts";
import { NET_CONFIG, netHdrLen } from "../../drivers/virtio/net_wire.ts";
import { type PciModelOptions, VirtioPciModel } from "./virtio_pci_model.ts";

export type { ModelQueue } from "./virtio_pci_model.ts";

/** Model configuration. */
export interface ModelOptions extends PciModelOptions {
  /** Offered features (default: everything pvdrv wants). */
  features?: bigint;
  /** max_virtqueue_pairs. */
  maxPairs?: number;
  /** MAC. */
  mac?: number[];
  /** MTU in config (with NET_F.MTU). */
  mtu?: number;
  /** max_virtqueue_pairs as the config reports it (default: maxPairs). */
  configMaxPairs?: number;
  /** Control commands get this ack (default 0, VIRTIO_NET_OK). */
  ctrlAck?: number;
}

/** What the device did with a control command. */
export interface CtrlRecord {
  cls: number;
  cmd: number;
  data: Uint8Array;
}

// A packed descriptor's len and flags as indices of the ring's word and halfword views (packed_ring.ts PDESC).
const LEN32 = PDESC.LEN >> 2, FLAGS16 = PDESC.FLAGS >> 1;
const { AVAIL, USED } = PDESC_F, BOTH = AVAIL | USED;

/** The virtio-net device model. */
export class VirtioNetModel extends VirtioPciModel {
  readonly maxPairs: number;
  /** Frames the driver sent, per TX queue (headers stripped). */
  readonly sent: Uint8Array[][] = [];
  /** Headers of sent frames, per TX queue. */
  readonly sentHeaders: Uint8Array[][] = [];
  /** Control commands received. */
  readonly ctrl: CtrlRecord[] = [];
  promiscuous = false;
  linkUp = true;
  readonly #opts: ModelOptions;

  constructor(opts: ModelOptions = {}) {
    const maxPairs = opts.maxPairs ?? 4;
    super(
      VIRTIO_ID.NET,
      opts.features ??
        (F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | F.RING_PACKED | NET_F.MAC | NET_F.STATUS |
          NET_F.MRG_RXBUF | NET_F.CSUM | NET_F.GUEST_CSUM | NET_F.CTRL_VQ | NET_F.CTRL_RX | NET_F.MQ |
          NET_F.MTU | NET_F.CTRL_MAC_ADDR),
      2 * maxPairs + 1,
      opts,
    );
    this.#opts = opts;
    this.maxPairs = maxPairs;
    for (let i = 0; i < this.maxPairs; i++) {
      this.sent.push([]);
      this.sentHeaders.push([]);
    }
    const mac = opts.mac ?? [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
    const dc = this.deviceConfig;
    mac.forEach((b, i) => dc.setUint8(NET_CONFIG.MAC + i, b));
    dc.setUint16(NET_CONFIG.MAX_PAIRS, opts.configMaxPairs ?? this.maxPairs, true);
    dc.setUint16(NET_CONFIG.MTU, opts.mtu ?? 1500, true);
  }

  /** The link status field reads the model's link state. */
  protected override readDeviceConfig(off: number): number | undefined {
    return off === NET_CONFIG.STATUS ? (this.linkUp ? 1 : 0) : undefined;
  }

  /** Control commands are answered at once, as a real device does. */
  protected override processAlways(qi: number): boolean {
    return qi === this.#ctrlQueue();
  }

  get #hdrLen(): number {
    return netHdrLen((this.driverFeatures & (F.VERSION_1 | NET_F.MRG_RXBUF)) !== 0n);
  }
  #ctrlQueue(): number {
    // §5.1.2: the control queue is 2 without MQ, else 2 * max_virtqueue_pairs.
    return this.driverFeatures & NET_F.MQ ? 2 * this.maxPairs : 2;
  }

  /** Consume what the driver made available on queue `qi` (TX and control queues). */
  protected serve(qi: number): number {
    if (!this.live(qi)) return 0;
    const dq = this.dq(qi), c = this.#chain;
    const ctrl = qi === this.#ctrlQueue();
    let n = 0;
    // RX buffers (even queues but the control queue) wait for deliver().
    while ((ctrl || qi % 2 === 1) && dq.take(c)) {
      if (ctrl) {
        const out = c.write.indexOf(false), inn = c.write.indexOf(true);
        const cmd = this.mem(c.addr[out], c.len[out]);
        const rec = { cls: cmd[0], cmd: cmd[1], data: cmd.slice(2) };
        this.ctrl.push(rec);
        if (rec.cls === 0 && rec.cmd === 0) this.promiscuous = rec.data[0] === 1;
        this.mem(c.addr[inn], 1)[0] = this.#opts.ctrlAck ?? 0;
        this.pushUsed(qi, c.head, 1);
      } else {
        const bytes = new Uint8Array(c.readable + c.writable);
        let o = 0;
        for (let i = 0; i < c.count; i++) {
          bytes.set(this.mem(c.addr[i], c.len[i]), o);
          o += c.len[i];
        }
        const h = this.#hdrLen;
        this.sentHeaders[(qi - 1) / 2].push(bytes.slice(0, h));
        this.sent[(qi - 1) / 2].push(bytes.slice(h));
        this.pushUsed(qi, c.head, 0);
      }
      n++;
    }
    dq.publishAvailEvent();
    return n;
  }

  /** RX buffers the driver has made available on pair `pair`. */
  rxAvailable(pair = 0): number {
    return this.dq(2 * pair).available();
  }

  /**
   * Deliver a frame to RX queue `pair` as the device would (header + frame, num_buffers); frames larger than one
   * buffer are spread over several with MRG_RXBUF. Returns false when no buffer is available (dropped).
   */
  deliver(
    frame: Uint8Array,
    pair = 0,
    opts: { flags?: number; usedLen?: number; numBuffers?: number } = {},
  ): boolean {
    try {
      return this.#deliver(frame, pair, opts);
    } catch (e) {
      return this.driverBroke(e, false);
    }
  }

  #deliver(
    frame: Uint8Array,
    pair: number,
    opts: { flags?: number; usedLen?: number; numBuffers?: number },
  ): boolean {
    const qi = 2 * pair;
    if (!this.live(qi)) return false;
    const dq = this.dq(qi), c = this.#chain;
    const h = this.#hdrLen;
    const total = new Uint8Array(h + frame.length);
    total[0] = opts.flags ?? 0;
    total.set(frame, h);
    // Only the first descriptor of each RX chain is used (pvdrv posts one buffer per chain).
    const bufs: { head: number; cap: number; addr: number }[] = [];
    let need = total.length;
    while (need > 0) {
      if (!dq.peek(c, bufs.length)) return false;
      bufs.push({ head: c.head, cap: c.len[0], addr: c.addr[0] });
      need -= c.len[0];
      if (need > 0 && !(this.driverFeatures & NET_F.MRG_RXBUF)) return false;
    }
    if (h === 12) new DataView(total.buffer).setUint16(10, opts.numBuffers ?? bufs.length, true);
    dq.skip(bufs.length);
    let o = 0;
    for (const b of bufs) {
      const n = Math.min(b.cap, total.length - o);
      this.mem(b.addr, n).set(total.subarray(o, o + n));
      o += n;
      this.pushUsed(qi, b.head, opts.usedLen ?? n);
    }
    dq.publishAvailEvent();
    return true;
  }

  // ---- fast paths for benchmarks: ring work only, no copies, no checks ----
  readonly #chain = new Chain();
  /**
   * Per queue index: the views the fast paths use, made for one device ring: a reset, a queue reset or new ring
   * addresses replace the ring (`ModelQueue.dq`), and the views are made again for the new one.
   */
  #fast: (FastSplit | FastPacked | undefined)[] = [];

  #fastSplit(qi: number): FastSplit {
    const dq = this.dq(qi), v = this.#fast[qi];
    if (v instanceof FastSplit && v.dq === dq) return v;
    const q = this.queues[qi];
    const a = this.mem(q.driver, usedEventOffset(q.size) + 2),
      u = this.mem(q.device, availEventOffset(q.size) + 2);
    const f = new FastSplit(
      dq as DeviceQueue,
      new Uint16Array(a.buffer, a.byteOffset, a.byteLength >> 1),
      new Uint32Array(u.buffer, u.byteOffset, u.byteLength >> 2),
      new Uint16Array(u.buffer, u.byteOffset, 2),
    );
    this.#fast[qi] = f;
    return f;
  }

  #fastPacked(qi: number): FastPacked {
    const dq = this.dq(qi), v = this.#fast[qi];
    if (v instanceof FastPacked && v.dq === dq) return v;
    const q = this.queues[qi], r = this.mem(q.desc, 16 * q.size);
    const f = new FastPacked(
      dq,
      new Uint32Array(r.buffer, r.byteOffset, 4 * q.size),
      new Uint16Array(r.buffer, r.byteOffset, 8 * q.size),
    );
    // A polling device: it asks for no notifications (§2.8.10), as a split-ring one does by never moving
    // avail_event.
    const ev = this.mem(q.device, 4);
    new DataView(ev.buffer, ev.byteOffset, 4).setUint16(2, EVENT_FLAGS.DISABLE, true);
    this.#fast[qi] = f;
    return f;
  }

  /** Packed rings: single-descriptor buffers completed in place, in order (the used slot is the taken one). */
  #fastCompletePacked(qi: number, len: number): number {
    const v = this.#fastPacked(qi), { d32, d16 } = v, size = d32.length >> 2, mask = size - 1;
    let n = 0, at = v.lin;
    // isAvail and usedFlags written out, as the split fast path's index arithmetic is: on this lap (wrap counter
    // 1 while at < size) an available slot has AVAIL = 1, USED = 0 and a used one both 1 (§2.8.1); the next lap
    // inverts both.
    for (; n < size; n++) {
      const f = at < size ? AVAIL : USED, s = at & mask;
      if ((d16[(s << 3) + FLAGS16] & BOTH) !== f) break;
      d32[(s << 2) + LEN32] = len;
      d16[(s << 3) + FLAGS16] = at < size ? BOTH : 0;
      at = at + 1 === 2 * size ? 0 : at + 1;
    }
    v.lin = at;
    return n;
  }

  /**
   * Complete every available buffer of queue `qi` with length `len` (TX: 0), as a device that trusts the driver
   * would: the benchmarks' device side. Returns how many.
   */
  fastComplete(qi: number, len: number): number {
    if (this.packed) return this.#fastCompletePacked(qi, len);
    const v = this.#fastSplit(qi), dq = v.dq, avail = v.avail, used32 = v.used32;
    const end = avail[RING.IDX >> 1], mask = dq.size - 1, AV = availEntry(0) >> 1, US = usedElem(0) >> 2;
    let last = dq.lastAvail, used = dq.usedIdx;
    const n = (end - last) & 0xffff;
    if (n > dq.size) throw new RangeError(`queue ${qi}: avail.idx is ${n} ahead of a ring of ${dq.size}`);
    for (let k = 0; k < n; k++) {
      const e = US + ((used & mask) << 1);
      used32[e] = avail[AV + (last & mask)];
      used32[e + 1] = len;
      last = (last + 1) & 0xffff;
      used = (used + 1) & 0xffff;
    }
    dq.lastAvail = last;
    dq.usedIdx = used;
    v.used16[RING.IDX >> 1] = used;
    return n;
  }
}

/** The split fast path's views of one device ring. */
class FastSplit {
  constructor(
    readonly dq: DeviceQueue,
    readonly avail: Uint16Array,
    readonly used32: Uint32Array,
    readonly used16: Uint16Array,
  ) {}
}

/** The packed fast path's views of one device ring, and its cursor (slot and wrap counter, packed_ring.ts). */
class FastPacked {
  lin = 0;
  constructor(readonly dq: DeviceRing, readonly d32: Uint32Array, readonly d16: Uint16Array) {}
}
