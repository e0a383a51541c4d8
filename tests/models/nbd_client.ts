/**
 * An NBD client for tests, written from the protocol (NetworkBlockDevice/nbd doc/proto.md) with the shared wire
 * module: fixed newstyle options, then pipelined requests whose simple replies are matched by handle. It sends
 * whatever it is told to, malformed included.
 */
import {
  dv,
  GREETING_BYTES,
  NBD_FLAG_C,
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  OPTION_REPLY_HDR,
  REPLY_BYTES,
  REQUEST_BYTES,
  writeRequest,
} from "../../apps/nbd/wire.ts";

/** One option reply. */
export interface OptionReply {
  option: number;
  type: number;
  data: Uint8Array;
}

/** A simple reply. */
export interface Reply {
  error: number;
  handle: number;
  data: Uint8Array | null;
}

/** A client on one connection. */
export class NbdClient {
  #buf = new Uint8Array(0);
  /** Handshake flags the server sent. */
  serverFlags = 0;
  /** Reply data lengths expected per handle (READs). */
  readonly #expect = new Map<number, number>();

  constructor(readonly conn: Deno.Conn) {}

  /** Connect to a Unix socket. */
  static async unix(path: string): Promise<NbdClient> {
    return new NbdClient(await Deno.connect({ transport: "unix", path }));
  }

  /** Read exactly `n` bytes (throws at the end of the stream). */
  async read(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      const chunk = new Uint8Array(65536);
      const k = await this.conn.read(chunk);
      if (k === null) throw new Error(`connection closed (wanted ${n} bytes, had ${this.#buf.length})`);
      const b = new Uint8Array(this.#buf.length + k);
      b.set(this.#buf);
      b.set(chunk.subarray(0, k), this.#buf.length);
      this.#buf = b;
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /** Whether the server closed the connection (reads until the end of the stream). */
  async closed(): Promise<boolean> {
    try {
      await this.read(1);
      return false;
    } catch {
      return true;
    }
  }

  async write(b: Uint8Array): Promise<void> {
    let o = 0;
    while (o < b.length) o += await this.conn.write(b.subarray(o));
  }

  /** Read the greeting and send client flags. */
  async greet(flags: number = NBD_FLAG_C.FIXED_NEWSTYLE | NBD_FLAG_C.NO_ZEROES): Promise<void> {
    const g = dv(await this.read(GREETING_BYTES));
    if (g.getBigUint64(0) !== NBD_MAGIC || g.getBigUint64(8) !== NBD_OPTS_MAGIC) {
      throw new Error("bad greeting");
    }
    this.serverFlags = g.getUint16(16);
    const f = new Uint8Array(4);
    dv(f).setUint32(0, flags);
    await this.write(f);
  }

  /** Send an option (with `magic` to send a wrong one). */
  async option(opt: number, data: Uint8Array = new Uint8Array(0), magic = NBD_OPTS_MAGIC): Promise<void> {
    const b = new Uint8Array(16 + data.length), v = dv(b);
    v.setBigUint64(0, magic);
    v.setUint32(8, opt);
    v.setUint32(12, data.length);
    b.set(data, 16);
    await this.write(b);
  }

  /** Read one option reply. */
  async optionReply(): Promise<OptionReply> {
    const h = dv(await this.read(OPTION_REPLY_HDR));
    if (h.getBigUint64(0) !== NBD_REP_MAGIC) throw new Error("bad option reply magic");
    const len = h.getUint32(16);
    return { option: h.getUint32(8), type: h.getUint32(12), data: await this.read(len) };
  }

  /** Option replies up to and including the first that is not NBD_REP_INFO / SERVER. */
  async optionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    while (true) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type !== 2 && r.type !== 3) return out;
    }
  }

  /** INFO / GO payload: name, then the info requests. */
  static infoData(name: string, requests: number[]): Uint8Array {
    const n = new TextEncoder().encode(name),
      b = new Uint8Array(6 + n.length + 2 * requests.length),
      v = dv(b);
    v.setUint32(0, n.length);
    b.set(n, 4);
    v.setUint16(4 + n.length, requests.length);
    requests.forEach((r, k) => v.setUint16(6 + n.length + 2 * k, r));
    return b;
  }

  /** Send a request (and a WRITE's payload); READ replies are expected with `length` bytes of data. */
  async request(
    type: number,
    handle: number,
    offset: number,
    length: number,
    opts: { flags?: number; payload?: Uint8Array } = {},
  ): Promise<void> {
    const b = new Uint8Array(REQUEST_BYTES + (opts.payload?.length ?? 0));
    writeRequest(dv(b), 0, { flags: opts.flags ?? 0, type, handleHi: 0, handleLo: handle, offset, length });
    if (opts.payload) b.set(opts.payload, REQUEST_BYTES);
    if (type === 0) this.#expect.set(handle, length);
    await this.write(b);
  }

  /** Read one simple reply (a READ's data too, when it succeeded). */
  async reply(): Promise<Reply> {
    const h = dv(await this.read(REPLY_BYTES));
    if (h.getUint32(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new Error("bad reply magic");
    const error = h.getUint32(4), handle = h.getUint32(12);
    const want = this.#expect.get(handle);
    this.#expect.delete(handle);
    return { error, handle, data: want !== undefined && error === 0 ? await this.read(want) : null };
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}
