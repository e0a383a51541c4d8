/**
 * The front end of a Xen shared ring (Xen public/io/ring.h): a 64-byte header {req_prod, req_event, rsp_prod,
 * rsp_event} and a power-of-two array of request/response unions filling the rest of its pages (one 4 KiB page,
 * or 2^order for blkif's multi-page rings). Indices are
 * free-running u32. The backend's rsp_prod is checked before any response is read.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import { XEN_PAGE } from "../../hal/xen.ts";

/** A protocol violation by the backend: the ring is unusable. */
export class RingError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("ring", msg);
  }
}

/** Entries of a ring of `pages` pages whose union is `entryBytes` long (`__CONST_RING_SIZE`). */
export function ringSize(entryBytes: number, pages = 1): number {
  let n = 1;
  while (n * 2 * entryBytes <= pages * XEN_PAGE - 64) n *= 2;
  return n;
}

/**
 * The typed views of a ring's pages that the wire modules (netif.ts, blkif.ts) read and write: a
 * {@link FrontRing} is one; a backend (the models) makes its own with {@link ringViews}.
 */
export interface RingViews {
  /** The pages, bytes. */
  readonly page: Uint8Array;
  /** u16 view. */
  readonly u16: Uint16Array;
  /** u32 view. */
  readonly u32: Uint32Array;
  /** i16 view (statuses). */
  readonly i16: Int16Array;
}

/** Views of `page` (a ring's pages, already mapped) without touching its contents. */
export function ringViews(page: Uint8Array): RingViews {
  const { buffer, byteOffset, length } = page;
  return {
    page,
    u16: new Uint16Array(buffer, byteOffset, length >> 1),
    u32: new Uint32Array(buffer, byteOffset, length >> 2),
    i16: new Int16Array(buffer, byteOffset, length >> 1),
  };
}

/** The frontend's view of one shared ring (one page, or 2^order contiguous pages: blkif's ring-page-order). */
export class FrontRing implements RingViews {
  /** Number of entries. */
  readonly size: number;
  /** Header words: [0] req_prod, [1] req_event, [2] rsp_prod, [3] rsp_event. */
  readonly hdr: Uint32Array;
  /** The whole page. */
  readonly page: Uint8Array<ArrayBuffer>;
  /** u16 view of the page (entry fields). */
  readonly u16: Uint16Array;
  /** u32 view of the page. */
  readonly u32: Uint32Array;
  /** i16 view of the page (statuses). */
  readonly i16: Int16Array;
  /** Requests produced but maybe not pushed. */
  reqProdPvt = 0;
  /** Responses consumed. */
  rspCons = 0;
  /** req_prod as we last published it (private: the shared copy is not trusted). */
  #pushed = 0;
  #broken: RingError | null = null;

  /** SHARED_RING_INIT + FRONT_RING_INIT on `page` (whole pages). */
  constructor(page: Uint8Array<ArrayBuffer>, readonly entryBytes: number, readonly name: string) {
    if (page.length === 0 || page.length % XEN_PAGE !== 0) {
      throw new RangeError(`${name}: a ring is whole pages, not ${page.length} bytes`);
    }
    this.size = ringSize(entryBytes, page.length / XEN_PAGE);
    this.page = page;
    this.hdr = new Uint32Array(page.buffer, page.byteOffset, 4);
    this.u16 = new Uint16Array(page.buffer, page.byteOffset, page.length / 2);
    this.u32 = new Uint32Array(page.buffer, page.byteOffset, page.length / 4);
    this.i16 = new Int16Array(page.buffer, page.byteOffset, page.length / 2);
    page.fill(0);
    this.hdr[1] = 1; // req_event
    this.hdr[3] = 1; // rsp_event
  }

  /** Byte offset of the entry for free-running index `i`. */
  entry(i: number): number {
    return 64 + (i & (this.size - 1)) * this.entryBytes;
  }

  /** Requests that can still be produced. */
  get free(): number {
    return this.size - ((this.reqProdPvt - this.rspCons) >>> 0);
  }

  /** The error that broke the ring. */
  get broken(): RingError | null {
    return this.#broken;
  }

  /** RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publish, and say whether the backend wants an event. */
  push(): boolean {
    if (this.#broken) throw this.#broken;
    const old = this.#pushed, nw = this.reqProdPvt >>> 0;
    if (old === nw) return false;
    // Responses can only answer published requests: an rsp_prod already past them is caught now, before the new
    // requests would make it look valid (and our own requests be read back as responses).
    this.#check(old);
    this.#pushed = nw;
    Atomics.store(this.hdr, 0, nw); // full fence: the entries are visible first, req_event is read after
    const ev = Atomics.load(this.hdr, 1);
    return ((nw - ev) >>> 0) < ((nw - old) >>> 0);
  }

  /** Responses ready, validated against what is outstanding. */
  available(): number {
    if (this.#broken) throw this.#broken;
    return this.#check(this.#pushed);
  }

  #check(published: number): number {
    const rp = Atomics.load(this.hdr, 2);
    const n = (rp - this.rspCons) >>> 0;
    const outstanding = (published - this.rspCons) >>> 0;
    if (n > outstanding) {
      throw this.failure(
        `backend moved rsp_prod to ${rp} with ${outstanding} requests outstanding (consumed ${this.rspCons})`,
      );
    }
    return n;
  }

  /** Mark the ring broken with `msg`; returns the error to throw. */
  failure(msg: string): RingError {
    this.#broken ??= new RingError(`${this.name}: ${msg}`);
    return this.#broken;
  }

  /** RING_FINAL_CHECK_FOR_RESPONSES: ask for an event at the next response; true when some already arrived. */
  finalCheck(): boolean {
    Atomics.store(this.hdr, 3, (this.rspCons + 1) >>> 0);
    return this.available() > 0;
  }

  /** Stop asking for events (polling): rsp_event far behind, so the backend seldom crosses it. */
  quiet(): void {
    this.hdr[3] = (this.rspCons + 0x7fffffff) >>> 0;
  }
}
