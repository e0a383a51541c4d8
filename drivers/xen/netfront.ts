/**
 * Xen netfront (Xen public/io/netif.h) from a domU's userspace, on the common NIC queue core.
 *
 * The XenBus handshake is the shared frontend lifecycle (frontend.ts); netfront supplies its steps: read the
 * backend's features (netif.h feature keys), grant and publish the rings, start them. Linux's xen-netback
 * connects on the frontend's Connected, so netfront writes it first.
 *
 * Rings: TX (12-byte unions) and RX (8-byte unions), 256 slots each. TX buffers are 2 KiB halves of granted pages
 * (MTU 1500) or runs of whole pages (jumbo MTUs, sent as feature-sg multi-slot requests, at most 18 slots);
 * RX buffers are whole granted pages the backend copies into (request-rx-copy). Receive is collect (copy out and
 * check one frame's responses) → deliver the page itself, or gather a multi-slot frame into one buffer → recycle
 * the pages. Nothing the backend writes is trusted: ids, statuses, offsets and lengths are checked before they
 * index anything.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import { type EventChannels, type GrantTable, XEN_PAGE } from "../../hal/xen.ts";
import { type Closeable, NicCore } from "../net/core.ts";
import { maxFrameFor, parseMac } from "../net/nic.ts";
import type { PacketBuffer } from "../net/packet_pool.ts";
import {
  extraInfoMore,
  MAX_FRAME_SLOTS,
  NETFRONT_MAX_MTU,
  NETIF_RSP_NULL,
  NETIF_RSP_OKAY,
  NETRXF_extra_info,
  NETRXF_more_data,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_more_data,
  rxAppFlags,
  rxResponseFlags,
  rxResponseId,
  rxResponseOffset,
  rxResponseStatus,
  txResponseId,
  txResponseStatus,
  writeRxRequest,
  writeTxRequest,
} from "./netif.ts";
import type { FrontRing } from "./ring.ts";
import { findFrontend, type FrontendDevice, XenbusFrontend } from "./frontend.ts";
import {
  copy,
  makeQueuePair,
  type NetfrontQueuePair,
  releaseQueuePair,
  RING,
  txLayout,
} from "./netfront_queue.ts";
import type { XenStore } from "./xenstore.ts";
import { XenStoreError } from "./xenstore.ts";

/** log2 of the Xen page size (4 KiB). */
const XEN_PAGE_SHIFT = 12;

export { NETFRONT_MAX_MTU } from "./netif.ts";
export { XenbusState } from "./xenbus.ts";
export { type NetfrontQueuePair, txLayout } from "./netfront_queue.ts";

/** RX requests are posted once this many slots are free (or the ring runs low). */
const RX_REFILL_BATCH = 32;

/** Options for {@link Netfront.open}. */
export interface NetfrontOptions {
  /** The vif index under device/vif (default 0). */
  vif?: number;
  /** Queues wanted (capped by the backend's multi-queue-max-queues). */
  queues?: number;
  /** How long to wait for the backend at each step (ms). */
  timeoutMs?: number;
  /** MTU (default 1500); above 1500 needs the backend's feature-sg. */
  mtu?: number;
  /** Resources the NIC closes with itself once open succeeds (the xenstore connection, the grant device). */
  owns?: Closeable[];
}

/** The backend's features, read at InitWait. */
interface BackendFeatures {
  split: boolean;
  sg: boolean;
  maxQueues: number;
}

/** A netfront NIC. */
export class Netfront extends NicCore<NetfrontQueuePair> {
  /** Human name (driver and address). */
  readonly name: string;
  /** The MAC address. */
  readonly mac: Uint8Array;
  /** Largest payload (without the Ethernet header). */
  readonly mtu: number;
  /** Largest frame (mtu + 18, capped by one buffer). */
  readonly maxFrame: number;
  /** Netback completes checksums of NETTXF_csum_blank requests (netif.h), part of the base protocol. */
  readonly txChecksum = true;
  /** The backend's xenstore directory. */
  readonly backend: string;
  /** The backend's domain id. */
  readonly backendId: number;
  /** Our xenstore directory (relative to this domain's home). */
  readonly dir: string;
  readonly #xs: XenStore;
  readonly #grants: GrantTable;
  readonly #evtchns: EventChannels;
  readonly #opts: NetfrontOptions;
  readonly #front: XenbusFrontend;
  #features: BackendFeatures = { split: false, sg: false, maxQueues: 1 };
  // The frame being received, copied out of the ring before use: per slot offset, length, kind (1 data, 0 extra).
  readonly #rxOff = new Uint16Array(MAX_FRAME_SLOTS);
  readonly #rxLen = new Int32Array(MAX_FRAME_SLOTS);
  readonly #rxData = new Uint8Array(MAX_FRAME_SLOTS);
  /** Totals of that frame: bytes, data slots, first flags, and whether a slot reported an error. */
  #frameBytes = 0;
  #frameData = 0;
  #frameFlags = 0;
  #frameBad = false;

  private constructor(
    xs: XenStore,
    grants: GrantTable,
    evtchns: EventChannels,
    opts: NetfrontOptions,
    dev: FrontendDevice,
    mac: Uint8Array,
  ) {
    super();
    this.#grants = grants;
    this.#evtchns = evtchns;
    this.#opts = opts;
    this.dir = dev.dir;
    this.backend = dev.backend;
    this.backendId = dev.backendId;
    this.mac = mac;
    this.name = `netfront ${dev.dir}`;
    this.mtu = opts.mtu ?? 1500;
    this.maxFrame = maxFrameFor(this.mtu);
    this.#xs = xs;
    this.#front = new XenbusFrontend(xs, dev, {
      prepare: () => this.#prepare(),
      publish: (put) => this.#publish(put),
      start: () => this.#start(),
      release: () => this.#releaseQueues(),
      // A connection with more queues left it; netback would look for this one's rings under queue-N.
      staleKeys: ["multi-queue-num-queues"],
    }, { timeoutMs: opts.timeoutMs ?? 30_000, connectedFirst: true });
  }

  /** Reconnections after a backend restart. */
  get reconnects(): number {
    return this.#front.reconnects;
  }

  /** Find vif `opts.vif`, handshake with its backend and bring the rings up. */
  static async open(
    xs: XenStore,
    grants: GrantTable,
    evtchns: EventChannels,
    opts: NetfrontOptions = {},
  ): Promise<Netfront> {
    const vif = opts.vif ?? 0;
    const mtu = opts.mtu ?? 1500;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > NETFRONT_MAX_MTU) {
      throw new RangeError(`MTU ${mtu} outside 68..${NETFRONT_MAX_MTU}`);
    }
    const dev = await findFrontend(xs, "vif", vif);
    const macText = await xs.read(`${dev.dir}/mac`);
    let mac: Uint8Array;
    try {
      mac = parseMac(macText);
    } catch {
      throw new XenStoreError("EPROTO", `${dev.dir}/mac is '${macText}', not a MAC address`);
    }
    const nf = new Netfront(xs, grants, evtchns, opts, dev, mac);
    try {
      await nf.#front.connect();
    } catch (e) {
      await nf.#front.shutdown(false);
      throw e;
    }
    for (const r of opts.owns ?? []) nf.own(r);
    nf.#front.watch();
    return nf;
  }

  // ---- XenBus handshake steps (frontend.ts runs them in order) ----

  /** Backend in InitWait: read its features, grant the queues. */
  async #prepare(): Promise<void> {
    this.#features = await this.#readFeatures();
    const f = this.#features;
    const nq = Math.max(1, Math.min(this.#opts.queues ?? 1, f.maxQueues));
    const need = nq * (2 + txLayout(this.maxFrame).pages + RING);
    if (need > this.#grants.remaining) {
      throw new PvdrvError(
        "xen",
        `${nq} queue(s) need ${need} grants, only ${this.#grants.remaining} left (gntalloc limit): use fewer queues or raise the limit`,
      );
    }
    for (let i = 0; i < nq; i++) {
      const q = makeQueuePair(i, this.#grants, this.#evtchns, this.backendId, this.maxFrame, f.split);
      this.adopt(q.txPool, q.rxPool, q.rxGather);
      this.pairs.push(q);
    }
  }

  /** The ring keys (netif.h), written in the transaction that says Initialised. */
  async #publish(put: (k: string, v: string | number) => Promise<void>): Promise<void> {
    const nq = this.pairs.length, split = this.#features.split;
    for (let i = 0; i < nq; i++) {
      const q = this.pairs[i], p = nq > 1 ? `queue-${i}/` : "";
      await put(`${p}tx-ring-ref`, q.ringPages.refs[0]);
      await put(`${p}rx-ring-ref`, q.ringPages.refs[1]);
      if (split) {
        await put(`${p}event-channel-tx`, q.evTx.port);
        await put(`${p}event-channel-rx`, q.evRx.port);
      } else await put(`${p}event-channel`, q.evTx.port);
    }
    if (nq > 1) await put("multi-queue-num-queues", nq);
    await put("request-rx-copy", 1);
    await put("feature-rx-notify", 1);
    await put("feature-sg", this.#features.sg ? 1 : 0);
  }

  /** Both ends Connected: post the RX pages. */
  #start(): void {
    for (const q of this.pairs) {
      this.refill(q);
      q.rx.quiet();
    }
  }

  /** The backend's feature keys (netif.h), checked. */
  async #readFeatures(): Promise<BackendFeatures> {
    const feature = (key: string) => this.#xs.tryRead(`${this.backend}/${key}`);
    if ((await feature("feature-rx-copy")) !== "1") {
      throw new XenStoreError("EOPNOTSUPP", `backend ${this.backend} does not offer feature-rx-copy`);
    }
    const split = (await feature("feature-split-event-channels")) === "1";
    const sg = (await feature("feature-sg")) === "1";
    if (this.mtu > 1500 && !sg) {
      throw new XenStoreError(
        "EOPNOTSUPP",
        `MTU ${this.mtu} needs multi-slot frames but backend ${this.backend} does not offer feature-sg`,
      );
    }
    const maxText = await feature("multi-queue-max-queues");
    const maxQueues = maxText === null ? 1 : Number(maxText);
    if (!Number.isInteger(maxQueues) || maxQueues < 1 || maxQueues > 256) {
      throw new XenStoreError("EPROTO", `multi-queue-max-queues is '${maxText}'`);
    }
    return { split, sg, maxQueues };
  }

  /** Link state as the device reports it. */
  linkUp(): boolean {
    return this.#front.connected && !this.closed;
  }

  /** Why no queue can be used now (backend reconnecting), or null. */
  protected override unavailable(): string | null {
    return this.#front.connected ? null : "backend not connected (reconnecting?)";
  }

  /** The error that broke this queue pair, or null. */
  protected fault(q: NetfrontQueuePair): Error | null {
    return q.tx.broken ?? q.rx.broken;
  }

  // ---- ring steps (NicCore) ----

  /** Post free RX buffers to the ring. */
  protected refill(q: NetfrontQueuePair): void {
    const r = q.rx;
    if (r.broken || q.tx.broken) return; // a broken queue gets no more pages
    // Post in batches: refilling one or two slots at a time would cost the backend an event each time.
    if (r.free < RX_REFILL_BATCH && r.size - r.free >= RX_REFILL_BATCH) return;
    let added = 0;
    while (r.free > 0) {
      const slot = r.reqProdPvt & (r.size - 1);
      if (q.rxSlot[slot]) break; // still held: cannot happen while responses arrive in ring order
      const b = q.rxPool.takeForDevice();
      if (!b) break;
      // The request id is the ring slot (netback answers in ring order).
      writeRxRequest(r, r.entry(r.reqProdPvt), slot, q.rxPages.refs[b.index]);
      q.rxSlot[slot] = b;
      r.reqProdPvt = (r.reqProdPvt + 1) >>> 0;
      added++;
    }
    if (added && r.push()) {
      q.evRx.notify();
      q.stats.notifications++;
    }
  }

  /** Transmit: each frame as one request per page it touches; the first carries the whole length (netif.h). */
  protected post(q: NetfrontQueuePair, pkts: PacketBuffer[], n: number): number {
    const r = q.tx, refs = q.txPages.refs;
    if (r.broken || q.rx.broken) throw r.broken ?? q.rx.broken; // a broken queue takes no more requests
    this.checkFrames(pkts, n);
    if (r.free < n) this.reclaim(q);
    // How many frames the ring and the ids take (each frame one slot per page it touches), then who holds each of
    // those, whole, before any request is written (a buffer named twice is refused there): a refused batch
    // leaves nothing on the ring, and only the frames sent are marked the device's.
    let k = 0;
    for (let free = r.free, ids = q.txIds.available; k < n; k++) {
      const slots = txSlotsOf(pkts[k]);
      if (slots > free || slots > ids) break;
      free -= slots;
      ids -= slots;
    }
    q.txPool.toDeviceMany(pkts, k);
    for (let j = 0; j < k; j++) {
      const b = pkts[j], len = b.length;
      const first = b.slotOffset & (XEN_PAGE - 1), slots = txSlotsOf(b);
      q.txSlots[b.index] = slots;
      q.txFailed[b.index] = 0;
      const csum = b.csumOffset ? NETTXF_csum_blank | NETTXF_data_validated : 0;
      let page = b.slotOffset >>> XEN_PAGE_SHIFT, off = first, left = len;
      for (let s = 0; s < slots; s++) {
        // The first slot's size is the whole frame's, the others their own; all but the last have more_data.
        const chunk = Math.min(left, XEN_PAGE - off);
        const id = q.txIds.take(b.index);
        const flags = (s === 0 ? csum : 0) | (s < slots - 1 ? NETTXF_more_data : 0);
        writeTxRequest(r, r.entry(r.reqProdPvt), refs[page], off, flags, id, s === 0 ? len : chunk);
        r.reqProdPvt = (r.reqProdPvt + 1) >>> 0;
        left -= chunk;
        off = 0;
        page++;
      }
    }
    if (k && r.push()) {
      q.evTx.notify();
      q.stats.notifications++;
    }
    return k;
  }

  /** TX responses: one per request slot, in any order; a frame completes with its last slot. */
  protected reclaim(q: NetfrontQueuePair): number {
    const r = q.tx;
    const n = r.available();
    let done = 0;
    for (let i = 0; i < n; i++) {
      const e = r.entry(r.rspCons);
      const id = txResponseId(r, e), status = txResponseStatus(r, e);
      const bi = q.txIds.complete(id);
      if (bi < 0) throw r.failure(`backend completed TX id ${id}, which is not in flight`);
      r.rspCons = (r.rspCons + 1) >>> 0;
      if (status !== NETIF_RSP_OKAY && status !== NETIF_RSP_NULL) q.txFailed[bi] = 1;
      if (--q.txSlots[bi] > 0) continue;
      const b = q.txPool.buffers[bi];
      if (q.txFailed[bi]) q.stats.txErrors++;
      else {
        q.stats.txPackets++;
        q.stats.txBytes += b.length;
      }
      q.txPool.put(b, "device");
      done++;
    }
    return done;
  }

  /** Receive: per frame, collect its responses, deliver or gather it, recycle its pages. */
  protected collect(q: NetfrontQueuePair, out: PacketBuffer[], max: number): void {
    const r = q.rx;
    let avail = r.available(), k = 0, gathered = false;
    while (avail > 0 && k < max) {
      const n = this.#collectFrame(r, avail);
      if (n === 0) break; // the rest of the frame is not there yet
      // A frame of several slots needs a gather buffer: while the application holds every one, the frame waits in
      // the ring for the next call (after a release) instead of being dropped. A stalled receiver picking up a
      // backlog of jumbo frames in one batch larger than the gather pool lost frames that way.
      if (this.#frameData > 1 && q.rxGather.available === 0 && this.#deliverable()) break;
      // Into a batch (receiveInto): every frame of it from one pool, so a gathered frame after pages, or a page
      // after gathered frames, waits for the next call the same way.
      if (this.onePool && k > 0 && this.#deliverable() && (this.#frameData > 1) !== gathered) break;
      const start = r.rspCons;
      r.rspCons = (r.rspCons + n) >>> 0;
      avail -= n;
      const b = this.#deliverOrGather(q, start, n);
      this.#recycle(q, start, n);
      if (!b) {
        q.stats.rxDropped++; // errors, runts, frames over the MTU
        continue;
      }
      b.length = this.#frameBytes;
      b.flags = rxAppFlags(this.#frameFlags);
      this.deliver(q, out, b);
      if (k++ === 0) gathered = b.pool === q.rxGather;
    }
  }

  /**
   * Copy out and check one frame's responses (netif.h RX: a data response, its extra-info segments if it has
   * NETRXF_extra_info, then more data responses while NETRXF_more_data is set); returns its slots, or 0 when the
   * frame is not complete in the ring yet.
   */
  #collectFrame(r: FrontRing, avail: number): number {
    const mask = r.size - 1, offs = this.#rxOff, lens = this.#rxLen, isData = this.#rxData;
    let n = 0, more = true, extra = false;
    this.#frameBytes = 0;
    this.#frameData = 0;
    this.#frameBad = false;
    while (more || extra) {
      if (n === avail) return 0;
      if (n === MAX_FRAME_SLOTS) throw r.failure(`a received frame spans more than ${MAX_FRAME_SLOTS} slots`);
      const idx = (r.rspCons + n) >>> 0, e = r.entry(idx);
      if (extra) {
        extra = extraInfoMore(r, e);
        isData[n++] = 0;
        continue;
      }
      const id = rxResponseId(r, e), offset = rxResponseOffset(r, e), flags = rxResponseFlags(r, e);
      const status = rxResponseStatus(r, e);
      if (id !== (idx & mask)) throw r.failure(`backend answered RX slot ${idx & mask} with id ${id}`);
      if (status > 0 && offset + status > XEN_PAGE) {
        throw r.failure(`backend placed ${status} bytes at offset ${offset} of a ${XEN_PAGE}-byte page`);
      }
      if (n === 0) {
        this.#frameFlags = flags;
        extra = (flags & NETRXF_extra_info) !== 0;
      }
      if (status < 0) this.#frameBad = true;
      else this.#frameBytes += status;
      more = (flags & NETRXF_more_data) !== 0;
      offs[n] = offset;
      lens[n] = status;
      isData[n++] = 1;
      this.#frameData++;
    }
    return n;
  }

  /** Whether the frame {@link #collectFrame} read goes to the application (no error status, 14..maxFrame bytes). */
  #deliverable(): boolean {
    return !this.#frameBad && this.#frameBytes >= 14 && this.#frameBytes <= this.maxFrame;
  }

  /** The frame's buffer for the application: its one page, or a gather buffer; null when it is dropped. */
  #deliverOrGather(q: NetfrontQueuePair, start: number, n: number): PacketBuffer | null {
    const total = this.#frameBytes, mask = q.rx.size - 1, offs = this.#rxOff, lens = this.#rxLen;
    const isData = this.#rxData;
    if (!this.#deliverable()) return null;
    if (this.#frameData === 1) {
      // One slot: hand the page itself to the application.
      for (let s = 0; s < n; s++) {
        if (!isData[s]) continue;
        const slot = (start + s) & mask, b = q.rxSlot[slot]!;
        q.rxSlot[slot] = null;
        if (offs[s]) b.data.copyWithin(0, offs[s], offs[s] + total);
        q.rxPool.toApp(b);
        return b;
      }
    }
    const b = q.rxGather.take();
    if (!b) return null;
    let at = b.slotOffset;
    for (let s = 0; s < n; s++) {
      if (!isData[s] || lens[s] === 0) continue;
      const page = q.rxSlot[(start + s) & mask]!;
      copy(q.rxGather.bytes, q.gather32, at, q.rxPages.bytes, q.rx32, page.slotOffset + offs[s], lens[s]);
      at += lens[s];
    }
    return b;
  }

  /** Give every page of the frame's slots still held back to the pool (refill posts them again). */
  #recycle(q: NetfrontQueuePair, start: number, n: number): void {
    const mask = q.rx.size - 1;
    for (let s = 0; s < n; s++) {
      const slot = (start + s) & mask, p = q.rxSlot[slot];
      if (!p) continue;
      q.rxSlot[slot] = null;
      q.rxPool.put(p, "device");
    }
  }

  /** Ask for an RX interrupt; true when frames already wait. */
  protected armIrq(q: NetfrontQueuePair): boolean {
    return q.rx.finalCheck();
  }

  /** Stop RX interrupts (polling resumes). */
  protected disarmIrq(q: NetfrontQueuePair): void {
    q.rx.quiet();
  }

  /** Ring indices, for diagnostics: [req_prod, req_event, rsp_prod, rsp_event] and our private counters. */
  ringState(queue = 0): string {
    const q = this.pairs[queue];
    if (!q) return "no queue";
    const f = (r: FrontRing) =>
      `req_prod ${r.hdr[0]} req_event ${r.hdr[1]} rsp_prod ${r.hdr[2]} rsp_event ${
        r.hdr[3]
      } pvt ${r.reqProdPvt} cons ${r.rspCons}`;
    return `tx: ${f(q.tx)}; rx: ${f(q.rx)}`;
  }

  // ---- backend changes and shutdown ----

  #releaseQueues(): void {
    for (const q of this.pairs.splice(0)) releaseQueuePair(q);
  }

  /** Disconnect gracefully (state Closing → Closed), end the grants, close the ports and what the NIC owns. */
  protected teardown(): Promise<void> {
    return this.#front.shutdown(true);
  }
}

/** TX request slots a frame takes: one per page it touches (netif.h: a request never crosses a page). */
function txSlotsOf(b: PacketBuffer): number {
  return Math.ceil(((b.slotOffset & (XEN_PAGE - 1)) + b.length) / XEN_PAGE);
}
