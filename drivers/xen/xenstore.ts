/**
 * A xenstore client speaking xs_wire (Xen public/io/xs_wire.h): 16-byte header {type, req_id, tx_id, len} then up
 * to 4096 bytes of payload. Requests are matched to replies by req_id; watch events arrive as async iterators.
 * Every reply is validated (type, length, NUL termination, known request id) — a malformed one fails the
 * connection with a clear error rather than being half-used.
 * @module
 */
import type { XsTransport } from "../../hal/xen.ts";
import { PvdrvError } from "../../hal/errors.ts";

/** xs_wire message types (xs_wire.h `enum xsd_sockmsg_type`). */
export const XS = {
  DIRECTORY: 1,
  READ: 2,
  WATCH: 4,
  UNWATCH: 5,
  TRANSACTION_START: 6,
  TRANSACTION_END: 7,
  GET_DOMAIN_PATH: 10,
  WRITE: 11,
  MKDIR: 12,
  RM: 13,
  WATCH_EVENT: 15,
  ERROR: 16,
} as const;

/** Largest payload (XENSTORE_PAYLOAD_MAX). */
export const PAYLOAD_MAX = 4096;
/** Longest absolute path (XENSTORE_ABS_PATH_MAX). */
export const PATH_MAX = 3072;
const HEADER = 16;

/** An error reply (`XS_ERROR`) or a protocol failure. */
export class XenStoreError extends PvdrvError {
  /** Creates the error; `code` is the errno name xenstored sent (ENOENT, EAGAIN...), or "EPROTO". */
  constructor(code: string, msg: string) {
    super("xenstore", msg, { code });
  }
}

interface Pending {
  type: number;
  resolve: (payload: Uint8Array) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Options for {@link XenStore}. */
export interface XenStoreOptions {
  /** How long one request may wait for its reply before it fails with ETIMEDOUT (ms, default 10 000). */
  requestTimeoutMs?: number;
  /** Distinct changed paths one watch keeps queued for a reader that is not reading (default 256). */
  maxQueuedEvents?: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
const TRACE = (() => {
  try {
    return Deno.env.get("PVDRV_XS_TRACE") === "1";
  } catch {
    return false;
  }
})();
const trace = (dir: string, type: number, req: number, payload: Uint8Array) => {
  if (TRACE) {
    console.error(
      `xs ${dir} type ${type} req ${req} ${
        new TextDecoder().decode(payload).replaceAll("\0", "|").slice(0, 80)
      }`,
    );
  }
};

function checkPath(path: string): void {
  if (!path || path.length > PATH_MAX || /[\0]/.test(path) || !/^[A-Za-z0-9/_@\-.]+$/.test(path)) {
    throw new XenStoreError("EINVAL", `invalid xenstore path '${path}'`);
  }
}

/** A connection to xenstore. */
export class XenStore {
  readonly #t: XsTransport;
  readonly #pending = new Map<number, Pending>();
  readonly #watches = new Map<string, { push: (path: string) => void; fail: (e: Error) => void }>();
  #nextReq = 1;
  #nextToken = 1;
  #failed: Error | null = null;
  readonly #reader: Promise<void>;
  readonly #timeoutMs: number;
  readonly #maxQueued: number;
  /** Requests that timed out: a late reply to one is dropped, not taken for a protocol error. */
  readonly #late = new Set<number>();
  /** Watch events dropped because a watch's queue was full (repeats of a queued path are merged, not counted). */
  droppedEvents = 0;
  #unanswered = false;

  /** True when a request went unanswered past its deadline and nothing has arrived since (xenstored may be gone). */
  get unresponsive(): boolean {
    return this.#unanswered || this.#failed !== null;
  }

  /** Starts reading replies from `transport`. */
  constructor(transport: XsTransport, opts: XenStoreOptions = {}) {
    this.#t = transport;
    this.#timeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.#maxQueued = opts.maxQueuedEvents ?? 256;
    this.#reader = this.#readLoop();
  }

  async #readLoop(): Promise<void> {
    let buf = new Uint8Array(0);
    try {
      while (true) {
        const chunk = await this.#t.read();
        if (!chunk) break;
        const merged = new Uint8Array(buf.length + chunk.length);
        merged.set(buf);
        merged.set(chunk, buf.length);
        buf = merged;
        while (buf.length >= HEADER) {
          const dv = new DataView(buf.buffer, buf.byteOffset, HEADER);
          const type = dv.getUint32(0, true), req = dv.getUint32(4, true), len = dv.getUint32(12, true);
          if (len > PAYLOAD_MAX) {
            throw new XenStoreError("EPROTO", `xenstore sent a ${len}-byte payload (max ${PAYLOAD_MAX})`);
          }
          if (buf.length < HEADER + len) break;
          const payload = buf.slice(HEADER, HEADER + len);
          buf = buf.slice(HEADER + len);
          this.#dispatch(type, req, payload);
        }
      }
      this.#fail(new XenStoreError("EPIPE", "xenstore connection closed"));
    } catch (e) {
      this.#fail(e instanceof Error ? e : new XenStoreError("EIO", String(e)));
    }
  }

  #dispatch(type: number, req: number, payload: Uint8Array): void {
    trace("<", type, req, payload);
    this.#unanswered = false;
    if (type === XS.WATCH_EVENT) {
      const parts = splitNul(payload);
      if (parts.length !== 2) throw new XenStoreError("EPROTO", "malformed watch event");
      this.#watches.get(parts[1])?.push(parts[0]); // events for a token already unwatched are dropped
      return;
    }
    const p = this.#pending.get(req);
    if (!p) {
      if (this.#late.delete(req)) return; // the request already failed with ETIMEDOUT
      throw new XenStoreError("EPROTO", `xenstore replied to unknown request ${req}`);
    }
    this.#pending.delete(req);
    clearTimeout(p.timer);
    if (type === XS.ERROR) {
      const code = cstring(payload);
      p.reject(new XenStoreError(code, `xenstore: ${code}`));
    } else if (type !== p.type) {
      const e = new XenStoreError("EPROTO", `xenstore answered request type ${p.type} with type ${type}`);
      p.reject(e); // no longer pending: fail it here, then the connection
      throw e;
    } else p.resolve(payload);
  }

  #fail(e: Error): void {
    if (this.#failed) return;
    this.#failed = e;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.#pending.clear();
    for (const w of this.#watches.values()) w.fail(e);
  }

  #request(type: number, payload: Uint8Array, tx = 0, timeoutMs = this.#timeoutMs): Promise<Uint8Array> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (payload.length > PAYLOAD_MAX) {
      return Promise.reject(new XenStoreError("E2BIG", "xenstore request too long"));
    }
    const req = this.#nextReq++ >>> 0 || this.#nextReq++;
    const msg = new Uint8Array(HEADER + payload.length);
    const dv = new DataView(msg.buffer);
    dv.setUint32(0, type, true);
    dv.setUint32(4, req, true);
    dv.setUint32(8, tx, true);
    dv.setUint32(12, payload.length, true);
    msg.set(payload, HEADER);
    trace(">", type, req, payload);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.#pending.delete(req)) return;
        if (this.#late.size < 1024) this.#late.add(req);
        this.#unanswered = true;
        reject(
          new XenStoreError(
            "ETIMEDOUT",
            `xenstore did not answer request ${req} (type ${type}) within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      this.#pending.set(req, { type, resolve, reject, timer });
      try {
        this.#t.write(msg);
      } catch (e) {
        clearTimeout(timer);
        this.#pending.delete(req);
        reject(e);
      }
    });
  }

  /** Read a value; `timeoutMs` shortens this request's deadline (its expiry marks xenstore unresponsive). */
  async read(path: string, tx = 0, timeoutMs?: number): Promise<string> {
    checkPath(path);
    const v = await this.#request(XS.READ, nul(path), tx, timeoutMs);
    try {
      return dec.decode(v);
    } catch {
      throw new XenStoreError("EPROTO", `value of ${path} is not UTF-8`);
    }
  }

  /** Read a value, or null when the node does not exist. */
  async tryRead(path: string, tx = 0, timeoutMs?: number): Promise<string | null> {
    try {
      return await this.read(path, tx, timeoutMs);
    } catch (e) {
      if (e instanceof XenStoreError && e.code === "ENOENT") return null;
      throw e;
    }
  }

  /** Write a value (creating the node). */
  async write(path: string, value: string, tx = 0): Promise<void> {
    checkPath(path);
    const p = nul(path), v = enc.encode(value);
    const payload = new Uint8Array(p.length + v.length);
    payload.set(p);
    payload.set(v, p.length);
    expectOk(await this.#request(XS.WRITE, payload, tx));
  }

  /** Child names of a node. */
  async directory(path: string, tx = 0): Promise<string[]> {
    checkPath(path);
    const r = await this.#request(XS.DIRECTORY, nul(path), tx);
    if (r.length && r[r.length - 1] !== 0) {
      throw new XenStoreError("EPROTO", "directory reply not NUL-terminated");
    }
    return splitNul(r);
  }

  /** Create a node. */
  async mkdir(path: string, tx = 0): Promise<void> {
    checkPath(path);
    expectOk(await this.#request(XS.MKDIR, nul(path), tx));
  }

  /** Remove a node and its children. */
  async rm(path: string, tx = 0): Promise<void> {
    checkPath(path);
    expectOk(await this.#request(XS.RM, nul(path), tx));
  }

  /** This domain's home path (e.g. /local/domain/3). */
  async domainPath(domid: number): Promise<string> {
    return cstring(await this.#request(XS.GET_DOMAIN_PATH, nul(String(domid))));
  }

  /**
   * Run `fn` in a transaction, retrying (up to `attempts` times) when xenstore reports a conflict (EAGAIN) on
   * commit. `fn` gets the transaction id to pass to reads and writes.
   */
  async transaction<T>(fn: (tx: number) => Promise<T>, attempts = 16): Promise<T> {
    for (let i = 0;; i++) {
      const idText = cstring(await this.#request(XS.TRANSACTION_START, new Uint8Array([0])));
      const tx = Number(idText);
      if (!/^\d+$/.test(idText) || !tx || tx > 0xffffffff) {
        throw new XenStoreError("EPROTO", `bad transaction id '${idText}'`);
      }
      let result: T;
      try {
        result = await fn(tx);
      } catch (e) {
        await this.#request(XS.TRANSACTION_END, nul("F"), tx).catch(() => {});
        throw e;
      }
      try {
        expectOk(await this.#request(XS.TRANSACTION_END, nul("T"), tx));
        return result;
      } catch (e) {
        if (!(e instanceof XenStoreError && e.code === "EAGAIN") || i + 1 >= attempts) throw e;
      }
    }
  }

  /**
   * Watch `path` (and its children): yields the path that changed, starting with one event for the watch itself
   * (xenstored fires each new watch once). `return()` (or breaking out of a for-await) removes the watch at once,
   * even while a `next()` is waiting.
   */
  watch(path: string): AsyncIterableIterator<string> {
    checkPath(path);
    const token = `pvdrv-${this.#nextToken++}`;
    // Changed paths waiting for the reader: a repeat of a queued path is merged (a watch event only says "look
    // again"), and past maxQueuedEvents distinct paths new ones are dropped and counted.
    const queue: string[] = [];
    const queued = new Set<string>();
    const max = this.#maxQueued;
    const waiting: { resolve: (r: IteratorResult<string>) => void; reject: (e: Error) => void }[] = [];
    let done = false, err: Error | null = null;
    const finish = () => {
      if (done) return;
      done = true;
      this.#watches.delete(token);
      for (const w of waiting.splice(0)) w.resolve({ value: undefined, done: true });
    };
    this.#watches.set(token, {
      push: (p) => {
        const w = waiting.shift();
        if (w) w.resolve({ value: p, done: false });
        else if (queued.has(p)) return;
        else if (queue.length >= max) this.droppedEvents++;
        else {
          queue.push(p);
          queued.add(p);
        }
      },
      fail: (e) => {
        err = e;
        for (const w of waiting.splice(0)) w.reject(e);
      },
    });
    const registered = this.#request(XS.WATCH, concatNul(path, token)).then(expectOk);
    registered.catch(() => {});
    const it: AsyncIterableIterator<string> = {
      next: async () => {
        await registered;
        if (done) return { value: undefined, done: true };
        if (queue.length) {
          const p = queue.shift()!;
          queued.delete(p);
          return { value: p, done: false };
        }
        if (err) throw err;
        return await new Promise<IteratorResult<string>>((resolve, reject) =>
          waiting.push({ resolve, reject })
        );
      },
      return: async () => {
        const wasDone = done;
        finish();
        if (!wasDone && !this.#failed) {
          await this.#request(XS.UNWATCH, concatNul(path, token)).catch(() => {});
        }
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  /** Wait until `path` satisfies `pred` (checked at each watch event); returns its value. */
  async waitFor(
    path: string,
    pred: (v: string | null) => boolean,
    timeoutMs = 30_000,
  ): Promise<string | null> {
    const it = this.watch(path);
    let timer: ReturnType<typeof setTimeout> | undefined, timedOut = false;
    const timeout = new Promise<never>((_, rej) =>
      timer = setTimeout(() => {
        timedOut = true;
        rej(new XenStoreError("ETIMEDOUT", `timed out waiting for ${path}`));
      }, timeoutMs)
    );
    try {
      while (true) {
        const ev = await Promise.race([it.next(), timeout]);
        if (ev.done) throw new XenStoreError("EPIPE", "watch ended");
        const v = await Promise.race([this.tryRead(path), timeout]);
        if (pred(v)) return v;
      }
    } finally {
      clearTimeout(timer);
      // Removing the watch is bounded by the request deadline; its failure does not hide the result. After a
      // timeout nobody waits for it: a silent xenstore would add a whole request deadline to the caller's bound.
      const unwatched = it.return!().catch(() => {});
      if (!timedOut) await unwatched;
    }
  }

  /** Close the connection; pending requests and watches fail. */
  async close(): Promise<void> {
    this.#fail(new XenStoreError("EPIPE", "xenstore connection closed"));
    this.#t.close();
    await this.#reader;
  }
}

function nul(s: string): Uint8Array {
  const b = enc.encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

function concatNul(a: string, b: string): Uint8Array {
  const x = nul(a), y = nul(b);
  const out = new Uint8Array(x.length + y.length);
  out.set(x);
  out.set(y, x.length);
  return out;
}

/** The bytes as UTF-8, or a protocol error: every reply is text, and read() already refuses anything else. */
function utf8(b: Uint8Array): string {
  try {
    return dec.decode(b);
  } catch {
    throw new XenStoreError("EPROTO", "xenstore reply is not UTF-8");
  }
}

function cstring(b: Uint8Array): string {
  const end = b.indexOf(0);
  return utf8(end < 0 ? b : b.subarray(0, end));
}

function splitNul(b: Uint8Array): string[] {
  if (!b.length) return [];
  return utf8(b[b.length - 1] === 0 ? b.subarray(0, -1) : b).split("\0");
}

function expectOk(r: Uint8Array): void {
  if (cstring(r) !== "OK") throw new XenStoreError("EPROTO", `expected OK, got '${cstring(r)}'`);
}
