/**
 * Xen blkfront (Xen public/io/blkif.h) on the disk class core: the XenBus handshake through the shared frontend
 * lifecycle (frontend.ts; blkback connects on Initialised), one or more queues, each a shared ring of 2^order
 * pages with its event channel, a pool of granted 4 KiB pages as the request buffers (one segment each), and,
 * when the backend offers feature-max-indirect-segments, a granted indirect page per request slot.
 *
 * The buffers stay granted for the disk's life and hold nothing but its data, so the backend may keep them
 * mapped (feature-persistent; the XSA-403 concern, another domain seeing unrelated data, does not arise).
 * Nothing the backend writes is trusted: each response is copied out of the ring once (XSA-155: no double fetch)
 * and checked — its id in flight, its operation the one sent, its status one blkif.h defines — and a bad one
 * breaks the ring; rsp_prod is checked against what is outstanding before any response is read.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { EventChannel, EventChannels, GrantedPages, GrantTable } from "../../hal/xen.ts";
import { XEN_PAGE } from "../../hal/xen.ts";
import type { Closeable } from "../core/device.ts";
import { DiskCore, type DiskQueue } from "../block/core.ts";
import {
  BlockOp,
  BlockPool,
  type BlockRequest,
  BlockStatus,
  type Completions,
  type DiskInfo,
  emptyDiskStats,
} from "../block/disk.ts";
import {
  BLKIF_DISCARD_SECURE,
  BLKIF_ENTRY,
  BLKIF_MAX_INDIRECT_PAGES,
  BLKIF_MAX_SEGMENTS,
  BLKIF_OP,
  BLKIF_RSP,
  BLKIF_SECTOR,
  responseId,
  responseOp,
  responseStatus,
  SEGMENTS_PER_INDIRECT_PAGE,
  writeDiscard,
  writeIndirect,
  writeIndirectSegment,
  writeRequest,
  writeSegment,
} from "./blkif.ts";
import { type BlkbackDisk, readBlkbackDisk, readBlkbackRings } from "./blkback_info.ts";
import { FrontRing, ringSize } from "./ring.ts";
import { findFrontend, type FrontendDevice, XenbusFrontend } from "./frontend.ts";
import type { XenStore } from "./xenstore.ts";

/** Options for {@link Blkfront.open}. */
export interface BlkfrontOptions {
  /** The vbd under device/vbd (its virtual-device number: 51712 is xvda). */
  vbd: number;
  /** Queues wanted (capped by the backend's multi-queue-max-queues). */
  queues?: number;
  /** Requests in flight per queue (default 32; the ring grows to hold them, up to max-ring-page-order). */
  queueDepth?: number;
  /** Segments (4 KiB pages) per request: up to 11 direct, more with indirect segments (default 32). */
  maxSegments?: number;
  /** Granted buffer pages per queue (default: enough for queueDepth requests of maxSegments, at most 256). */
  buffers?: number;
  /** Secure discards (only when the backend offers discard-secure). */
  secureDiscard?: boolean;
  /** How long to wait for the backend at each step (ms). */
  timeoutMs?: number;
  /** Resources the disk closes with itself once open succeeds (the xenstore connection, the grant device). */
  owns?: Closeable[];
}

/** One blkfront queue: its ring, event channel, granted pages and pool, and per-slot request state. */
export interface BlkfrontQueue extends DiskQueue {
  /** The shared ring (2^order pages). */
  readonly ring: FrontRing;
  /** The granted ring pages. */
  readonly ringPages: GrantedPages;
  /** The granted pages under the buffers (one per buffer: a segment's gref is its buffer's page). */
  readonly bufPages: GrantedPages;
  /** Indirect pages, some per slot, or null (direct requests only). */
  readonly indirect: GrantedPages | null;
  /** Byte view of the indirect pages. */
  readonly ind8: Uint8Array | null;
  /** Word view of the indirect pages. */
  readonly ind32: Uint32Array | null;
  /** The event channel (both directions). */
  readonly ev: EventChannel;
  /** The completion interrupt: the event channel. */
  readonly irq: EventChannel;
  /** Per slot: the operation its response must carry. */
  readonly op: Uint8Array;
  /** Per slot: a FUA write whose flush is still to come. */
  readonly fuaPending: Uint8Array;
}

/** A Xen virtual block device. */
export class Blkfront extends DiskCore<BlkfrontQueue> {
  /** Human name. */
  readonly name: string;
  /** What the disk says of itself. */
  info: DiskInfo;
  /** The backend's xenstore directory. */
  readonly backend: string;
  /** The backend's domain id. */
  readonly backendId: number;
  /** The disk as the backend describes it (read when it connects). */
  backendDisk: BlkbackDisk | null = null;
  /** blkif.h's name for the logical block size. */
  protected readonly blockSizeName = "sector-size";
  /** blkif has no get-id operation: serial() is "". */
  protected override readonly hasDeviceId = false;
  readonly #xs: XenStore;
  readonly #grants: GrantTable;
  readonly #evtchns: EventChannels;
  readonly #opts: BlkfrontOptions;
  readonly #front: XenbusFrontend;
  readonly #handle: number;
  #order = 0;
  #indirectPerSlot = 0;
  readonly #grefs = new Uint32Array(BLKIF_MAX_INDIRECT_PAGES);

  private constructor(
    xs: XenStore,
    grants: GrantTable,
    evtchns: EventChannels,
    opts: BlkfrontOptions,
    dev: FrontendDevice,
  ) {
    super();
    this.#xs = xs;
    this.#grants = grants;
    this.#evtchns = evtchns;
    this.#opts = opts;
    this.#handle = opts.vbd;
    this.backend = dev.backend;
    this.backendId = dev.backendId;
    this.name = `blkfront ${dev.dir}`;
    this.info = emptyInfo();
    this.#front = new XenbusFrontend(xs, dev, {
      prepare: () => this.#prepare(),
      publish: (put) => this.#publish(put),
      start: () => this.#start(),
      release: () => this.#release(),
      changed: () => this.#changed(),
      // A connection with more queues or a bigger ring left these; blkback would read this one's keys by them.
      staleKeys: ["multi-queue-num-queues", "ring-page-order"],
    }, { timeoutMs: opts.timeoutMs ?? 30_000, connectedFirst: false });
  }

  /** Find vbd `opts.vbd`, handshake with its backend and bring the rings up. */
  static async open(
    xs: XenStore,
    grants: GrantTable,
    evtchns: EventChannels,
    opts: BlkfrontOptions,
  ): Promise<Blkfront> {
    const depth = opts.queueDepth ?? 32, segs = opts.maxSegments ?? 32;
    if (!Number.isInteger(depth) || depth < 1 || depth > 512) throw new RangeError(`queue depth ${depth}`);
    if (!Number.isInteger(segs) || segs < 1 || segs > BLKIF_MAX_INDIRECT_PAGES * SEGMENTS_PER_INDIRECT_PAGE) {
      throw new RangeError(`max segments ${segs}`);
    }
    const dev = await findFrontend(xs, "vbd", opts.vbd);
    const bf = new Blkfront(xs, grants, evtchns, opts, dev);
    try {
      await bf.#front.connect();
    } catch (e) {
      await bf.#front.shutdown(false);
      throw e;
    }
    for (const r of opts.owns ?? []) bf.own(r);
    bf.#front.watch();
    return bf;
  }

  /** Reconnections after a backend restart. */
  get reconnects(): number {
    return this.#front.reconnects;
  }

  // ---- XenBus handshake steps ----

  /** Backend in InitWait: read its ring features, size the rings and requests, grant everything. */
  async #prepare(): Promise<void> {
    const b = await readBlkbackRings(this.#xs, this.backend);
    const o = this.#opts, depth = o.queueDepth ?? 32;
    const wantSegs = o.maxSegments ?? 32;
    const segs = b.maxIndirectSegments > BLKIF_MAX_SEGMENTS
      ? Math.min(wantSegs, b.maxIndirectSegments)
      : Math.min(wantSegs, BLKIF_MAX_SEGMENTS);
    this.#indirectPerSlot = segs > BLKIF_MAX_SEGMENTS ? Math.ceil(segs / SEGMENTS_PER_INDIRECT_PAGE) : 0;
    // The smallest ring that holds `depth` requests, as far as the backend allows.
    let order = 0;
    while (ringSize(BLKIF_ENTRY, 1 << order) < depth && order < b.maxRingPageOrder) order++;
    this.#order = order;
    const slots = Math.min(depth, ringSize(BLKIF_ENTRY, 1 << order));
    const nq = Math.max(1, Math.min(o.queues ?? 1, b.maxQueues));
    const buffers = o.buffers ?? Math.min(256, slots * segs);
    if (buffers < segs) throw new RangeError(`${buffers} buffers cannot hold one ${segs}-segment request`);
    const need = nq * ((1 << order) + buffers + slots * this.#indirectPerSlot);
    if (need > this.#grants.remaining) {
      throw new PvdrvError(
        "xen",
        `${nq} queue(s) of ${slots} requests with ${buffers} buffers need ${need} grants, only ` +
          `${this.#grants.remaining} left (gntalloc limit: raise /sys/module/xen_gntalloc/parameters/limit, ` +
          `or use fewer queues, buffers or segments)`,
      );
    }
    // The request limits now; the disk's own keys when the backend connects (#start).
    this.info = {
      ...emptyInfo(),
      maxSegments: segs,
      maxTransferBytes: segs * XEN_PAGE,
      queueDepth: slots,
    };
    for (let i = 0; i < nq; i++) this.pairs.push(this.#makeQueue(i, slots, buffers));
  }

  /** The disk's keys as the backend wrote them on connecting, turned into DiskInfo. */
  async #readDisk(): Promise<DiskInfo> {
    const d = await readBlkbackDisk(this.#xs, this.backend);
    this.backendDisk = d;
    const i = this.info;
    const granule = d.discardGranularity;
    return {
      ...i,
      capacity: d.sectors * d.sectorSize,
      logicalBlockSize: d.sectorSize,
      physicalBlockSize: d.physicalSectorSize,
      readOnly: d.readOnly,
      writeCache: d.flush || d.barrier,
      discard: d.discard,
      maxDiscardBytes: d.discard ? Math.floor((1 << 30) / granule) * granule : 0,
      discardAlignment: d.discard ? granule : d.sectorSize,
    };
  }

  /** Grant queue `i`'s ring, buffers and indirect pages and bind its event channel; nothing stays on failure. */
  #makeQueue(i: number, slots: number, buffers: number): BlkfrontQueue {
    const g = this.#grants, dom = this.backendId, pages = 1 << this.#order;
    const made: GrantedPages[] = [];
    try {
      const ringPages = g.grant(pages, dom);
      made.push(ringPages);
      const bufPages = g.grant(buffers, dom);
      made.push(bufPages);
      const indirect = this.#indirectPerSlot ? g.grant(slots * this.#indirectPerSlot, dom) : null;
      if (indirect) made.push(indirect);
      const ev = this.#evtchns.bindUnbound(dom);
      // If this process dies with the ring mapped, gntalloc kicks the backend (IOCTL_GNTALLOC_SET_UNMAP_NOTIFY).
      ringPages.notifyOnUnmap?.(ev.port);
      const pool = new BlockPool(`vbd${i}`, bufPages, buffers, XEN_PAGE);
      this.adopt(pool);
      const ib = indirect?.bytes ?? null;
      return {
        ring: new FrontRing(ringPages.bytes, BLKIF_ENTRY, `vbd ring ${i}`),
        ringPages,
        bufPages,
        indirect,
        ind8: ib,
        ind32: ib ? new Uint32Array(ib.buffer, ib.byteOffset, ib.length >> 2) : null,
        ev,
        irq: ev,
        op: new Uint8Array(slots),
        fuaPending: new Uint8Array(slots),
        pool,
        slots: this.slots(slots),
        stats: emptyDiskStats(),
      };
    } catch (e) {
      for (const p of made) p.free();
      throw e;
    }
  }

  /** The ring keys (blkif.h), written in the transaction that says Initialised. */
  async #publish(put: (k: string, v: string | number) => Promise<void>): Promise<void> {
    const nq = this.pairs.length;
    for (let i = 0; i < nq; i++) {
      const q = this.pairs[i], p = nq > 1 ? `queue-${i}/` : "";
      if (this.#order === 0) await put(`${p}ring-ref`, q.ringPages.refs[0]);
      else for (let k = 0; k < 1 << this.#order; k++) await put(`${p}ring-ref${k}`, q.ringPages.refs[k]);
      await put(`${p}event-channel`, q.ev.port);
    }
    if (this.#order > 0) await put("ring-page-order", this.#order);
    if (nq > 1) await put("multi-queue-num-queues", nq);
    // Without it, blkback on x86 assumes the packed 32-bit layout and misreads every request.
    await put("protocol", "x86_64-abi");
    await put("feature-persistent", 1);
  }

  /** Both ends Connected: read the disk's keys; poll by default. */
  async #start(): Promise<void> {
    const first = this.backendDisk === null, next = await this.#readDisk();
    if (!first && next.logicalBlockSize !== this.info.logicalBlockSize) {
      throw new PvdrvError("xen", `${this.backend} came back with sector-size ${next.logicalBlockSize}`);
    }
    this.info = next;
    for (const q of this.pairs) q.ring.quiet();
  }

  /**
   * The backend announced a change while connected (blkback does so after a resize: new `sectors`, Connected
   * written again): the capacity and cache mode are re-read; a sector-size change breaks every ring.
   */
  async #changed(): Promise<void> {
    const next = await this.#readDisk();
    if (next.logicalBlockSize !== this.info.logicalBlockSize) {
      this.breakQueues(
        `backend changed sector-size from ${this.info.logicalBlockSize} to ${next.logicalBlockSize}`,
      );
      return;
    }
    const grew = next.capacity !== this.info.capacity;
    this.info = { ...this.info, capacity: next.capacity, writeCache: next.writeCache };
    if (grew) this.resizes++;
  }

  /** Capacity changes the backend announced (see {@link Blkfront.configChanged}). */
  resizes = 0;
  #seenResizes = 0;

  /** Whether the capacity changed since the last call (a resize the backend announced); `info` has the new one. */
  configChanged(): boolean {
    const changed = this.resizes !== this.#seenResizes;
    this.#seenResizes = this.resizes;
    return changed;
  }

  /** The backend went away or the disk closes: stop the rings, close the ports, end the ring grants. */
  #release(): void {
    for (const q of this.pairs.splice(0)) {
      q.ev.close();
      q.ringPages.free();
      q.indirect?.free();
      // The pool ends its grants now, or when the application releases the last buffer it holds.
      q.pool.retire();
    }
  }

  /** Why no queue can be used now (backend reconnecting), or null. */
  protected override unavailable(): string | null {
    return this.#front.connected ? null : `${this.name}: the backend is not connected`;
  }

  // ---- ring steps (DiskCore) ----

  /** The error that broke queue `q`'s ring, or null. */
  protected fault(q: BlkfrontQueue): Error | null {
    return q.ring.broken;
  }

  /** Break every ring with `msg` (a change blkfront cannot follow); returns the error. */
  protected breakQueues(msg: string): Error {
    let e: Error | null = null;
    for (const q of this.pairs) e = q.ring.failure(msg);
    return e ?? new PvdrvError("ring", `${this.name}: ${msg}`);
  }

  /** Whether the ring has an entry for a request (every request is one entry: direct, indirect or discard). */
  protected fits(q: BlkfrontQueue, _r: BlockRequest): boolean {
    return q.ring.free > 0;
  }

  /** Write slot `slot`'s request (blkif.h: direct, indirect or discard) into the next ring entry. */
  protected post(q: BlkfrontQueue, slot: number, r: BlockRequest): void {
    const ring = q.ring, e = ring.entry(ring.reqProdPvt++);
    const sector = r.offset / BLKIF_SECTOR;
    q.fuaPending[slot] = 0;
    switch (r.op) {
      case BlockOp.Read:
      case BlockOp.Write: {
        const op = r.op === BlockOp.Read ? BLKIF_OP.READ : BLKIF_OP.WRITE;
        q.op[slot] = op;
        q.fuaPending[slot] = r.op === BlockOp.Write && r.fua && this.info.writeCache ? 1 : 0;
        if (r.count <= BLKIF_MAX_SEGMENTS) {
          writeRequest(ring, e, op, r.count, this.#handle, slot, sector);
          for (let k = 0; k < r.count; k++) {
            const b = r.buffers[k];
            writeSegment(ring, e, k, q.bufPages.refs[b.index], 0, b.length / BLKIF_SECTOR - 1);
          }
          return;
        }
        // Indirect (blkif.h BLKIF_OP_INDIRECT): the segments go into the slot's own granted pages.
        const per = this.#indirectPerSlot, first = slot * per;
        const i8 = q.ind8!, i32 = q.ind32!;
        for (let k = 0; k < r.count; k++) {
          // Record k is the (k mod 512)th of indirect page k / 512: 8 bytes each, so simply byte 8k onwards.
          const b = r.buffers[k], at = first * XEN_PAGE + k * 8;
          writeIndirectSegment(i32, i8, at, q.bufPages.refs[b.index], 0, b.length / BLKIF_SECTOR - 1);
        }
        const pages = Math.ceil(r.count / SEGMENTS_PER_INDIRECT_PAGE);
        for (let k = 0; k < pages; k++) this.#grefs[k] = q.indirect!.refs[first + k];
        writeIndirect(ring, e, op, r.count, this.#handle, slot, sector, this.#grefs, pages);
        return;
      }
      case BlockOp.Flush:
        this.#writeFlush(q, slot, e);
        return;
      case BlockOp.Discard: {
        q.op[slot] = BLKIF_OP.DISCARD;
        const secure = this.#opts.secureDiscard && this.backendDisk?.discardSecure ? BLKIF_DISCARD_SECURE : 0;
        writeDiscard(ring, e, this.#handle, slot, sector, r.length / BLKIF_SECTOR, secure);
        return;
      }
      default:
        // DiskCore refuses write-zeroes (info.writeZeroes is false) and get-id (hasDeviceId is false).
        throw new PvdrvError("disk", `${this.name}: blkif has no operation for block op ${r.op}`);
    }
  }

  /** A flush: FLUSH_DISKCACHE when the backend offers it, else a WRITE_BARRIER, with no segments. */
  #writeFlush(q: BlkfrontQueue, slot: number, e: number): void {
    const op = this.backendDisk?.flush ? BLKIF_OP.FLUSH_DISKCACHE : BLKIF_OP.WRITE_BARRIER;
    q.op[slot] = op;
    writeRequest(q.ring, e, op, 0, this.#handle, slot, 0);
  }

  /** Publish the requests and signal the backend if it asked (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY). */
  protected kick(q: BlkfrontQueue): void {
    if (q.ring.push()) {
      q.ev.notify();
      q.stats.notifications++;
    }
  }

  /** Consume responses: each copied out once, then checked (id in flight, operation, status). */
  protected collect(q: BlkfrontQueue, done: Completions, k: number, max: number): number {
    const ring = q.ring, depth = q.op.length;
    let n = ring.available(), flushes = 0;
    while (n-- > 0 && k < max) {
      const e = ring.entry(ring.rspCons);
      // XSA-155: read each field once; only these copies are checked and used.
      const id = responseId(ring, e), op = responseOp(ring, e), st = responseStatus(ring, e);
      ring.rspCons = (ring.rspCons + 1) >>> 0;
      if (!Number.isInteger(id) || id >= depth) throw ring.failure(`backend answered request id ${id}`);
      if (op !== q.op[id]) {
        throw ring.failure(`backend answered request ${id} as operation ${op}, sent ${q.op[id]}`);
      }
      if (st !== BLKIF_RSP.OKAY && st !== BLKIF_RSP.ERROR && st !== BLKIF_RSP.EOPNOTSUPP) {
        throw ring.failure(`backend wrote status ${st} for request ${id} (valid: 0, -1, -2)`);
      }
      if (q.fuaPending[id] && st === BLKIF_RSP.OKAY) {
        // The write is done: now its flush, on the same slot and ring entry count, so FUA completes once durable.
        if (q.slots.ids.valueOf(id) < 0) {
          throw ring.failure(`backend answered request ${id}, which is not in flight`);
        }
        q.fuaPending[id] = 0;
        this.#writeFlush(q, id, ring.entry(ring.reqProdPvt++));
        flushes++;
        continue;
      }
      const status = st === BLKIF_RSP.OKAY
        ? BlockStatus.Ok
        : st === BLKIF_RSP.ERROR
        ? BlockStatus.IoError
        : BlockStatus.Unsupported;
      if (!this.finish(q, id, status, done, k)) {
        throw ring.failure(`backend answered request ${id}, which is not in flight`);
      }
      k++;
    }
    if (flushes) this.kick(q);
    return k;
  }

  /** Ask for an event at the next response; true when responses already wait. */
  protected armIrq(q: BlkfrontQueue): boolean {
    return q.ring.finalCheck();
  }

  /** Back to polling. */
  protected disarmIrq(q: BlkfrontQueue): void {
    q.ring.quiet();
  }

  /** The disk's info as last read from the backend's keys (on connecting). */
  protected readInfo(): DiskInfo {
    return this.info;
  }

  /** Disconnect (Closing → Closed), end every grant, close the ports and what the disk owns. */
  protected async teardown(): Promise<void> {
    await this.#front.shutdown(true);
  }
}

/** Info before the backend is read (never used for requests: no queue exists yet). */
function emptyInfo(): DiskInfo {
  return {
    capacity: 0,
    logicalBlockSize: BLKIF_SECTOR,
    physicalBlockSize: BLKIF_SECTOR,
    readOnly: true,
    writeCache: false,
    discard: false,
    writeZeroes: false,
    maxSegments: 1,
    maxSegmentBytes: XEN_PAGE,
    maxTransferBytes: XEN_PAGE,
    maxDiscardBytes: 0,
    discardAlignment: BLKIF_SECTOR,
    maxWriteZeroesBytes: 0,
    queueDepth: 1,
  };
}
