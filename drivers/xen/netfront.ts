/**
 * Xen netfront (Xen public/io/netif.h) from a domU's userspace, behind the common {@link Nic} interface.
 *
 * XenBus: (a backend still Connected to a frontend that died is closed first: Closing → Closed) →
 * Initialising → (backend InitWait) → keys written in one transaction with Initialised → Connected →
 * (backend Connected: Linux's xen-netback connects on the frontend's Connected); Closing/Closed from either side;
 * a backend that comes back to InitWait is reconnected.
 * Rings: TX (12-byte unions) and RX (8-byte unions), 256 slots each. TX buffers are 2 KiB halves of granted pages
 * (MTU 1500) or runs of whole pages (jumbo MTUs, sent as feature-sg multi-slot requests, at most 18 slots);
 * RX buffers are whole granted pages the backend copies into (request-rx-copy), and a frame spanning several slots
 * is gathered into one application buffer. Nothing the backend writes is trusted: ids, statuses, offsets and
 * lengths are copied out and checked before they index anything.
 * @module
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import { emptyStats, type Nic, type PacketBuffer, PacketPool, parseMac, type QueueStats } from "../nic.ts";
import { releaseOwned } from "../packet_pool.ts";
import {
  type EventChannel,
  type EventChannels,
  type GrantedPages,
  type GrantTable,
  XEN_PAGE,
} from "./grants.ts";
import { FrontRing } from "./ring.ts";
import { type XenStore, XenStoreError } from "./xenstore.ts";

/** XenBus states (Xen public/io/xenbus.h). */
export const XenbusState = {
  Unknown: 0,
  Initialising: 1,
  InitWait: 2,
  Initialised: 3,
  Connected: 4,
  Closing: 5,
  Closed: 6,
  Reconfiguring: 7,
  Reconfigured: 8,
} as const;

// netif.h flags and statuses.
const NETTXF_csum_blank = 1, NETTXF_data_validated = 2, NETTXF_more_data = 4;
const NETRXF_data_validated = 1, NETRXF_csum_blank = 2, NETRXF_more_data = 4, NETRXF_extra_info = 8;
const NETIF_RSP_OKAY = 0, NETIF_RSP_NULL = 1, XEN_NETIF_EXTRA_FLAG_MORE = 1;
const TX_ENTRY = 12, RX_ENTRY = 8, RING = 256, HALF_PAGE = 2048;
/** netif.h XEN_NETIF_NR_SLOTS_MIN: data slots a frame may use; plus one per extra-info type. */
const MAX_DATA_SLOTS = 18, MAX_FRAME_SLOTS = MAX_DATA_SLOTS + 6;
/** RX requests are posted once this many slots are free (or the ring runs low). */
const RX_REFILL_BATCH = 32;
/** Frames of several RX slots are gathered into these (per queue). */
const RX_GATHER_BUFFERS = 32;
/** Largest MTU: netback's limit with feature-sg (ETH_MAX_MTU - VLAN_ETH_HLEN). */
export const NETFRONT_MAX_MTU = 65517;

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
}

/** How TX buffers sit in granted pages for a given largest frame. */
export function txLayout(maxFrame: number): { buffers: number; bufferBytes: number; pages: number } {
  if (maxFrame <= HALF_PAGE) return { buffers: RING, bufferBytes: HALF_PAGE, pages: RING / 2 };
  const per = Math.ceil(maxFrame / XEN_PAGE);
  const buffers = Math.max(16, Math.min(RING, Math.floor(RING / per)));
  return { buffers, bufferBytes: per * XEN_PAGE, pages: buffers * per };
}

interface Queue {
  tx: FrontRing;
  rx: FrontRing;
  ringPages: GrantedPages;
  txPages: GrantedPages;
  rxPages: GrantedPages;
  txPool: PacketPool;
  rxPool: PacketPool;
  /** Multi-slot frames are gathered into these. */
  rxGather: PacketPool;
  /** Word views of the RX pages and the gather buffers (copies without per-packet views). */
  rx32: Uint32Array;
  gather32: Uint32Array;
  /** Free TX request ids (a stack) and how many. */
  txIds: Uint16Array;
  txFreeIds: number;
  /** TX request id → buffer index, -1 when the id is not in flight. */
  txIdBuf: Int16Array;
  /** Per TX buffer: slots not yet answered, and whether one failed. */
  txSlots: Uint8Array;
  txFailed: Uint8Array;
  /** RX ring slot → the page posted there (the request id is the slot). */
  rxSlot: (PacketBuffer | null)[];
  evTx: EventChannel;
  evRx: EventChannel;
  stats: QueueStats;
}

/** Copy `len` bytes without allocating: in words when both ends are 4-byte aligned, then bytes. */
function copy(
  d8: Uint8Array,
  d32: Uint32Array,
  dOff: number,
  s8: Uint8Array,
  s32: Uint32Array,
  sOff: number,
  len: number,
): void {
  let i = 0;
  if (((dOff | sOff) & 3) === 0) {
    const n = len >>> 2, dw = dOff >>> 2, sw = sOff >>> 2;
    for (let k = 0; k < n; k++) d32[dw + k] = s32[sw + k];
    i = n << 2;
  }
  for (; i < len; i++) d8[dOff + i] = s8[sOff + i];
}

function region(p: GrantedPages): DmaRegion {
  return { bytes: p.bytes, deviceAddress: 0, size: p.bytes.length, free: () => p.free() };
}

/** A netfront NIC. */
export class Netfront implements Nic {
  readonly name: string;
  readonly mac: Uint8Array;
  readonly mtu: number;
  readonly maxFrame: number;
  queues = 0;
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
  #q: Queue[] = [];
  #split = false;
  #sg = false;
  #closed = false;
  // Fields of the frame being received, copied out of the ring before use: offset, length, kind (1 data, 0 extra).
  readonly #rxOff = new Uint16Array(MAX_FRAME_SLOTS);
  readonly #rxLen = new Int32Array(MAX_FRAME_SLOTS);
  readonly #rxData = new Uint8Array(MAX_FRAME_SLOTS);
  #connected = false;
  /** Every pool this NIC made: buffers from a pool of an earlier connection may still be released. */
  readonly #pools = new WeakSet<PacketPool>();
  #watcher: Promise<void> | null = null;
  #stopWatch: (() => Promise<unknown>) | null = null;
  /** Reconnections after a backend restart. */
  reconnects = 0;

  private constructor(xs: XenStore, grants: GrantTable, evtchns: EventChannels, opts: NetfrontOptions, info: {
    dir: string;
    backend: string;
    backendId: number;
    mac: Uint8Array;
  }) {
    this.#xs = xs;
    this.#grants = grants;
    this.#evtchns = evtchns;
    this.#opts = opts;
    this.dir = info.dir;
    this.backend = info.backend;
    this.backendId = info.backendId;
    this.mac = info.mac;
    this.name = `netfront ${info.dir}`;
    this.mtu = opts.mtu ?? 1500;
    this.maxFrame = this.mtu + 14;
  }

  /** Find vif `opts.vif`, handshake with its backend and bring the rings up. */
  static async open(
    xs: XenStore,
    grants: GrantTable,
    evtchns: EventChannels,
    opts: NetfrontOptions = {},
  ): Promise<Netfront> {
    const vif = opts.vif ?? 0;
    if (!Number.isInteger(vif) || vif < 0 || vif > 65535) throw new RangeError(`bad vif index ${vif}`);
    const mtu = opts.mtu ?? 1500;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > NETFRONT_MAX_MTU) {
      throw new RangeError(`MTU ${mtu} outside 68..${NETFRONT_MAX_MTU}`);
    }
    const dir = `device/vif/${vif}`;
    const backend = await xs.tryRead(`${dir}/backend`);
    if (backend === null) {
      throw new XenStoreError("ENOENT", `no ${dir} in xenstore: this domain has no vif ${vif}`);
    }
    if (!/^\/local\/domain\/\d{1,5}\/backend\/vif\/\d{1,5}\/\d{1,5}$/.test(backend)) {
      throw new XenStoreError("EPROTO", `${dir}/backend is '${backend}', not a vif backend path`);
    }
    const idText = await xs.read(`${dir}/backend-id`);
    const backendId = Number(idText);
    if (!/^\d{1,5}$/.test(idText) || backendId > 0x7fef) {
      throw new XenStoreError("EPROTO", `${dir}/backend-id is '${idText}'`);
    }
    let mac: Uint8Array;
    const macText = await xs.read(`${dir}/mac`);
    try {
      mac = parseMac(macText);
    } catch {
      throw new XenStoreError("EPROTO", `${dir}/mac is '${macText}', not a MAC address`);
    }
    const nf = new Netfront(xs, grants, evtchns, opts, { dir, backend, backendId, mac });
    try {
      await nf.#connect();
    } catch (e) {
      await nf.#teardown(false);
      throw e;
    }
    nf.#watchBackend();
    return nf;
  }

  async #backendState(): Promise<number> {
    const s = await this.#xs.tryRead(`${this.backend}/state`);
    const n = Number(s);
    if (s === null || !/^\d$/.test(s) || n > 8) {
      throw new XenStoreError("EPROTO", `${this.backend}/state is '${s}'`);
    }
    return n;
  }

  async #waitBackend(pred: (s: number) => boolean, what: string): Promise<number> {
    const t = this.#opts.timeoutMs ?? 30_000;
    try {
      const v = await this.#xs.waitFor(
        `${this.backend}/state`,
        (s) => s !== null && /^\d$/.test(s) && pred(Number(s)),
        t,
      );
      return Number(v);
    } catch (e) {
      if (e instanceof XenStoreError && e.code === "ETIMEDOUT") {
        throw new XenStoreError(
          "ETIMEDOUT",
          `backend ${this.backend} did not reach ${what} within ${t} ms (state ${await this.#backendState()
            .catch(() => "?")})`,
        );
      }
      throw e;
    }
  }

  async #feature(key: string): Promise<string | null> {
    return await this.#xs.tryRead(`${this.backend}/${key}`);
  }

  async #connect(): Promise<void> {
    const xs = this.#xs;
    const was = await xs.tryRead(`${this.backend}/state`);
    if (was === String(XenbusState.Connected) || was === String(XenbusState.Closing)) {
      // A frontend that died (SIGKILL, crash) left the backend on rings that are gone: close it first.
      await xs.write(`${this.dir}/state`, String(XenbusState.Closing));
      await this.#waitBackend((s) => s >= XenbusState.Closing || s === XenbusState.InitWait, "Closing");
      await xs.write(`${this.dir}/state`, String(XenbusState.Closed));
      await this.#waitBackend((s) => s === XenbusState.Closed || s === XenbusState.InitWait, "Closed");
    }
    await xs.write(`${this.dir}/state`, String(XenbusState.Initialising));
    await this.#waitBackend((s) => s === XenbusState.InitWait, "InitWait");
    if ((await this.#feature("feature-rx-copy")) !== "1") {
      throw new XenStoreError("EOPNOTSUPP", `backend ${this.backend} does not offer feature-rx-copy`);
    }
    this.#split = (await this.#feature("feature-split-event-channels")) === "1";
    this.#sg = (await this.#feature("feature-sg")) === "1";
    if (this.mtu > 1500 && !this.#sg) {
      throw new XenStoreError(
        "EOPNOTSUPP",
        `MTU ${this.mtu} needs multi-slot frames but backend ${this.backend} does not offer feature-sg`,
      );
    }
    const maxText = await this.#feature("multi-queue-max-queues");
    const maxQ = maxText === null ? 1 : Number(maxText);
    if (!Number.isInteger(maxQ) || maxQ < 1 || maxQ > 256) {
      throw new XenStoreError("EPROTO", `multi-queue-max-queues is '${maxText}'`);
    }
    const nq = Math.max(1, Math.min(this.#opts.queues ?? 1, maxQ));
    const need = nq * (2 + txLayout(this.maxFrame).pages + RING);
    if (need > this.#grants.remaining) {
      throw new Error(
        `${nq} queue(s) need ${need} grants, only ${this.#grants.remaining} left (gntalloc limit): use fewer queues or raise the limit`,
      );
    }
    for (let i = 0; i < nq; i++) this.#q.push(this.#makeQueue(i));
    this.queues = nq;
    await xs.transaction(async (tx) => {
      const base = this.dir;
      const put = (k: string, v: string | number) => xs.write(`${base}/${k}`, String(v), tx);
      for (let i = 0; i < nq; i++) {
        const q = this.#q[i], p = nq > 1 ? `queue-${i}/` : "";
        await put(`${p}tx-ring-ref`, q.ringPages.refs[0]);
        await put(`${p}rx-ring-ref`, q.ringPages.refs[1]);
        if (this.#split) {
          await put(`${p}event-channel-tx`, q.evTx.port);
          await put(`${p}event-channel-rx`, q.evRx.port);
        } else await put(`${p}event-channel`, q.evTx.port);
      }
      if (nq > 1) await put("multi-queue-num-queues", nq);
      await put("request-rx-copy", 1);
      await put("feature-rx-notify", 1);
      await put("feature-sg", this.#sg ? 1 : 0);
      await put("state", XenbusState.Initialised);
    });
    // Linux's xen-netback connects when the frontend says Connected (Initialised alone leaves it in InitWait).
    await xs.write(`${this.dir}/state`, String(XenbusState.Connected));
    await this.#waitBackend((s) => s === XenbusState.Connected, "Connected");
    for (const q of this.#q) {
      this.#refill(q);
      q.rx.quiet();
    }
    this.#connected = true;
  }

  #makeQueue(i: number): Queue {
    const g = this.#grants, dom = this.backendId;
    const ringPages = g.grant(2, dom);
    const lay = txLayout(this.maxFrame), gather = (this.maxFrame + 3) & ~3;
    let txPages: GrantedPages | null = null, rxPages: GrantedPages | null = null;
    try {
      txPages = g.grant(lay.pages, dom);
      rxPages = g.grant(RING, dom);
      const evTx = this.#evtchns.bindUnbound(dom);
      const evRx = this.#split ? this.#evtchns.bindUnbound(dom) : evTx;
      // If this process dies with the rings mapped, gntalloc kicks the backend (IOCTL_GNTALLOC_SET_UNMAP_NOTIFY).
      ringPages.notifyOnUnmap?.(evTx.port);
      const txIds = new Uint16Array(RING);
      for (let k = 0; k < RING; k++) txIds[k] = RING - 1 - k;
      const gatherMem = new Uint8Array(RX_GATHER_BUFFERS * gather);
      const q: Queue = {
        tx: new FrontRing(ringPages.bytes.subarray(0, XEN_PAGE), TX_ENTRY, `vif tx ring ${i}`),
        rx: new FrontRing(ringPages.bytes.subarray(XEN_PAGE, 2 * XEN_PAGE), RX_ENTRY, `vif rx ring ${i}`),
        ringPages,
        txPages,
        rxPages,
        txPool: new PacketPool(`tx${i}`, region(txPages), lay.buffers, lay.bufferBytes, 0),
        rxPool: new PacketPool(`rx${i}`, region(rxPages), RING, XEN_PAGE, 0),
        rx32: new Uint32Array(rxPages.bytes.buffer, rxPages.bytes.byteOffset, rxPages.bytes.length >>> 2),
        gather32: new Uint32Array(gatherMem.buffer),
        rxGather: new PacketPool(
          `rx-gather${i}`,
          {
            bytes: gatherMem,
            deviceAddress: 0,
            size: gatherMem.length,
            free: () => {},
          },
          RX_GATHER_BUFFERS,
          gather,
          0,
        ),
        txIds,
        txFreeIds: RING,
        txIdBuf: new Int16Array(RING).fill(-1),
        txSlots: new Uint8Array(lay.buffers),
        txFailed: new Uint8Array(lay.buffers),
        rxSlot: new Array(RING).fill(null),
        evTx,
        evRx,
        stats: emptyStats(),
      };
      for (const p of [q.txPool, q.rxPool, q.rxGather]) this.#pools.add(p);
      return q;
    } catch (e) {
      ringPages.free();
      txPages?.free();
      rxPages?.free();
      throw e;
    }
  }

  #queue(i: number): Queue {
    if (this.#closed) throw new Error(`${this.name} is closed`);
    if (!this.#connected) throw new Error(`${this.name}: backend not connected (reconnecting?)`);
    const q = this.#q[i];
    if (!q) throw new RangeError(`${this.name}: queue ${i} out of range (0..${this.queues - 1})`);
    return q;
  }

  #refill(q: Queue): void {
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
      // netif_rx_request { u16 id; u16 pad; u32 gref; } — id is the ring slot (netback answers in ring order).
      const e = r.entry(r.reqProdPvt);
      r.u16[e >> 1] = slot;
      r.u32[(e >> 2) + 1] = q.rxPages.refs[b.index];
      q.rxSlot[slot] = b;
      r.reqProdPvt = (r.reqProdPvt + 1) >>> 0;
      added++;
    }
    if (added && r.push()) {
      q.evRx.notify();
      q.stats.notifications++;
    }
  }

  linkUp(): boolean {
    return this.#connected && !this.#closed;
  }

  allocTx(out: PacketBuffer[], n: number, queue = 0): number {
    const q = this.#queue(queue);
    if (q.txPool.available < n) this.reclaimTx(queue);
    return q.txPool.takeMany(out, n);
  }

  sendBatch(pkts: PacketBuffer[], n: number, queue = 0): number {
    const q = this.#queue(queue);
    const r = q.tx, refs = q.txPages.refs;
    if (r.broken || q.rx.broken) throw r.broken ?? q.rx.broken; // a broken queue takes no more requests
    if (r.free < n) this.reclaimTx(queue);
    let k = 0;
    for (; k < n; k++) {
      const b = pkts[k], len = b.length;
      if (!(len >= 14 && len <= this.maxFrame)) {
        throw new RangeError(`${this.name}: frame length ${len} outside 14..${this.maxFrame}`);
      }
      const first = b.slotOffset & (XEN_PAGE - 1);
      const slots = Math.ceil((first + len) / XEN_PAGE);
      if (slots > r.free || slots > q.txFreeIds) break;
      q.txPool.toDevice(b);
      q.txSlots[b.index] = slots;
      q.txFailed[b.index] = 0;
      const csum = b.csumOffset ? NETTXF_csum_blank | NETTXF_data_validated : 0;
      let page = b.slotOffset >>> 12, off = first, left = len;
      for (let s = 0; s < slots; s++) {
        // netif_tx_request { u32 gref; u16 offset; u16 flags; u16 id; u16 size; }: the first slot's size is the
        // whole frame's, the others their own; every slot but the last has more_data (netif.h).
        const chunk = Math.min(left, XEN_PAGE - off);
        const id = q.txIds[--q.txFreeIds];
        q.txIdBuf[id] = b.index;
        const e = r.entry(r.reqProdPvt);
        r.u32[e >> 2] = refs[page];
        r.u16[(e >> 1) + 2] = off;
        r.u16[(e >> 1) + 3] = (s === 0 ? csum : 0) | (s < slots - 1 ? NETTXF_more_data : 0);
        r.u16[(e >> 1) + 4] = id;
        r.u16[(e >> 1) + 5] = s === 0 ? len : chunk;
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

  reclaimTx(queue = 0): number {
    const q = this.#queue(queue);
    const r = q.tx;
    const n = r.available();
    let done = 0;
    for (let i = 0; i < n; i++) {
      // netif_tx_response { u16 id; s16 status; }: one per request slot, in any order.
      const e = r.entry(r.rspCons);
      const id = r.u16[e >> 1], status = r.i16[(e >> 1) + 1];
      const bi = id < RING ? q.txIdBuf[id] : -1;
      if (bi < 0) throw r.failure(`backend completed TX id ${id}, which is not in flight`);
      q.txIdBuf[id] = -1;
      q.txIds[q.txFreeIds++] = id;
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

  receiveBatch(out: PacketBuffer[], max: number, queue = 0): number {
    const q = this.#queue(queue);
    const r = q.rx, mask = r.size - 1;
    const offs = this.#rxOff, lens = this.#rxLen, isData = this.#rxData;
    let avail = r.available(), k = 0;
    try {
      while (avail > 0 && k < max) {
        // One frame (netif.h RX): a data response, its extra-info segments if it has NETRXF_extra_info, then more
        // data responses while NETRXF_more_data is set. Every field is copied out and checked first.
        let n = 0, more = true, extra = false, total = 0, bad = false, flags0 = 0, data = 0;
        while (more || extra) {
          if (n === avail) break;
          if (n === MAX_FRAME_SLOTS) {
            throw r.failure(`a received frame spans more than ${MAX_FRAME_SLOTS} slots`);
          }
          const idx = (r.rspCons + n) >>> 0, e = r.entry(idx);
          if (extra) {
            // netif_extra_info { u8 type; u8 flags; ... }
            extra = (r.page[e + 1] & XEN_NETIF_EXTRA_FLAG_MORE) !== 0;
            isData[n++] = 0;
            continue;
          }
          // netif_rx_response { u16 id; u16 offset; u16 flags; s16 status; }
          const id = r.u16[e >> 1], offset = r.u16[(e >> 1) + 1], flags = r.u16[(e >> 1) + 2];
          const status = r.i16[(e >> 1) + 3];
          if (id !== (idx & mask)) throw r.failure(`backend answered RX slot ${idx & mask} with id ${id}`);
          if (status > 0 && offset + status > XEN_PAGE) {
            throw r.failure(`backend placed ${status} bytes at offset ${offset} of a ${XEN_PAGE}-byte page`);
          }
          if (n === 0) {
            flags0 = flags;
            extra = (flags & NETRXF_extra_info) !== 0;
          }
          if (status < 0) bad = true;
          else total += status;
          more = (flags & NETRXF_more_data) !== 0;
          offs[n] = offset;
          lens[n] = status;
          isData[n++] = 1;
          data++;
        }
        if (more || extra) break; // the rest of the frame is not there yet
        const start = r.rspCons;
        r.rspCons = (r.rspCons + n) >>> 0;
        avail -= n;
        const flags = (flags0 & NETRXF_data_validated ? 2 : 0) | (flags0 & NETRXF_csum_blank ? 1 : 0);
        let b: PacketBuffer | null = null;
        if (!bad && total >= 14 && total <= this.maxFrame) {
          if (data === 1) {
            // One slot: hand the page itself to the application.
            for (let s = 0; s < n; s++) {
              if (!isData[s]) continue;
              const slot = (start + s) & mask;
              b = q.rxSlot[slot]!;
              q.rxSlot[slot] = null;
              if (offs[s]) b.data.copyWithin(0, offs[s], offs[s] + total);
              q.rxPool.toApp(b);
            }
          } else if ((b = q.rxGather.take())) {
            let at = b.slotOffset;
            for (let s = 0; s < n; s++) {
              if (!isData[s] || lens[s] === 0) continue;
              const page = q.rxSlot[(start + s) & mask]!;
              copy(
                q.rxGather.bytes,
                q.gather32,
                at,
                q.rxPages.bytes,
                q.rx32,
                page.slotOffset + offs[s],
                lens[s],
              );
              at += lens[s];
            }
          }
        }
        // Give every slot's page still held back to the ring.
        for (let s = 0; s < n; s++) {
          const slot = (start + s) & mask, p = q.rxSlot[slot];
          if (!p) continue;
          q.rxSlot[slot] = null;
          q.rxPool.put(p, "device");
        }
        if (!b) {
          q.stats.rxDropped++; // errors, runts, frames over the MTU, or no gather buffer free
          continue;
        }
        b.length = total;
        b.flags = flags;
        out[k++] = b;
        q.stats.rxPackets++;
        q.stats.rxBytes += total;
      }
    } catch (e) {
      // The ring broke part-way: frames already moved to `out` go back, so the caller holds nothing it was not told of.
      for (let i = 0; i < k; i++) out[i].pool.put(out[i], "app");
      throw e;
    }
    try {
      this.#refill(q);
    } catch (e) {
      // The ring broke while refilling: the frames in `out` are good and go to the caller; the next call throws.
      if (k === 0) throw e;
    }
    return k;
  }

  release(pkts: PacketBuffer[], n: number, queue = 0): void {
    // A buffer of an earlier connection goes back to its retired pool, which ends its grants with the last one.
    releaseOwned(pkts, n, this.#pools, this.name);
    const q = this.#q[queue];
    if (q && this.#connected && !this.#closed) this.#refill(q);
  }

  async waitRx(queue = 0): Promise<void> {
    const q = this.#queue(queue);
    if (q.rx.finalCheck()) {
      q.rx.quiet();
      return;
    }
    await q.evRx.wait();
    q.stats.interrupts++;
    q.rx.quiet();
  }

  stats(): QueueStats[] {
    return this.#q.map((q) => ({ ...q.stats }));
  }

  /** Ring indices, for diagnostics: [req_prod, req_event, rsp_prod, rsp_event] and our private counters. */
  ringState(queue = 0): string {
    const q = this.#q[queue];
    if (!q) return "no queue";
    const f = (r: FrontRing) =>
      `req_prod ${r.hdr[0]} req_event ${r.hdr[1]} rsp_prod ${r.hdr[2]} rsp_event ${
        r.hdr[3]
      } pvt ${r.reqProdPvt} cons ${r.rspCons}`;
    return `tx: ${f(q.tx)}; rx: ${f(q.rx)}`;
  }

  /** Throws when a ring broke. */
  checkHealth(): void {
    for (const q of this.#q) {
      if (q.tx.broken) throw q.tx.broken;
      if (q.rx.broken) throw q.rx.broken;
    }
  }

  #watchBackend(): void {
    const it = this.#xs.watch(`${this.backend}/state`);
    this.#stopWatch = () => it.return!();
    this.#watcher = (async () => {
      for await (const _ of it) {
        if (this.#closed) break;
        const s = await this.#backendState().catch(() => XenbusState.Closed);
        if ((s === XenbusState.Closing || s === XenbusState.Closed) && this.#connected) {
          // Backend going away: stop using the rings, answer Closing/Closed, wait for it to come back.
          this.#connected = false;
          await this.#xs.write(`${this.dir}/state`, String(XenbusState.Closing)).catch(() => {});
          await this.#waitBackend((x) => x === XenbusState.Closed || x === XenbusState.InitWait, "Closed")
            .catch(() => {});
          this.#releaseQueues();
          await this.#xs.write(`${this.dir}/state`, String(XenbusState.Closed)).catch(() => {});
        } else if (s === XenbusState.InitWait && !this.#connected && !this.#closed) {
          try {
            await this.#connect();
            this.reconnects++;
          } catch {
            this.#releaseQueues();
          }
        }
      }
    })().catch(() => {});
  }

  #releaseQueues(): void {
    for (const q of this.#q.splice(0)) {
      q.evTx.close();
      if (q.evRx !== q.evTx) q.evRx.close();
      q.ringPages.free();
      // The pools end their grants now, or when the application releases the last buffer it holds: until then
      // those pages stay mapped, so a held buffer never aliases a later connection's rings.
      q.txPool.retire();
      q.rxPool.retire();
      q.rxGather.retire();
    }
    this.queues = 0;
  }

  async #teardown(graceful: boolean): Promise<void> {
    this.#closed = true;
    this.#connected = false;
    // Once xenstore stops answering (or the connection is gone), the remaining XenBus steps are skipped: grants and
    // ports are released whatever xenstore does. A step xenstore refuses does not stop the others.
    const step = async (f: () => Promise<unknown>) => {
      if (!this.#xs.unresponsive) await f().catch(() => {});
    };
    try {
      // The watch ends here at once; only its UNWATCH request is waited for, and only while xenstore answers.
      const unwatching = this.#stopWatch?.();
      await step(async () => await unwatching);
      await step(async () => await this.#watcher);
      if (graceful) {
        // netif.h: Closing, wait for the backend to close (it unmaps our grants), then Closed.
        await step(() => this.#xs.write(`${this.dir}/state`, String(XenbusState.Closing)));
        await step(() =>
          this.#waitBackend((s) => s >= XenbusState.Closing || s === XenbusState.InitWait, "Closing")
        );
      }
    } finally {
      this.#releaseQueues();
    }
    await step(() => this.#xs.write(`${this.dir}/state`, String(XenbusState.Closed)));
  }

  /** Disconnect gracefully (state Closing → Closed), end the grants and close the ports. */
  async shutdown(): Promise<void> {
    if (this.#closed) return;
    await this.#teardown(true);
  }

  close(): Promise<void> {
    return this.shutdown();
  }
}
