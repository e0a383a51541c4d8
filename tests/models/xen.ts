/**
 * The Xen side of netfront's seams, in-process: grant pages (a table the backend maps by reference), event
 * channels (a port pair), and a netback that follows the XenBus protocol through the xenstore model and serves the
 * netif rings (Xen public/io/netif.h, ring.h). It can also misbehave.
 */
import type { EventChannel, EventChannels, GrantedPages, GrantTable } from "../../hal/xen.ts";
import { XEN_PAGE } from "../../hal/xen.ts";
import { ringSize } from "../../drivers/xen/ring.ts";
import { ModelIrq } from "./irq.ts";
import { XenbusState as XS } from "../../drivers/xen/xenbus.ts";
import { NETRXF_extra_info, NETRXF_more_data, NETTXF_more_data } from "../../drivers/xen/netif.ts";
import type { XenStoreServer } from "./xenstore_server.ts";

/** Grants as shared ArrayBuffers; the backend maps pages by reference. */
export class ModelGrants implements GrantTable {
  #next = 8;
  #pages = new Map<number, { bytes: Uint8Array; domid: number }>();
  #used = 0;
  /** Event-channel port to signal when a grant's pages are unmapped, by the first ref of each allocation. */
  readonly unmapNotify = new Map<number, number>();
  constructor(readonly limit = 1024) {}
  get remaining(): number {
    return this.limit - this.#used;
  }
  /** Grants not ended. */
  get live(): number {
    return this.#pages.size;
  }
  grant(count: number, domid: number): GrantedPages {
    if (this.#used + count > this.limit) {
      throw new Error(`gntalloc: no space (${this.#used} of ${this.limit} in use)`);
    }
    const bytes = new Uint8Array(count * XEN_PAGE);
    const refs = new Uint32Array(count);
    for (let i = 0; i < count; i++) {
      refs[i] = this.#next++;
      this.#pages.set(refs[i], { bytes: bytes.subarray(i * XEN_PAGE, (i + 1) * XEN_PAGE), domid });
    }
    this.#used += count;
    let freed = false;
    return {
      refs,
      bytes,
      free: () => {
        if (freed) return;
        freed = true;
        for (const r of refs) this.#pages.delete(r);
        this.#used -= count;
      },
      notifyOnUnmap: (port: number) => void this.unmapNotify.set(refs[0], port),
    };
  }
  /** The backend maps `ref` (as domain `domid`); throws for refs not granted to it. */
  map(ref: number, domid: number): Uint8Array {
    const p = this.#pages.get(ref);
    if (!p || p.domid !== domid) throw new Error(`grant ${ref} is not granted to domain ${domid}`);
    return p.bytes;
  }
}

/** Event channels between the frontend and the model backend. */
export class ModelEvtchns implements EventChannels {
  #next = 10;
  readonly ports = new Map<number, { front: ModelIrq; back: (() => void) | null; closed: boolean }>();
  bindUnbound(_remote: number): EventChannel {
    const port = this.#next++;
    const front = new ModelIrq();
    const e = { front, back: null as (() => void) | null, closed: false };
    this.ports.set(port, e);
    return {
      port,
      notify: () => e.back?.(),
      wait: () => front.wait(),
      poll: () => front.poll(),
      waitSync: (ms: number) => front.waitSync(ms),
      close: () => {
        e.closed = true;
        this.ports.delete(port);
      },
    };
  }
  /** The backend binds `port`; `onEvent` runs when the frontend notifies. Returns the backend's notify. */
  bind(port: number, onEvent: () => void): () => void {
    const e = this.ports.get(port);
    if (!e) throw new Error(`event channel ${port} does not exist`);
    e.back = onEvent;
    return () => e.front.signal();
  }
}

interface BackQueue {
  tx: Uint8Array;
  rx: Uint8Array;
  txDv: DataView;
  rxDv: DataView;
  txCons: number;
  rxCons: number;
  notifyTx: () => void;
  notifyRx: () => void;
}

/** Options of the netback model. */
export interface NetbackOptions {
  frontDomid?: number;
  backDomid?: number;
  vif?: number;
  mac?: string;
  split?: boolean;
  maxQueues?: number;
  rxCopy?: boolean;
  /** Offer feature-sg (default true). */
  sg?: boolean;
}

const TXS = ringSize(12), RXS = ringSize(8);

/** A netback driving the rings from the device side. */
export class NetbackModel {
  readonly front: string;
  readonly back: string;
  readonly frontDomid: number;
  readonly backDomid: number;
  /** Frames the frontend sent, per queue. */
  sent: Uint8Array[][] = [];
  /** Events the backend sent to the frontend. */
  events = 0;
  #q: BackQueue[] = [];
  /** Process TX on each event (default true). */
  autoProcess = true;
  /** Errors the backend met reacting to the frontend (bad grant references, keys). */
  readonly errors: Error[] = [];

  constructor(
    readonly xs: XenStoreServer,
    readonly grants: ModelGrants,
    readonly evtchns: ModelEvtchns,
    readonly o: NetbackOptions = {},
  ) {
    this.frontDomid = o.frontDomid ?? 1;
    this.backDomid = o.backDomid ?? 0;
    const vif = o.vif ?? 0;
    this.front = `/local/domain/${this.frontDomid}/device/vif/${vif}`;
    this.back = `/local/domain/${this.backDomid}/backend/vif/${this.frontDomid}/${vif}`;
    xs.set(`${this.front}/backend`, this.back);
    xs.set(`${this.front}/backend-id`, String(this.backDomid));
    xs.set(`${this.front}/mac`, o.mac ?? "00:16:3e:12:34:56");
    xs.set(`${this.front}/state`, String(XS.Initialising));
    xs.set(`${this.back}/frontend`, this.front);
    xs.set(`${this.back}/frontend-id`, String(this.frontDomid));
    if (o.rxCopy ?? true) xs.set(`${this.back}/feature-rx-copy`, "1");
    if (o.split ?? true) xs.set(`${this.back}/feature-split-event-channels`, "1");
    if (o.sg ?? true) xs.set(`${this.back}/feature-sg`, "1");
    if ((o.maxQueues ?? 1) > 1) xs.set(`${this.back}/multi-queue-max-queues`, String(o.maxQueues));
    this.#setState(XS.InitWait);
    xs.onWrite = (path, value) => {
      if (path === `${this.front}/state`) {
        queueMicrotask(() => {
          try {
            this.#frontState(Number(value));
          } catch (e) {
            this.errors.push(e as Error); // a backend that cannot map what it was given stays where it is
          }
        });
      }
    };
  }

  get state(): number {
    return Number(this.xs.get(`${this.back}/state`));
  }

  #frontState(s: number): void {
    // like xen-netback: Initialised alone does nothing
    if (s === XS.Connected && this.state === XS.InitWait) this.#connect();
    if ((s === XS.Closing || s === XS.Closed) && this.state === XS.Connected) {
      this.#q = [];
      this.#setState(XS.Closed);
    }
    // netback: "prepare for reconnect"
    if (s === XS.Initialising && this.state === XS.Closed) this.#setState(XS.InitWait);
  }

  #setState(s: number): void {
    this.xs.set(`${this.back}/state`, String(s));
  }

  #connect(): void {
    const get = (k: string) => this.xs.get(`${this.front}/${k}`);
    const nq = Number(get("multi-queue-num-queues") ?? 1);
    this.#q = [];
    this.sent = [];
    for (let i = 0; i < nq; i++) {
      const p = nq > 1 ? `queue-${i}/` : "";
      const tx = this.grants.map(Number(get(`${p}tx-ring-ref`)), this.backDomid);
      const rx = this.grants.map(Number(get(`${p}rx-ring-ref`)), this.backDomid);
      const split = get(`${p}event-channel-tx`) !== undefined;
      const q: BackQueue = {
        tx,
        rx,
        txDv: new DataView(tx.buffer, tx.byteOffset, XEN_PAGE),
        rxDv: new DataView(rx.buffer, rx.byteOffset, XEN_PAGE),
        txCons: 0,
        rxCons: 0,
        notifyTx: () => {},
        notifyRx: () => {},
      };
      const onTx = () => {
        if (this.autoProcess) this.processTx(i);
      };
      if (split) {
        q.notifyTx = this.evtchns.bind(Number(get(`${p}event-channel-tx`)), onTx);
        q.notifyRx = this.evtchns.bind(Number(get(`${p}event-channel-rx`)), () => {});
      } else {
        q.notifyTx = q.notifyRx = this.evtchns.bind(Number(get(`${p}event-channel`)), onTx);
      }
      this.#q.push(q);
      this.sent.push([]);
    }
    this.#setState(XS.Connected);
  }

  #pushResponses(dv: DataView, newProd: number, notify: () => void): void {
    const old = dv.getUint32(8, true);
    dv.setUint32(8, newProd >>> 0, true);
    const ev = dv.getUint32(12, true);
    if (((newProd - ev) >>> 0) < ((newProd - old) >>> 0)) {
      this.events++;
      notify();
    }
  }

  /**
   * Consume TX requests of queue `i`: gather each frame from its slots (the first slot's size is the frame's,
   * more_data chains the rest), answer OKAY for the first slot and NULL for the others, as netback does.
   */
  processTx(i: number, reverse = false): number {
    const q = this.#q[i];
    if (!q) return 0;
    const prod = q.txDv.getUint32(0, true);
    let n = 0, rsp = q.txDv.getUint32(8, true);
    const answers: [number, number][] = [];
    let frame: Uint8Array | null = null, at = 0;
    while (q.txCons !== prod) {
      const e = 64 + (q.txCons % TXS) * 12;
      const gref = q.txDv.getUint32(e, true),
        off = q.txDv.getUint16(e + 4, true),
        flags = q.txDv.getUint16(e + 6, true),
        id = q.txDv.getUint16(e + 8, true);
      const size = q.txDv.getUint16(e + 10, true);
      const page = this.grants.map(gref, this.backDomid);
      const first = frame === null;
      if (first) {
        frame = new Uint8Array(size);
        at = 0;
      }
      // The first slot's size is the frame's: its own data is what fits in its page, or all of it when it is the
      // only slot; later slots carry their own size.
      const chunk = first && (flags & NETTXF_more_data) ? Math.min(size, XEN_PAGE - off) : size;
      if (off + chunk > XEN_PAGE || at + chunk > frame!.length) throw new Error("model netback: bad TX slot");
      frame!.set(page.subarray(off, off + chunk), at);
      at += chunk;
      if (!(flags & NETTXF_more_data)) {
        // netback checks the same: the slots' data adds up to the first slot's size.
        if (at !== frame!.length) {
          throw new Error(`model netback: slots carry ${at} of ${frame!.length} bytes`);
        }
        this.sent[i].push(frame!);
        frame = null;
      }
      answers.push([id, first ? 0 : 1]);
      q.txCons = (q.txCons + 1) >>> 0;
      n++;
    }
    // netback may complete slots out of order (e.g. zero-copy callbacks): `reverse` answers them backwards.
    if (reverse) answers.reverse();
    for (const [id, status] of answers) {
      const r = 64 + (rsp % TXS) * 12;
      q.txDv.setUint16(r, id, true);
      q.txDv.setInt16(r + 2, status, true);
      rsp = (rsp + 1) >>> 0;
    }
    q.txDv.setUint32(4, (q.txCons + 1) >>> 0, true); // req_event: tell us at the next request
    if (n) this.#pushResponses(q.txDv, rsp, q.notifyTx);
    return n;
  }

  /** RX requests the frontend has posted on queue `i`. */
  rxPosted(i = 0): number {
    const q = this.#q[i];
    return q ? (q.rxDv.getUint32(0, true) - q.rxCons) >>> 0 : 0;
  }

  /**
   * Copy `frame` into the next posted RX buffers of queue `i`: `offset` into the first page, then as many more
   * pages as it needs (or `slotBytes` per slot), chained with more_data; `extra` puts an extra-info segment after
   * the first slot. Responses are published together unless `publish` is false (then {@link jumpRx} does). False when too few are posted.
   */
  deliver(
    frame: Uint8Array,
    i = 0,
    o: { flags?: number; offset?: number; slotBytes?: number; extra?: boolean; publish?: boolean } = {},
  ): boolean {
    const q = this.#q[i];
    const off0 = o.offset ?? 0, per = o.slotBytes ?? XEN_PAGE;
    const slots = Math.max(1, Math.ceil((off0 + frame.length) / per)) + (o.extra ? 1 : 0);
    if (!q || this.rxPosted(i) < slots) return false;
    if (slots > 1 && this.xs.get(`${this.front}/feature-sg`) !== "1") {
      throw new Error("model netback: multi-slot frame for a frontend without feature-sg");
    }
    let rsp = q.rxDv.getUint32(8, true), at = 0, off = off0;
    for (let s = 0; s < slots; s++) {
      const e = 64 + (q.rxCons % RXS) * 8;
      const id = q.rxDv.getUint16(e, true), gref = q.rxDv.getUint32(e + 4, true);
      q.rxCons = (q.rxCons + 1) >>> 0;
      const r = 64 + (rsp % RXS) * 8;
      rsp = (rsp + 1) >>> 0;
      if (o.extra && s === 1) {
        q.rxDv.setUint8(r, 1); // XEN_NETIF_EXTRA_TYPE_GSO, no more extras
        q.rxDv.setUint8(r + 1, 0);
        continue;
      }
      const chunk = Math.min(frame.length - at, per - off);
      this.grants.map(gref, this.backDomid).set(frame.subarray(at, at + chunk), off);
      at += chunk;
      const flags = (s === 0 ? (o.flags ?? 0) | (o.extra ? NETRXF_extra_info : 0) : 0) |
        (at < frame.length ? NETRXF_more_data : 0);
      q.rxDv.setUint16(r, id, true);
      q.rxDv.setUint16(r + 2, off, true);
      q.rxDv.setUint16(r + 4, flags, true);
      q.rxDv.setInt16(r + 6, chunk, true);
      off = 0;
    }
    if (o.publish ?? true) this.#pushResponses(q.rxDv, rsp, q.notifyRx); // else: jumpRx publishes them
    return true;
  }

  /** Consume the next posted RX request of queue `i` and answer it with error `status` (e.g. -1). */
  deliverError(i: number, status: number): void {
    const q = this.#q[i];
    const id = q.rxDv.getUint16(64 + (q.rxCons % RXS) * 8, true);
    q.rxCons = (q.rxCons + 1) >>> 0;
    this.rxResponse(i, id, 0, 0, status);
  }

  /** Write an RX response (hostile tests use it directly). */
  rxResponse(i: number, id: number, offset: number, flags: number, status: number): void {
    const q = this.#q[i];
    const rsp = q.rxDv.getUint32(8, true);
    const r = 64 + (rsp % RXS) * 8;
    q.rxDv.setUint16(r, id, true);
    q.rxDv.setUint16(r + 2, offset, true);
    q.rxDv.setUint16(r + 4, flags, true);
    q.rxDv.setInt16(r + 6, status, true);
    this.#pushResponses(q.rxDv, (rsp + 1) >>> 0, q.notifyRx);
  }

  /** Write a TX response (hostile tests). */
  txResponse(i: number, id: number, status: number): void {
    const q = this.#q[i];
    const rsp = q.txDv.getUint32(8, true);
    const r = 64 + (rsp % TXS) * 12;
    q.txDv.setUint16(r, id, true);
    q.txDv.setInt16(r + 2, status, true);
    this.#pushResponses(q.txDv, (rsp + 1) >>> 0, q.notifyTx);
  }

  /** Move rsp_prod of queue `i`'s RX ring forward by `n` with no responses. */
  jumpRx(i: number, n: number): void {
    const q = this.#q[i];
    q.rxDv.setUint32(8, (q.rxDv.getUint32(8, true) + n) >>> 0, true);
  }

  /** Simulate a backend restart: Closing → Closed → InitWait (a fresh backend). */
  async restart(): Promise<void> {
    this.#setState(XS.Closing);
    await new Promise((r) => setTimeout(r, 10));
    this.#q = [];
    this.#setState(XS.Closed);
    await new Promise((r) => setTimeout(r, 10));
    this.#setState(XS.InitWait);
  }
}
