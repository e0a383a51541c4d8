/**
 * An in-process xenstored: the xs_wire server side over a pair of in-memory streams, with a node tree,
 * transactions (a conflicting commit gets EAGAIN), watches (fired once on registration, then on every change at
 * or below the path), and ways to misbehave for tests.
 */
import { XS } from "../../drivers/xen/xenstore.ts";
import type { XsTransport } from "../../hal/xen.ts";

const enc = new TextEncoder(), dec = new TextDecoder();

interface Tx {
  tree: Map<string, string>;
  gen: number;
}

/** The model server. */
export class XenStoreServer {
  readonly tree = new Map<string, string>([["/", ""]]);
  #gen = 0;
  #txs = new Map<number, Tx>();
  #nextTx = 1;
  #watches: { path: string; token: string; conn: Conn }[] = [];
  /** Make the next N commits fail with EAGAIN regardless of conflicts. */
  forceConflicts = 0;
  /** Every request seen (type, path). */
  readonly log: { type: number; path: string; tx: number }[] = [];
  /** Hooks run after a write (path, value): lets a model backend react. */
  onWrite: ((path: string, value: string) => void) | null = null;

  /** A new client connection for domain `domid` (relative paths resolve under /local/domain/<domid>). */
  connect(domid = 0): { transport: XsTransport; conn: Conn } {
    const conn = new Conn(this, domid);
    return { transport: conn.clientSide, conn };
  }

  /** Server-side write (as the toolstack or a backend would), firing watches. */
  set(path: string, value: string): void {
    this.#ensureParents(this.tree, path);
    this.tree.set(path, value);
    this.#gen++;
    this.#fire(path);
  }

  /** Server-side read. */
  get(path: string): string | undefined {
    return this.tree.get(path);
  }

  /** Server-side removal. */
  remove(path: string): void {
    for (const k of [...this.tree.keys()]) if (k === path || k.startsWith(path + "/")) this.tree.delete(k);
    this.#gen++;
    this.#fire(path);
  }

  #ensureParents(tree: Map<string, string>, path: string): void {
    const parts = path.split("/").filter(Boolean);
    for (let i = 1; i < parts.length; i++) {
      const p = "/" + parts.slice(0, i).join("/");
      if (!tree.has(p)) tree.set(p, "");
    }
  }

  #fire(path: string): void {
    for (const w of this.#watches) {
      if (path === w.path || path.startsWith(w.path + "/") || w.path.startsWith(path + "/")) {
        w.conn.event(path, w.token);
      }
    }
  }

  /** Handle one request from `conn`. */
  handle(conn: Conn, type: number, req: number, tx: number, payload: Uint8Array): void {
    const parts = dec.decode(payload).split("\0");
    const abs = (p: string) => p.startsWith("/") ? p : `/local/domain/${conn.domid}/${p}`;
    if (type !== XS.TRANSACTION_START && type !== XS.TRANSACTION_END && type !== XS.GET_DOMAIN_PATH) {
      parts[0] = abs(parts[0]);
    }
    this.log.push({ type, path: parts[0], tx });
    const t = tx ? this.#txs.get(tx) : undefined;
    if (tx && !t) return conn.reply(XS.ERROR, req, tx, "ENOENT\0");
    const tree = t ? t.tree : this.tree;
    const ok = () => conn.reply(type, req, tx, "OK\0");
    switch (type) {
      case XS.READ: {
        const v = tree.get(parts[0]);
        return v === undefined ? conn.reply(XS.ERROR, req, tx, "ENOENT\0") : conn.reply(type, req, tx, v);
      }
      case XS.WRITE: {
        const nulAt = payload.indexOf(0);
        const path = abs(dec.decode(payload.subarray(0, nulAt))),
          value = dec.decode(payload.subarray(nulAt + 1));
        this.#ensureParents(tree, path);
        tree.set(path, value);
        if (!t) {
          this.#gen++;
          this.#fire(path);
          this.onWrite?.(path, value);
        }
        return ok();
      }
      case XS.MKDIR:
        this.#ensureParents(tree, parts[0]);
        if (!tree.has(parts[0])) tree.set(parts[0], "");
        return ok();
      case XS.RM:
        for (const k of [...tree.keys()]) if (k === parts[0] || k.startsWith(parts[0] + "/")) tree.delete(k);
        if (!t) {
          this.#gen++;
          this.#fire(parts[0]);
        }
        return ok();
      case XS.DIRECTORY: {
        if (!tree.has(parts[0])) return conn.reply(XS.ERROR, req, tx, "ENOENT\0");
        const base = parts[0] === "/" ? "/" : parts[0] + "/";
        const kids = [...tree.keys()].filter((k) =>
          k.startsWith(base) && k !== base && !k.slice(base.length).includes("/")
        )
          .map((k) => k.slice(base.length)).sort();
        return conn.reply(type, req, tx, kids.map((k) => k + "\0").join(""));
      }
      case XS.WATCH:
        this.#watches.push({ path: parts[0], token: parts[1], conn });
        ok();
        return conn.event(parts[0], parts[1]);
      case XS.UNWATCH:
        this.#watches = this.#watches.filter((w) =>
          !(w.conn === conn && w.path === parts[0] && w.token === parts[1])
        );
        return ok();
      case XS.TRANSACTION_START: {
        const id = this.#nextTx++;
        this.#txs.set(id, { tree: new Map(this.tree), gen: this.#gen });
        return conn.reply(type, req, 0, `${id}\0`);
      }
      case XS.TRANSACTION_END: {
        if (!t) return conn.reply(XS.ERROR, req, tx, "ENOENT\0");
        this.#txs.delete(tx);
        if (parts[0] !== "T") return ok();
        if (this.forceConflicts > 0 || t.gen !== this.#gen) {
          if (this.forceConflicts > 0) this.forceConflicts--;
          return conn.reply(XS.ERROR, req, tx, "EAGAIN\0");
        }
        const changed = [...t.tree.keys()].filter((k) => this.tree.get(k) !== t.tree.get(k));
        const removed = [...this.tree.keys()].filter((k) => !t.tree.has(k));
        this.tree.clear();
        for (const [k, v] of t.tree) this.tree.set(k, v);
        this.#gen++;
        for (const p of [...changed, ...removed]) {
          this.#fire(p);
          if (t.tree.has(p)) this.onWrite?.(p, t.tree.get(p)!);
        }
        return ok();
      }
      case XS.GET_DOMAIN_PATH:
        return conn.reply(type, req, tx, `/local/domain/${parts[0]}\0`);
    }
    conn.reply(XS.ERROR, req, tx, "EINVAL\0");
  }
}

/** One client connection: the client's transport and the server's reply path. */
export class Conn {
  #toClient: Uint8Array[] = [];
  #wake: (() => void) | null = null;
  #closed = false;
  #inbuf = new Uint8Array(0);
  /** Drop every reply (a server that stopped answering). */
  mute = false;
  readonly clientSide: XsTransport;

  constructor(readonly server: XenStoreServer, readonly domid = 0) {
    this.clientSide = {
      write: (msg: Uint8Array) => {
        if (this.#closed) throw new Error("closed");
        this.#receive(msg);
      },
      read: (): Promise<Uint8Array | null> => this.#read(),
      close: () => {
        this.#closed = true;
        this.#wake?.();
      },
    };
  }

  async #read(): Promise<Uint8Array | null> {
    while (!this.#toClient.length && !this.#closed) await new Promise<void>((r) => this.#wake = r);
    if (this.#closed) return null;
    return this.#toClient.shift()!;
  }

  #receive(msg: Uint8Array): void {
    const merged = new Uint8Array(this.#inbuf.length + msg.length);
    merged.set(this.#inbuf);
    merged.set(msg, this.#inbuf.length);
    this.#inbuf = merged;
    while (this.#inbuf.length >= 16) {
      const dv = new DataView(this.#inbuf.buffer, this.#inbuf.byteOffset, 16);
      const len = dv.getUint32(12, true);
      if (this.#inbuf.length < 16 + len) break;
      const payload = this.#inbuf.slice(16, 16 + len);
      const [type, req, tx] = [dv.getUint32(0, true), dv.getUint32(4, true), dv.getUint32(8, true)];
      this.#inbuf = this.#inbuf.slice(16 + len);
      queueMicrotask(() => this.server.handle(this, type, req, tx, payload));
    }
  }

  /** Send raw bytes to the client (tests: malformed replies). */
  raw(bytes: Uint8Array): void {
    this.#toClient.push(bytes);
    this.#wake?.();
  }

  /** Send a message to the client. */
  reply(type: number, req: number, tx: number, payload: string | Uint8Array): void {
    if (this.mute) return;
    const p = typeof payload === "string" ? enc.encode(payload) : payload;
    const m = new Uint8Array(16 + p.length);
    const dv = new DataView(m.buffer);
    dv.setUint32(0, type, true);
    dv.setUint32(4, req, true);
    dv.setUint32(8, tx, true);
    dv.setUint32(12, p.length, true);
    m.set(p, 16);
    // Split in two chunks now and then: framing must not depend on read boundaries.
    if (p.length > 4) {
      this.raw(m.subarray(0, 10));
      this.raw(m.subarray(10));
    } else this.raw(m);
  }

  /** Deliver a watch event. */
  event(path: string, token: string): void {
    this.reply(XS.WATCH_EVENT, 0, 0, `${path}\0${token}\0`);
  }
}
