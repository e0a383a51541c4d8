/**
 * Xen netfront (Xen public/io/netif.h) from a domU's userspace, behind the common {@link Nic} interface.
 *
 * XenBus: Initialising → (backend InitWait) → keys written in one transaction with Initialised → Connected →
 * (backend Connected: Linux's xen-netback connects on the frontend's Connected); Closing/Closed from either side;
 * a backend that comes back to InitWait is reconnected.
 * Rings: TX (12-byte unions) and RX (8-byte unions), 256 slots each. TX buffers are 2 KiB halves of granted pages,
 * RX buffers whole granted pages (the backend copies into them: request-rx-copy). Nothing the backend writes is
 * trusted: ids, statuses, offsets and lengths are checked before they index anything.
 * @module
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import {
  emptyStats,
  type Nic,
  type PacketBuffer,
  PacketPool,
  parseMac,
  type QueueStats,
  releaseTo,
} from "../nic.ts";
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
const NETTXF_csum_blank = 1, NETTXF_data_validated = 2;
const NETRXF_data_validated = 1, NETRXF_csum_blank = 2, NETRXF_more_data = 4, NETRXF_extra_info = 8;
const NETIF_RSP_OKAY = 0;
const TX_ENTRY = 12, RX_ENTRY = 8, TX_SLOT = 2048;

/** Options for {@link Netfront.open}. */
export interface NetfrontOptions {
  /** The vif index under device/vif (default 0). */
  vif?: number;
  /** Queues wanted (capped by the backend's multi-queue-max-queues). */
  queues?: number;
  /** How long to wait for the backend at each step (ms). */
  timeoutMs?: number;
}

interface Queue {
  tx: FrontRing;
  rx: FrontRing;
  ringPages: GrantedPages;
  txPages: GrantedPages;
  rxPages: GrantedPages;
  txPool: PacketPool;
  rxPool: PacketPool;
  txInFlight: Uint8Array;
  rxByRef: (PacketBuffer | null)[];
  evTx: EventChannel;
  evRx: EventChannel;
  skip: number;
  stats: QueueStats;
}

function region(p: GrantedPages): DmaRegion {
  return { bytes: p.bytes, deviceAddress: 0, size: p.bytes.length, free: () => p.free() };
}

/** A netfront NIC. */
export class Netfront implements Nic {
  readonly name: string;
  readonly mac: Uint8Array;
  readonly mtu = 1500;
  readonly maxFrame = 1514;
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
  #closed = false;
  #connected = false;
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
    await xs.write(`${this.dir}/state`, String(XenbusState.Initialising));
    await this.#waitBackend((s) => s === XenbusState.InitWait || s === XenbusState.Connected, "InitWait");
    if ((await this.#feature("feature-rx-copy")) !== "1") {
      throw new XenStoreError("EOPNOTSUPP", `backend ${this.backend} does not offer feature-rx-copy`);
    }
    this.#split = (await this.#feature("feature-split-event-channels")) === "1";
    const maxText = await this.#feature("multi-queue-max-queues");
    const maxQ = maxText === null ? 1 : Number(maxText);
    if (!Number.isInteger(maxQ) || maxQ < 1 || maxQ > 256) {
      throw new XenStoreError("EPROTO", `multi-queue-max-queues is '${maxText}'`);
    }
    const nq = Math.max(1, Math.min(this.#opts.queues ?? 1, maxQ));
    const need = nq * (2 + 128 + 256);
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
      await put("feature-sg", 0);
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
    let txPages: GrantedPages | null = null, rxPages: GrantedPages | null = null;
    try {
      txPages = g.grant(256 * TX_SLOT / XEN_PAGE, dom);
      rxPages = g.grant(256, dom);
      const evTx = this.#evtchns.bindUnbound(dom);
      const evRx = this.#split ? this.#evtchns.bindUnbound(dom) : evTx;
      return {
        tx: new FrontRing(ringPages.bytes.subarray(0, XEN_PAGE), TX_ENTRY, `vif tx ring ${i}`),
        rx: new FrontRing(ringPages.bytes.subarray(XEN_PAGE, 2 * XEN_PAGE), RX_ENTRY, `vif rx ring ${i}`),
        ringPages,
        txPages,
        rxPages,
        txPool: new PacketPool(`tx${i}`, region(txPages), 256, TX_SLOT, 0),
        rxPool: new PacketPool(`rx${i}`, region(rxPages), 256, XEN_PAGE, 0),
        txInFlight: new Uint8Array(256),
        rxByRef: new Array(256).fill(null),
        evTx,
        evRx,
        skip: 0,
        stats: emptyStats(),
      };
    } catch (e) {
      ringPages.free();
      txPages?.free();
      rxPages?.free();
      throw e;
    }
  }

  #queue(i: number): Queue {
    if (this.#closed) throw new Error(`${this.name} is closed`);
    const q = this.#q[i];
    if (!q) throw new RangeError(`${this.name}: queue ${i} out of range (0..${this.queues - 1})`);
    if (!this.#connected) throw new Error(`${this.name}: backend not connected (reconnecting?)`);
    return q;
  }

  #refill(q: Queue): void {
    const r = q.rx;
    let added = 0;
    while (r.free > 0) {
      const b = q.rxPool.takeForDevice();
      if (!b) break;
      // netif_rx_request { u16 id; u16 pad; u32 gref; } — id is the buffer (page) index.
      const e = r.entry(r.reqProdPvt);
      r.u16[e >> 1] = b.index;
      r.u32[(e >> 2) + 1] = q.rxPages.refs[b.index];
      q.rxByRef[b.index] = b;
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
    const r = q.tx;
    if (r.free < n) this.reclaimTx(queue);
    let k = 0;
    for (; k < n && r.free > 0; k++) {
      const b = pkts[k];
      if (!(b.length >= 14 && b.length <= this.maxFrame)) {
        throw new RangeError(`${this.name}: frame length ${b.length} outside 14..${this.maxFrame}`);
      }
      q.txPool.toDevice(b);
      // netif_tx_request { u32 gref; u16 offset; u16 flags; u16 id; u16 size; }
      const e = r.entry(r.reqProdPvt);
      r.u32[e >> 2] = q.txPages.refs[b.slotOffset >>> 12];
      r.u16[(e >> 1) + 2] = b.slotOffset & (XEN_PAGE - 1);
      r.u16[(e >> 1) + 3] = b.csumOffset ? NETTXF_csum_blank | NETTXF_data_validated : 0;
      r.u16[(e >> 1) + 4] = b.index;
      r.u16[(e >> 1) + 5] = b.length;
      q.txInFlight[b.index] = 1;
      r.reqProdPvt = (r.reqProdPvt + 1) >>> 0;
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
    for (let i = 0; i < n; i++) {
      // netif_tx_response { u16 id; s16 status; }
      const e = r.entry(r.rspCons);
      const id = r.u16[e >> 1], status = r.i16[(e >> 1) + 1];
      if (id >= 256 || !q.txInFlight[id]) {
        throw r.failure(`backend completed TX id ${id}, which is not in flight`);
      }
      q.txInFlight[id] = 0;
      const b = q.txPool.buffers[id];
      if (status === NETIF_RSP_OKAY) {
        q.stats.txPackets++;
        q.stats.txBytes += b.length;
      } else q.stats.txErrors++;
      q.txPool.put(b, "device");
      r.rspCons = (r.rspCons + 1) >>> 0;
    }
    return n;
  }

  receiveBatch(out: PacketBuffer[], max: number, queue = 0): number {
    const q = this.#queue(queue);
    const r = q.rx;
    let n = r.available(), k = 0;
    while (n > 0 && k < max) {
      n--;
      // netif_rx_response { u16 id; u16 offset; u16 flags; s16 status; }
      const e = r.entry(r.rspCons);
      const id = r.u16[e >> 1],
        offset = r.u16[(e >> 1) + 1],
        flags = r.u16[(e >> 1) + 2],
        status = r.i16[(e >> 1) + 3];
      const b = id < 256 ? q.rxByRef[id] : null;
      if (!b) throw r.failure(`backend returned RX id ${id}, which it does not hold`);
      q.rxByRef[id] = null;
      r.rspCons = (r.rspCons + 1) >>> 0;
      if (status > 0 && offset + status > XEN_PAGE) {
        q.rxPool.put(b, "device");
        throw r.failure(`backend placed ${status} bytes at offset ${offset} of a ${XEN_PAGE}-byte page`);
      }
      const more = (flags & (NETRXF_more_data | NETRXF_extra_info)) !== 0;
      if (q.skip > 0 || status < 14 || more) {
        // Errors, runts, and multi-slot frames (we did not ask for feature-sg) are dropped with all their slots.
        if (q.skip > 0) q.skip--;
        if (more) q.skip++;
        q.stats.rxDropped++;
        q.rxPool.put(b, "device");
        continue;
      }
      if (offset) b.data.copyWithin(0, offset, offset + status);
      b.length = status;
      b.flags = (flags & NETRXF_data_validated ? 2 : 0) | (flags & NETRXF_csum_blank ? 1 : 0);
      q.rxPool.toApp(b);
      out[k++] = b;
      q.stats.rxPackets++;
      q.stats.rxBytes += status;
    }
    this.#refill(q);
    return k;
  }

  release(pkts: PacketBuffer[], n: number, queue = 0): void {
    const q = this.#queue(queue);
    releaseTo(pkts, n, q.rxPool, q.txPool);
    this.#refill(q);
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
      q.txPages.free();
      q.rxPages.free();
    }
    this.queues = 0;
  }

  async #teardown(graceful: boolean): Promise<void> {
    this.#closed = true;
    this.#connected = false;
    await this.#stopWatch?.();
    await this.#watcher;
    if (graceful) {
      // netif.h: Closing, wait for the backend to close (it unmaps our grants), then Closed.
      await this.#xs.write(`${this.dir}/state`, String(XenbusState.Closing)).catch(() => {});
      await this.#waitBackend((s) => s >= XenbusState.Closing || s === XenbusState.InitWait, "Closing")
        .catch(() => {});
    }
    this.#releaseQueues();
    await this.#xs.write(`${this.dir}/state`, String(XenbusState.Closed)).catch(() => {});
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
