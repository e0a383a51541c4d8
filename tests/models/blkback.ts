/**
 * A blkback in-process: follows the XenBus protocol through the xenstore model as Linux's xen-blkback does
 * (InitWait with its ring features; on the frontend's Initialised, map the rings, write the disk's keys and say
 * Connected) and serves the blkif rings (Xen public/io/blkif.h) from a disk in memory, with the library's wire
 * module (drivers/xen/blkif.ts) — the same records blkfront writes. It can misbehave: forged responses, statuses
 * outside the protocol, rsp_prod jumps, event storms, garbage in its keys, restarts and resizes.
 */
import { XEN_PAGE } from "../../hal/xen.ts";
import {
  BLKIF_ENTRY,
  BLKIF_MAX_SEGMENTS,
  BLKIF_OP,
  BLKIF_RSP,
  BLKIF_SECTOR,
  type BlkifRequest,
  readIndirectGref,
  readIndirectSegment,
  readRequest,
  readSegment,
  SEGMENTS_PER_INDIRECT_PAGE,
  VDISK,
  writeResponse,
} from "../../drivers/xen/blkif.ts";
import { ringSize, type RingViews, ringViews } from "../../drivers/xen/ring.ts";
import { XenbusState as XS } from "../../drivers/xen/xenbus.ts";
import type { ModelEvtchns, ModelGrants } from "./xen.ts";
import type { XenStoreServer } from "./xenstore_server.ts";

/** Options of the blkback model. */
export interface BlkbackOptions {
  frontDomid?: number;
  backDomid?: number;
  /** The vbd's virtual-device number (default 51712, xvda). */
  vbd?: number;
  /** Disk size in sectors of sectorSize (default 16384). */
  sectors?: number;
  sectorSize?: number;
  physicalSectorSize?: number;
  readOnly?: boolean;
  /** feature-persistent (default true): without it blkback maps and unmaps each request's grants. */
  persistent?: boolean;
  /** feature-flush-cache (default true). */
  flush?: boolean;
  barrier?: boolean;
  discard?: boolean;
  discardGranularity?: number;
  discardSecure?: boolean;
  /** feature-max-indirect-segments (default 256; 0: none). */
  maxIndirectSegments?: number;
  /** max-ring-page-order (default 4). */
  maxRingPageOrder?: number;
  /** multi-queue-max-queues (default 1: not written). */
  maxQueues?: number;
}

/** One request the model served, for tests. */
export interface BlkbackRecord {
  op: number;
  sector: number;
  segments: number;
  status: number;
}

interface BackRing {
  v: RingViews;
  size: number;
  cons: number;
  notify: () => void;
}

/** A blkback serving a disk in memory. */
export class BlkbackModel {
  readonly front: string;
  readonly back: string;
  readonly frontDomid: number;
  readonly backDomid: number;
  /** The disk as reads see it. */
  disk: Uint8Array;
  /** What a flush made durable. */
  durable: Uint8Array;
  /** Requests served. */
  readonly served: BlkbackRecord[] = [];
  /** Serve requests on each event (default true). */
  autoProcess = true;
  /** Events sent to the frontend. */
  events = 0;
  /** Errors the backend met (a frontend's bad keys or requests, as a real blkback would log them). */
  readonly errors: string[] = [];
  /** Status to answer instead of the real one, by operation (hostile backend). */
  statusFor: ((op: number) => number | undefined) | null = null;
  /** Operation to answer instead of the real one (hostile backend). */
  opFor: ((op: number) => number | undefined) | null = null;
  #rings: BackRing[] = [];
  readonly #req: BlkifRequest = {
    op: 0,
    nseg: 0,
    handle: 0,
    id: 0,
    sector: 0,
    sectors: 0,
    indirectSegments: 0,
  };

  constructor(
    readonly xs: XenStoreServer,
    readonly grants: ModelGrants,
    readonly evtchns: ModelEvtchns,
    readonly o: BlkbackOptions = {},
  ) {
    this.frontDomid = o.frontDomid ?? 1;
    this.backDomid = o.backDomid ?? 0;
    const vbd = o.vbd ?? 51712;
    this.front = `/local/domain/${this.frontDomid}/device/vbd/${vbd}`;
    this.back = `/local/domain/${this.backDomid}/backend/vbd/${this.frontDomid}/${vbd}`;
    const bytes = (o.sectors ?? 16384) * (o.sectorSize ?? BLKIF_SECTOR);
    this.disk = new Uint8Array(bytes);
    this.durable = new Uint8Array(bytes);
    xs.set(`${this.front}/backend`, this.back);
    xs.set(`${this.front}/backend-id`, String(this.backDomid));
    xs.set(`${this.front}/virtual-device`, String(vbd));
    xs.set(`${this.front}/state`, String(XS.Initialising));
    xs.set(`${this.back}/frontend`, this.front);
    xs.set(`${this.back}/frontend-id`, String(this.frontDomid));
    const ind = o.maxIndirectSegments ?? 256;
    if (ind > 0) xs.set(`${this.back}/feature-max-indirect-segments`, String(ind));
    xs.set(`${this.back}/max-ring-page-order`, String(o.maxRingPageOrder ?? 4));
    if ((o.maxQueues ?? 1) > 1) xs.set(`${this.back}/multi-queue-max-queues`, String(o.maxQueues));
    this.#setState(XS.InitWait);
    xs.onWrite = (path, value) => {
      if (path === `${this.front}/state`) queueMicrotask(() => this.#frontState(Number(value)));
    };
  }

  get state(): number {
    return Number(this.xs.get(`${this.back}/state`));
  }

  #setState(s: number): void {
    this.xs.set(`${this.back}/state`, String(s));
  }

  #frontState(s: number): void {
    // Like xen-blkback: connect on Initialised (or Connected), drop the rings on Closing/Closed.
    if ((s === XS.Initialised || s === XS.Connected) && this.state === XS.InitWait) {
      try {
        this.#connect();
      } catch (e) {
        this.errors.push((e as Error).message);
      }
    }
    if ((s === XS.Closing || s === XS.Closed) && this.state === XS.Connected) {
      this.#rings = [];
      this.#setState(XS.Closing);
      queueMicrotask(() => this.#setState(XS.Closed));
    }
    if (s === XS.Initialising && this.state === XS.Closed) this.#setState(XS.InitWait);
  }

  /** Map `refs` (one allocation of contiguous pages, as blkfront grants a ring) as one view. */
  #mapPages(refs: number[]): Uint8Array {
    const first = this.grants.map(refs[0], this.backDomid);
    for (let k = 1; k < refs.length; k++) {
      const p = this.grants.map(refs[k], this.backDomid);
      if (p.buffer !== first.buffer || p.byteOffset !== first.byteOffset + k * XEN_PAGE) {
        throw new Error(`ring pages ${refs.join(",")} are not one contiguous grant`);
      }
    }
    return new Uint8Array(first.buffer, first.byteOffset, refs.length * XEN_PAGE);
  }

  #connect(): void {
    const get = (k: string) => this.xs.get(`${this.front}/${k}`);
    if (get("protocol") !== "x86_64-abi") throw new Error(`protocol is '${get("protocol")}'`);
    const order = Number(get("ring-page-order") ?? 0);
    const nq = Number(get("multi-queue-num-queues") ?? 1);
    this.#rings = [];
    for (let i = 0; i < nq; i++) {
      const p = nq > 1 ? `queue-${i}/` : "";
      const refs = order === 0
        ? [Number(get(`${p}ring-ref`))]
        : Array.from({ length: 1 << order }, (_, k) => Number(get(`${p}ring-ref${k}`)));
      const v = ringViews(this.#mapPages(refs));
      const ring: BackRing = { v, size: ringSize(BLKIF_ENTRY, 1 << order), cons: 0, notify: () => {} };
      ring.notify = this.evtchns.bind(Number(get(`${p}event-channel`)), () => {
        if (this.autoProcess) this.process(i);
      });
      this.#rings.push(ring);
    }
    this.#writeDiskKeys();
    this.#setState(XS.Connected);
  }

  #writeDiskKeys(): void {
    const o = this.o, set = (k: string, v: string | number) => this.xs.set(`${this.back}/${k}`, String(v));
    const ss = o.sectorSize ?? BLKIF_SECTOR;
    set("sectors", this.disk.length / ss);
    set("sector-size", ss);
    if (o.physicalSectorSize) set("physical-sector-size", o.physicalSectorSize);
    set("info", o.readOnly ? VDISK.READONLY : 0);
    set("feature-flush-cache", (o.flush ?? true) ? 1 : 0);
    set("feature-barrier", o.barrier ? 1 : 0);
    set("feature-persistent", (o.persistent ?? true) ? 1 : 0);
    if (o.discard) {
      set("feature-discard", 1);
      set("discard-granularity", o.discardGranularity ?? ss);
      set("discard-secure", o.discardSecure ? 1 : 0);
    }
  }

  /** Serve every request on ring `i`; returns how many. */
  process(i: number): number {
    const r = this.#rings[i];
    if (!r) return 0;
    const prod = r.v.u32[0];
    let n = 0;
    while (r.cons !== prod) {
      const e = 64 + (r.cons % r.size) * BLKIF_ENTRY;
      const q = readRequest(r.v, e, this.#req);
      r.cons = (r.cons + 1) >>> 0;
      const answerOp = q.op === BLKIF_OP.INDIRECT ? q.nseg : q.op;
      let st: number;
      try {
        st = this.#serve(r, e, q);
      } catch (err) {
        this.errors.push((err as Error).message);
        st = BLKIF_RSP.ERROR;
      }
      st = this.statusFor?.(q.op) ?? st;
      this.respond(i, q.id, this.opFor?.(answerOp) ?? answerOp, st);
      n++;
    }
    r.v.u32[1] = (r.cons + 1) >>> 0; // req_event: an event at the next request
    return n;
  }

  #serve(r: BackRing, e: number, q: BlkifRequest): number {
    const ss = BLKIF_SECTOR, off = q.sector * ss;
    switch (q.op) {
      case BLKIF_OP.READ:
      case BLKIF_OP.WRITE: {
        if (q.nseg < 1 || q.nseg > BLKIF_MAX_SEGMENTS) {
          throw new Error(`direct request with ${q.nseg} segments`);
        }
        const segs = [];
        for (let k = 0; k < q.nseg; k++) segs.push(readSegment(r.v, e, k));
        return this.#transfer(q.op, off, segs);
      }
      case BLKIF_OP.INDIRECT: {
        const max = this.o.maxIndirectSegments ?? 256, n = q.indirectSegments;
        if (n < 1 || n > max) throw new Error(`indirect request with ${n} segments`);
        if (q.nseg !== BLKIF_OP.READ && q.nseg !== BLKIF_OP.WRITE) throw new Error(`indirect op ${q.nseg}`);
        const segs = [];
        for (let k = 0; k < n; k++) {
          const page = this.grants.map(
            readIndirectGref(r.v, e, Math.floor(k / SEGMENTS_PER_INDIRECT_PAGE)),
            this.backDomid,
          );
          segs.push(readIndirectSegment(page, k % SEGMENTS_PER_INDIRECT_PAGE));
        }
        return this.#transfer(q.nseg, off, segs);
      }
      case BLKIF_OP.FLUSH_DISKCACHE:
      case BLKIF_OP.WRITE_BARRIER:
        if (q.op === BLKIF_OP.FLUSH_DISKCACHE && !(this.o.flush ?? true)) return BLKIF_RSP.EOPNOTSUPP;
        if (q.op === BLKIF_OP.WRITE_BARRIER && !this.o.barrier) return BLKIF_RSP.EOPNOTSUPP;
        this.durable.set(this.disk);
        this.served.push({ op: q.op, sector: 0, segments: 0, status: 0 });
        return BLKIF_RSP.OKAY;
      case BLKIF_OP.DISCARD: {
        if (!this.o.discard) return BLKIF_RSP.EOPNOTSUPP;
        const len = q.sectors * ss;
        if (off + len > this.disk.length) return BLKIF_RSP.ERROR;
        this.disk.fill(0, off, off + len);
        this.served.push({ op: q.op, sector: q.sector, segments: 0, status: 0 });
        return BLKIF_RSP.OKAY;
      }
      default:
        return BLKIF_RSP.EOPNOTSUPP;
    }
  }

  #transfer(op: number, off: number, segs: { gref: number; first: number; last: number }[]): number {
    if (op === BLKIF_OP.WRITE && this.o.readOnly) return BLKIF_RSP.ERROR;
    let at = off;
    for (const s of segs) {
      if (s.last < s.first || s.last >= XEN_PAGE / BLKIF_SECTOR) {
        throw new Error(`segment ${s.first}..${s.last}`);
      }
      const len = (s.last - s.first + 1) * BLKIF_SECTOR, po = s.first * BLKIF_SECTOR;
      if (at + len > this.disk.length) return BLKIF_RSP.ERROR;
      const page = this.grants.map(s.gref, this.backDomid);
      if (op === BLKIF_OP.READ) page.set(this.disk.subarray(at, at + len), po);
      else this.disk.set(page.subarray(po, po + len), at);
      at += len;
    }
    this.served.push({ op, sector: off / BLKIF_SECTOR, segments: segs.length, status: 0 });
    return BLKIF_RSP.OKAY;
  }

  /** Write a response on ring `i` and publish it (hostile tests call it directly). */
  respond(i: number, id: number, op: number, status: number): void {
    const r = this.#rings[i];
    const prod = r.v.u32[2];
    writeResponse(r.v, 64 + (prod % r.size) * BLKIF_ENTRY, id, op, status);
    this.#publish(r, (prod + 1) >>> 0);
  }

  #publish(r: BackRing, nw: number): void {
    const old = r.v.u32[2];
    r.v.u32[2] = nw >>> 0;
    const ev = r.v.u32[3];
    if (((nw - ev) >>> 0) < ((nw - old) >>> 0)) {
      this.events++;
      r.notify();
    }
  }

  /** Move rsp_prod of ring `i` forward by `n` with no responses. */
  jumpRsp(i: number, n: number): void {
    const r = this.#rings[i];
    r.v.u32[2] = (r.v.u32[2] + n) >>> 0;
  }

  /** Send `n` events with nothing new (an event storm). */
  storm(i: number, n: number): void {
    for (let k = 0; k < n; k++) this.#rings[i].notify();
  }

  /** Requests the frontend published on ring `i` that the model has not served. */
  pending(i = 0): number {
    const r = this.#rings[i];
    return r ? (r.v.u32[0] - r.cons) >>> 0 : 0;
  }

  /** Grow (or shrink) the disk to `sectors` and announce it as blkback does: new sectors, Connected again. */
  resize(sectors: number): void {
    const bytes = sectors * (this.o.sectorSize ?? BLKIF_SECTOR);
    const d = new Uint8Array(bytes), u = new Uint8Array(bytes);
    d.set(this.disk.subarray(0, Math.min(bytes, this.disk.length)));
    u.set(this.durable.subarray(0, Math.min(bytes, this.durable.length)));
    this.disk = d;
    this.durable = u;
    this.xs.set(`${this.back}/sectors`, String(sectors));
    this.#setState(XS.Connected);
  }

  /**
   * Flap the backend's state: write each of `states` (numbers or garbage) back to back, as a confused or hostile
   * backend might; the model's rings are dropped as on a restart, but it does not reconnect by itself.
   */
  flap(states: (number | string)[]): void {
    this.#rings = [];
    for (const s of states) this.xs.set(`${this.back}/state`, String(s));
  }

  /** A backend restart: Closing → Closed → InitWait (a fresh backend). */
  async restart(): Promise<void> {
    this.#setState(XS.Closing);
    await new Promise((r) => setTimeout(r, 10));
    this.#rings = [];
    this.#setState(XS.Closed);
    await new Promise((r) => setTimeout(r, 10));
    this.#setState(XS.InitWait);
  }
}
