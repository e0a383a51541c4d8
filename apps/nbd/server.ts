/**
 * An NBD export of any pvdrv disk (NetworkBlockDevice/nbd doc/proto.md): the fixed newstyle handshake
 * (NBD_OPT_GO and INFO with block sizes, LIST, ABORT, EXPORT_NAME; anything else refused with the protocol's
 * error), then transmission: READ, WRITE (with FUA), FLUSH, TRIM, WRITE_ZEROES, DISC, with simple replies, several
 * requests in flight and answered as they complete.
 *
 * Nothing the client sends is trusted: magics, option and name lengths, command flags, offsets and lengths are
 * checked before use; a bad request gets the protocol's error (EINVAL, EPERM, ENOSPC, ENOTSUP) and the session
 * goes on; a bad magic or an oversized write ends the session (the stream cannot be resynchronised), never the
 * process. Data moves between the socket and the disk's DMA buffers; requests larger than the buffers take a
 * copying path.
 * @module
 */
import { tick } from "../../hal/event_loop.ts";
import {
  type BlockBuffer,
  BlockOp,
  BlockRequest,
  BlockStatus,
  Completions,
  type Disk,
} from "../../drivers/block/disk.ts";
import {
  dv,
  EXPORT_NAME_PAD,
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_E,
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_INFO,
  NBD_OPT,
  NBD_OPTS_MAGIC,
  NBD_REP,
  NBD_REQUEST_MAGIC,
  NBD_TFLAG,
  type NbdRequest,
  OPTION_HDR,
  readRequest,
  REPLY_BYTES,
  REQUEST_BYTES,
  writeGreeting,
  writeOptionReply,
  writeReply,
} from "./wire.ts";

/** Longest option data the server reads (a name, info requests); longer ones are refused. */
const MAX_OPTION = 4096;
/** Longest option data the server skips to refuse it; past this the session ends. */
const MAX_OPTION_SKIP = 1 << 20;
/** The largest request the export serves (the protocol's customary maximum). */
export const NBD_MAX_REQUEST = 32 << 20;
/** NBD requests in flight at once. */
const DEPTH = 32;

/** Options of an {@link NbdExport}. */
export interface NbdExportOptions {
  /** The export's name (default ""; clients asking for another get NBD_REP_ERR_UNKNOWN). */
  name?: string;
  /** Shown by NBD_INFO_DESCRIPTION. */
  description?: string;
  /** Refuse writes even if the disk takes them. */
  readOnly?: boolean;
  /** The disk queue to use (default 0). */
  queue?: number;
  /**
   * The disk was opened with interrupts: while requests are in flight the session sleeps on the completion
   * interrupt instead of polling, leaving the CPU to the client (default false: poll).
   */
  interrupts?: boolean;
}

/** What one session did. */
export interface NbdSessionStats {
  /** Options negotiated. */
  options: number;
  /** Transmission requests. */
  requests: number;
  /** Requests answered with an error. */
  errors: number;
  /** Bytes read from the disk for the client. */
  bytesRead: number;
  /** Bytes written to the disk for the client. */
  bytesWritten: number;
  /** Why the session ended early (a protocol error), or "" (DISC, ABORT, or the client closed). */
  ended: string;
}

/** A protocol violation that ends the session. */
class ProtocolEnd extends Error {}

/** Reads exact byte counts from a connection through one buffer made per session. */
class ConnReader {
  readonly #buf = new Uint8Array(256 << 10);
  #start = 0;
  #end = 0;
  constructor(readonly conn: Deno.Conn) {}

  /** Fill `dst` completely; false at a clean end of stream before its first byte. */
  async read(dst: Uint8Array): Promise<boolean> {
    let got = 0;
    const have = this.#end - this.#start;
    if (have > 0) {
      const n = Math.min(have, dst.length);
      dst.set(this.#buf.subarray(this.#start, this.#start + n));
      this.#start += n;
      got = n;
    }
    while (got < dst.length) {
      if (dst.length - got >= this.#buf.length >> 1) {
        const n = await this.conn.read(dst.subarray(got));
        if (n === null) return this.#eof(got);
        got += n;
        continue;
      }
      const n = await this.conn.read(this.#buf);
      if (n === null) return this.#eof(got);
      this.#start = 0;
      this.#end = n;
      const k = Math.min(n, dst.length - got);
      dst.set(this.#buf.subarray(0, k), got);
      this.#start = k;
      got += k;
    }
    return true;
  }

  #eof(got: number): boolean {
    if (got === 0) return false;
    throw new ProtocolEnd("the client closed the connection in the middle of a message");
  }

  /** Read and drop `n` bytes. */
  async skip(n: number): Promise<void> {
    const scratch = new Uint8Array(Math.min(n, 64 << 10));
    while (n > 0) {
      const k = Math.min(n, scratch.length);
      if (!await this.read(scratch.subarray(0, k))) throw new ProtocolEnd("the client closed the connection");
      n -= k;
    }
  }
}

/** One NBD request in flight. */
interface Slot {
  /** Its place in the session's slots: the tag of the disk requests it posts. */
  readonly index: number;
  busy: boolean;
  /** Its reply was started (it is answered once, whoever finishes it first). */
  answered: boolean;
  type: number;
  handleHi: number;
  handleLo: number;
  /** Disk requests still outstanding. */
  left: number;
  error: number;
  length: number;
  /** READ: the buffers holding the data, in order. */
  readonly bufs: BlockBuffer[];
  nbufs: number;
  /** READ on the copying path: the bytes. */
  copy: Uint8Array | null;
}

/** An export of one disk; {@link serve} runs one session on a connection. */
export class NbdExport {
  readonly name: string;
  readonly #opts: NbdExportOptions;
  #busy = false;

  /** Export `disk` (which stays the caller's: the export never closes it). */
  constructor(readonly disk: Disk, opts: NbdExportOptions = {}) {
    this.name = opts.name ?? "";
    this.#opts = opts;
  }

  /** Whether writes are refused. */
  get readOnly(): boolean {
    return this.#opts.readOnly === true || this.disk.info.readOnly;
  }

  /** The transmission flags this export advertises. */
  get transmissionFlags(): number {
    const i = this.disk.info;
    let f = NBD_TFLAG.HAS_FLAGS | NBD_TFLAG.SEND_FLUSH | NBD_TFLAG.SEND_FUA;
    if (this.readOnly) f |= NBD_TFLAG.READ_ONLY;
    else {
      f |= NBD_TFLAG.SEND_WRITE_ZEROES;
      if (i.discard) f |= NBD_TFLAG.SEND_TRIM;
    }
    return f;
  }

  /** Serve one client on `conn` until it disconnects or breaks the protocol; closes `conn`. */
  async serve(conn: Deno.Conn): Promise<NbdSessionStats> {
    const stats: NbdSessionStats = {
      options: 0,
      requests: 0,
      errors: 0,
      bytesRead: 0,
      bytesWritten: 0,
      ended: "",
    };
    if (this.#busy) {
      try {
        conn.close();
      } catch { /* gone */ }
      stats.ended = "another session is using the disk";
      return stats;
    }
    this.#busy = true;
    const rd = new ConnReader(conn);
    const session = new Session(this, conn, rd, stats, this.#opts.queue ?? 0, this.#opts.interrupts ?? false);
    try {
      if (await this.#handshake(conn, rd, stats)) await session.run();
    } catch (e) {
      stats.ended = e instanceof ProtocolEnd ? e.message : `${(e as Error)?.message ?? e}`;
    } finally {
      await session.drain();
      try {
        conn.close();
      } catch { /* closed */ }
      this.#busy = false;
    }
    return stats;
  }

  /** Fixed newstyle negotiation; true when transmission starts. */
  async #handshake(conn: Deno.Conn, rd: ConnReader, stats: NbdSessionStats): Promise<boolean> {
    const out = new Uint8Array(64);
    await writeAll(conn, out.subarray(0, writeGreeting(out, NBD_FLAG.FIXED_NEWSTYLE | NBD_FLAG.NO_ZEROES)));
    const cf = new Uint8Array(4);
    if (!await rd.read(cf)) return false;
    const clientFlags = dv(cf).getUint32(0);
    if (clientFlags & ~(NBD_FLAG_C.FIXED_NEWSTYLE | NBD_FLAG_C.NO_ZEROES)) {
      throw new ProtocolEnd(
        `client flags 0x${clientFlags.toString(16)} include ones this server does not know`,
      );
    }
    const noZeroes = (clientFlags & NBD_FLAG_C.NO_ZEROES) !== 0;
    const hdr = new Uint8Array(OPTION_HDR), hv = dv(hdr);
    const data = new Uint8Array(MAX_OPTION);
    while (true) {
      if (!await rd.read(hdr)) return false;
      if (hv.getBigUint64(0) !== NBD_OPTS_MAGIC) {
        throw new ProtocolEnd("an option without the IHAVEOPT magic");
      }
      const opt = hv.getUint32(8), len = hv.getUint32(12);
      stats.options++;
      if (len > MAX_OPTION) {
        if (len > MAX_OPTION_SKIP) throw new ProtocolEnd(`option ${opt} carries ${len} bytes`);
        await rd.skip(len);
        await this.#reply(conn, opt, NBD_REP.ERR_TOO_BIG);
        continue;
      }
      const d = data.subarray(0, len);
      if (!await rd.read(d) && len > 0) return false;
      switch (opt) {
        case NBD_OPT.EXPORT_NAME: {
          // No error reply exists for this option: a wrong name ends the session.
          if (new TextDecoder().decode(d) !== this.name) {
            throw new ProtocolEnd("NBD_OPT_EXPORT_NAME names no export");
          }
          const a = new Uint8Array(10 + (noZeroes ? 0 : EXPORT_NAME_PAD)), v = dv(a);
          v.setBigUint64(0, BigInt(this.disk.info.capacity));
          v.setUint16(8, this.transmissionFlags);
          await writeAll(conn, a);
          return true;
        }
        case NBD_OPT.ABORT:
          await this.#reply(conn, opt, len === 0 ? NBD_REP.ACK : NBD_REP.ERR_INVALID).catch(() => {});
          stats.ended = "";
          return false;
        case NBD_OPT.LIST: {
          if (len !== 0) {
            await this.#reply(conn, opt, NBD_REP.ERR_INVALID);
            break;
          }
          const name = new TextEncoder().encode(this.name), r = new Uint8Array(4 + name.length);
          dv(r).setUint32(0, name.length);
          r.set(name, 4);
          await this.#reply(conn, opt, NBD_REP.SERVER, r);
          await this.#reply(conn, opt, NBD_REP.ACK);
          break;
        }
        case NBD_OPT.INFO:
        case NBD_OPT.GO: {
          const go = await this.#info(conn, opt, d);
          if (go && opt === NBD_OPT.GO) return true;
          break;
        }
        default:
          // STARTTLS, structured replies, meta contexts and anything unknown: not offered.
          await this.#reply(conn, opt, NBD_REP.ERR_UNSUP);
      }
    }
  }

  /** NBD_OPT_INFO / GO: name length, name, info request count, requests — each length checked. */
  async #info(conn: Deno.Conn, opt: number, d: Uint8Array): Promise<boolean> {
    const v = dv(d);
    if (d.length < 6) return void await this.#reply(conn, opt, NBD_REP.ERR_INVALID), false;
    const nlen = v.getUint32(0);
    if (nlen > d.length - 6) return void await this.#reply(conn, opt, NBD_REP.ERR_INVALID), false;
    const nreq = v.getUint16(4 + nlen);
    if (d.length !== 6 + nlen + 2 * nreq) {
      return void await this.#reply(conn, opt, NBD_REP.ERR_INVALID), false;
    }
    let name: string;
    try {
      name = new TextDecoder("utf-8", { fatal: true }).decode(d.subarray(4, 4 + nlen));
    } catch {
      return void await this.#reply(conn, opt, NBD_REP.ERR_INVALID), false;
    }
    if (name !== this.name) return void await this.#reply(conn, opt, NBD_REP.ERR_UNKNOWN), false;
    const want = new Set<number>();
    for (let k = 0; k < nreq; k++) want.add(v.getUint16(6 + nlen + 2 * k));
    const i = this.disk.info;
    const ex = new Uint8Array(12), ev = dv(ex);
    ev.setUint16(0, NBD_INFO.EXPORT);
    ev.setBigUint64(2, BigInt(i.capacity));
    ev.setUint16(10, this.transmissionFlags);
    await this.#reply(conn, opt, NBD_REP.INFO, ex);
    if (want.has(NBD_INFO.NAME)) await this.#text(conn, opt, NBD_INFO.NAME, this.name);
    if (want.has(NBD_INFO.DESCRIPTION)) {
      await this.#text(conn, opt, NBD_INFO.DESCRIPTION, this.#opts.description ?? this.disk.name);
    }
    // Always sent: requests must be whole logical blocks, and no larger than the export serves.
    const bs = new Uint8Array(14), bv = dv(bs);
    bv.setUint16(0, NBD_INFO.BLOCK_SIZE);
    bv.setUint32(2, i.logicalBlockSize);
    bv.setUint32(6, Math.max(i.physicalBlockSize, 4096));
    bv.setUint32(10, NBD_MAX_REQUEST);
    await this.#reply(conn, opt, NBD_REP.INFO, bs);
    await this.#reply(conn, opt, NBD_REP.ACK);
    return true;
  }

  async #text(conn: Deno.Conn, opt: number, type: number, s: string): Promise<void> {
    const t = new TextEncoder().encode(s).subarray(0, MAX_OPTION), b = new Uint8Array(2 + t.length);
    dv(b).setUint16(0, type);
    b.set(t, 2);
    await this.#reply(conn, opt, NBD_REP.INFO, b);
  }

  async #reply(conn: Deno.Conn, opt: number, type: number, data?: Uint8Array): Promise<void> {
    const h = new Uint8Array(20 + (data?.length ?? 0));
    writeOptionReply(h, opt, type, data?.length ?? 0);
    if (data) h.set(data, 20);
    await writeAll(conn, h);
  }
}

/** Write all of `b`. */
async function writeAll(conn: Deno.Conn, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await conn.write(b.subarray(off));
}

/** The transmission phase of one session. */
class Session {
  readonly #slots: Slot[] = [];
  readonly #done: Completions;
  readonly #req: NbdRequest = { magic: 0, flags: 0, type: 0, handleHi: 0, handleLo: 0, offset: 0, length: 0 };
  readonly #hdr = new Uint8Array(REQUEST_BYTES);
  readonly #rep = new Uint8Array(REPLY_BYTES);
  readonly #one = [new BlockRequest()];
  /** Scratch for checking that a request's buffers can be had (made once). */
  readonly #probe: BlockBuffer[] = [];
  readonly #disk: Disk;
  #writing: Promise<void> = Promise.resolve();
  #running = false;
  #completer: Promise<void> | null = null;
  #wake: (() => void) | null = null;
  #inflight = 0;
  #failed: Error | null = null;
  #exclusive = false;
  #gone = false;

  constructor(
    readonly exp: NbdExport,
    readonly conn: Deno.Conn,
    readonly rd: ConnReader,
    readonly stats: NbdSessionStats,
    readonly queue: number,
    readonly interrupts: boolean,
  ) {
    this.#disk = exp.disk;
    this.#done = new Completions(64);
    const i = exp.disk.info;
    const perReq = Math.ceil(NBD_MAX_REQUEST / i.maxSegmentBytes);
    for (let k = 0; k < DEPTH; k++) {
      this.#slots.push({
        index: k,
        busy: false,
        answered: false,
        type: 0,
        handleHi: 0,
        handleLo: 0,
        left: 0,
        error: 0,
        length: 0,
        bufs: new Array(perReq),
        nbufs: 0,
        copy: null,
      });
    }
  }

  /** Read requests until DISC, the end of the stream, or a protocol error. */
  async run(): Promise<void> {
    this.#running = true;
    this.#completer = this.#complete();
    const r = this.#req, hv = dv(this.#hdr);
    while (true) {
      if (this.#failed) throw this.#failed;
      if (!await this.rd.read(this.#hdr)) return;
      readRequest(hv, 0, r);
      if (r.magic !== NBD_REQUEST_MAGIC) throw new ProtocolEnd(`request magic 0x${r.magic.toString(16)}`);
      this.stats.requests++;
      if (r.type === NBD_CMD.DISC) return;
      await this.#request(r);
    }
  }

  /** Wait for every request in flight to be answered, then stop the completion loop. */
  async drain(): Promise<void> {
    while (this.#inflight > 0 && !this.#failed) await this.#idle();
    this.#running = false;
    this.#wake?.();
    await this.#completer?.catch(() => {});
    await this.#writing.catch(() => {});
    // Anything still with the disk (a failed session) is collected so its buffers go back.
    for (let n = 0; n < 1000 && this.#disk.inFlight(this.queue) > 0; n++) {
      try {
        this.#disk.poll(this.#done, this.#done.n, this.queue);
      } catch {
        break;
      }
      await tick();
    }
    for (const s of this.#slots) this.#free(s);
  }

  /** Check one request and start it (or answer its error). */
  async #request(r: NbdRequest): Promise<void> {
    const i = this.#disk.info, ro = this.exp.readOnly;
    const err = this.#check(r, i.capacity, i.logicalBlockSize, ro);
    if (r.type === NBD_CMD.WRITE && err !== 0) {
      // The payload follows whatever the answer: read it to stay in step (or end a session that sends too much).
      if (r.length > NBD_MAX_REQUEST) throw new ProtocolEnd(`a WRITE of ${r.length} bytes`);
      await this.rd.skip(r.length);
    }
    if (err !== 0) return await this.#answer(r.handleHi, r.handleLo, err, null);
    const slot = await this.#slot();
    slot.type = r.type;
    slot.handleHi = r.handleHi;
    slot.handleLo = r.handleLo;
    slot.error = 0;
    slot.length = r.length;
    // One count for the start itself: the completion loop cannot answer the request while parts are still posted.
    slot.left = 1;
    this.#inflight++;
    try {
      await this.#start(slot, r);
    } finally {
      this.#wake?.();
      if (--slot.left === 0) await this.#finish(slot);
    }
  }

  /** The protocol's error for `r`, or 0 when it may be served. */
  #check(r: NbdRequest, size: number, block: number, ro: boolean): number {
    const flags = r.flags;
    switch (r.type) {
      case NBD_CMD.READ:
        if (flags & ~NBD_CMD_FLAG.DF) return NBD_E.EINVAL;
        break;
      case NBD_CMD.WRITE:
        if (flags & ~NBD_CMD_FLAG.FUA) return NBD_E.EINVAL;
        break;
      case NBD_CMD.FLUSH:
        return flags || r.offset !== 0 || r.length !== 0 ? NBD_E.EINVAL : 0;
      case NBD_CMD.TRIM:
        if (flags & ~NBD_CMD_FLAG.FUA) return NBD_E.EINVAL;
        break;
      case NBD_CMD.WRITE_ZEROES:
        if (flags & ~(NBD_CMD_FLAG.FUA | NBD_CMD_FLAG.NO_HOLE | NBD_CMD_FLAG.FAST_ZERO)) return NBD_E.EINVAL;
        break;
      default:
        return NBD_E.EINVAL; // CACHE, BLOCK_STATUS, RESIZE: not advertised; anything else: unknown
    }
    const writes = r.type !== NBD_CMD.READ;
    if (writes && ro) return NBD_E.EPERM;
    if (
      r.length === 0 ||
      r.length > NBD_MAX_REQUEST && r.type !== NBD_CMD.TRIM && r.type !== NBD_CMD.WRITE_ZEROES
    ) {
      return NBD_E.EINVAL;
    }
    if (!(r.offset + r.length <= size)) return writes ? NBD_E.ENOSPC : NBD_E.EINVAL;
    if (r.offset % block !== 0 || r.length % block !== 0) return NBD_E.EINVAL;
    if (r.type === NBD_CMD.WRITE_ZEROES && (flags & NBD_CMD_FLAG.FAST_ZERO) && !this.#disk.info.writeZeroes) {
      return NBD_E.ENOTSUP;
    }
    return 0;
  }

  /** Start `r` on the disk as `slot`. */
  async #start(slot: Slot, r: NbdRequest): Promise<void> {
    const i = this.#disk.info;
    switch (r.type) {
      case NBD_CMD.READ:
      case NBD_CMD.WRITE: {
        const fua = (r.flags & NBD_CMD_FLAG.FUA) !== 0;
        const need = Math.ceil(r.length / i.maxSegmentBytes);
        if (!await this.#buffers(need)) return await this.#copying(slot, r, fua);
        const got = this.#disk.allocBuffers(slot.bufs, need, this.queue);
        slot.nbufs = got;
        for (let k = 0; k < need; k++) {
          const b = slot.bufs[k];
          b.length = Math.min(i.maxSegmentBytes, r.length - k * i.maxSegmentBytes);
          if (r.type === NBD_CMD.WRITE && !await this.rd.read(b.data.subarray(0, b.length))) {
            throw new ProtocolEnd("the client closed the connection in a WRITE's payload");
          }
        }
        if (r.type === NBD_CMD.WRITE) this.stats.bytesWritten += r.length;
        // Split into requests the disk's limits allow, each a run of the slot's buffers.
        const per = i.maxSegments;
        for (let k = 0; k < need; k += per) {
          const n = Math.min(per, need - k);
          const q = this.#one[0];
          q.op = r.type === NBD_CMD.READ ? BlockOp.Read : BlockOp.Write;
          q.offset = r.offset + k * i.maxSegmentBytes;
          q.count = n;
          let len = 0;
          for (let j = 0; j < n; j++) q.buffers[j] = slot.bufs[k + j], len += slot.bufs[k + j].length;
          q.length = len;
          q.fua = fua;
          q.tag = slot.index;
          await this.#post(slot);
        }
        return;
      }
      case NBD_CMD.FLUSH:
        this.#one[0].op = BlockOp.Flush;
        this.#one[0].count = 0;
        this.#one[0].length = 0;
        this.#one[0].tag = slot.index;
        return await this.#post(slot);
      case NBD_CMD.TRIM: {
        if (!i.discard) return; // advisory: nothing to do
        // Only the whole aligned units inside the range can be discarded.
        const a = i.discardAlignment;
        let off = Math.ceil(r.offset / a) * a;
        const end = Math.floor((r.offset + r.length) / a) * a;
        while (off < end) {
          const n = Math.min(end - off, i.maxDiscardBytes - (i.maxDiscardBytes % a));
          if (n <= 0) break;
          this.#range(BlockOp.Discard, off, n, false, slot);
          await this.#post(slot);
          off += n;
        }
        return;
      }
      case NBD_CMD.WRITE_ZEROES: {
        const unmap = (r.flags & NBD_CMD_FLAG.NO_HOLE) === 0;
        if (i.writeZeroes) {
          for (let off = r.offset, end = r.offset + r.length; off < end;) {
            const n = Math.min(end - off, i.maxWriteZeroesBytes);
            this.#range(BlockOp.WriteZeroes, off, n, unmap, slot);
            await this.#post(slot);
            off += n;
          }
        } else {
          // No native write-zeroes: write zeroes (the copying path, on the caller's own turn).
          await this.#disk.write(r.offset, new Uint8Array(r.length), {
            fua: (r.flags & NBD_CMD_FLAG.FUA) !== 0,
          })
            .catch(() => void (slot.error = NBD_E.EIO));
        }
        return;
      }
    }
  }

  #range(op: BlockOp, off: number, n: number, unmap: boolean, slot: Slot): void {
    const q = this.#one[0];
    q.op = op;
    q.offset = off;
    q.length = n;
    q.count = 0;
    q.unmap = unmap;
    q.tag = slot.index;
  }

  /** Submit `this.#one[0]` for `slot`, waiting while the queue is full. */
  async #post(slot: Slot): Promise<void> {
    while (this.#disk.submit(this.#one, 1, this.queue) === 0) await this.#idle();
    slot.left++;
  }

  /** A request larger than the DMA buffers: copied through memory, served on its own. */
  async #copying(slot: Slot, r: NbdRequest, fua: boolean): Promise<void> {
    await this.#alone(async () => {
      try {
        if (r.type === NBD_CMD.READ) slot.copy = await this.#disk.read(r.offset, r.length);
        else {
          const data = new Uint8Array(r.length);
          if (!await this.rd.read(data)) {
            throw new ProtocolEnd("the client closed the connection in a WRITE's payload");
          }
          this.stats.bytesWritten += r.length;
          await this.#disk.write(r.offset, data, { fua });
        }
      } catch (e) {
        if (e instanceof ProtocolEnd) throw e;
        slot.error = NBD_E.EIO;
      }
    });
  }

  /**
   * Run `f` (the disk's copying helpers, which poll the queue themselves) with nothing else in flight and the
   * completion loop paused, so no completion goes to the wrong reader.
   */
  async #alone(f: () => Promise<void>): Promise<void> {
    while (this.#disk.inFlight(this.queue) > 0) await this.#idle();
    this.#exclusive = true;
    try {
      await f();
    } finally {
      this.#exclusive = false;
    }
  }

  /** Whether `need` buffers can be had (waiting for completions); false when the pool is too small for them. */
  async #buffers(need: number): Promise<boolean> {
    const i = this.#disk.info;
    if (need > i.maxSegments * i.queueDepth) return false;
    while (true) {
      const probe = this.#probe;
      const got = this.#disk.allocBuffers(probe, need, this.queue);
      this.#disk.release(probe, got);
      if (got === need) return true;
      if (this.#disk.inFlight(this.queue) === 0) return false;
      await this.#idle();
    }
  }

  /** A free slot, waiting for one when all are busy. */
  async #slot(): Promise<Slot> {
    while (true) {
      const s = this.#slots.find((x) => !x.busy);
      if (s) {
        s.busy = true;
        s.answered = false;
        return s;
      }
      await this.#idle();
    }
  }

  /** Let completions happen: the completion loop runs while this waits. */
  async #idle(): Promise<void> {
    if (this.#failed) throw this.#failed;
    await tick();
  }

  /** The completion loop: collect disk completions, answer finished requests. */
  async #complete(): Promise<void> {
    const done = this.#done;
    let quiet = 0;
    while (this.#running || this.#inflight > 0) {
      if (this.#exclusive) {
        await tick();
        continue;
      }
      let n = 0;
      try {
        n = this.#disk.poll(done, done.n, this.queue);
      } catch (e) {
        this.#failed = e as Error;
        this.stats.ended = `the disk failed: ${(e as Error).message}`;
        return;
      }
      for (let k = 0; k < n; k++) {
        const slot = this.#slots[done.tags[k]];
        if (done.status[k] !== BlockStatus.Ok) slot.error = NBD_E.EIO;
        if (--slot.left === 0) await this.#finish(slot);
      }
      if (n > 0) {
        quiet = 0;
        continue;
      }
      if (this.#disk.inFlight(this.queue) > 0) {
        if (this.interrupts) {
          try {
            await this.#disk.waitCompletion(this.queue);
          } catch (e) {
            this.#failed = e as Error;
            this.stats.ended = `the disk failed: ${(e as Error).message}`;
            return;
          }
        } else await tick();
        continue;
      }
      // Nothing with the disk: sleep until the reader starts something (or the session ends).
      if (++quiet > 8) await new Promise<void>((r) => (this.#wake = r));
      else await tick();
      this.#wake = null;
    }
  }

  /** Answer `slot` and free it. */
  async #finish(slot: Slot): Promise<void> {
    if (!slot.busy || slot.answered) return;
    slot.answered = true;
    const read = slot.type === NBD_CMD.READ && slot.error === 0;
    if (read) this.stats.bytesRead += slot.length;
    try {
      await this.#answer(slot.handleHi, slot.handleLo, slot.error, read ? slot : null);
    } finally {
      this.#free(slot);
      this.#inflight--;
    }
  }

  #free(slot: Slot): void {
    slot.busy = false;
    if (slot.nbufs) {
      // Normally every buffer is back with us; after a failed disk, keep the ones it still holds out (in place).
      let k = 0;
      for (let i = 0; i < slot.nbufs; i++) {
        const b = slot.bufs[i];
        if (b.pool.owner(b) === "app") slot.bufs[k++] = b;
      }
      if (k) this.#disk.release(slot.bufs, k);
    }
    slot.nbufs = 0;
    slot.copy = null;
    slot.busy = false;
  }

  /** Send a simple reply (and a READ's data), one writer at a time. */
  #answer(hi: number, lo: number, error: number, data: Slot | null): Promise<void> {
    if (error) this.stats.errors++;
    const p = this.#writing.then(async () => {
      if (this.#gone) return; // the client is gone: requests still complete on the disk, unanswered
      const h = this.#rep;
      writeReply(dv(h), 0, error, hi, lo);
      await writeAll(this.conn, h);
      if (!data) return;
      if (data.copy) return await writeAll(this.conn, data.copy);
      let left = data.length;
      for (let k = 0; k < data.nbufs && left > 0; k++) {
        const b = data.bufs[k], n = Math.min(b.length, left);
        await writeAll(this.conn, b.data.subarray(0, n));
        left -= n;
      }
    });
    // A failed write means the client is gone: later answers are dropped, and the reader sees the end of stream.
    this.#writing = p.catch(() => void (this.#gone = true));
    return this.#writing;
  }
}

/** A listening export. */
export interface NbdListener {
  /** Where it listens. */
  readonly addr: Deno.Addr;
  /** Settles when the listener is closed and the last session ended. */
  readonly done: Promise<void>;
  /** Stop accepting (the session in progress runs to its end). */
  close(): void;
}

/**
 * Serve `exp` on a Unix socket (`path`) or on TCP (`port`, loopback unless `hostname` says otherwise), one session
 * at a time; `onSession` hears how each ended.
 */
export function listenNbd(
  exp: NbdExport,
  where: { path: string } | { port: number; hostname?: string },
  onSession?: (s: NbdSessionStats) => void,
): NbdListener {
  const listener = "path" in where
    ? Deno.listen({ transport: "unix", path: where.path })
    : Deno.listen({ transport: "tcp", hostname: where.hostname ?? "127.0.0.1", port: where.port });
  const done = (async () => {
    try {
      // Not `onSession?.(await exp.serve(conn))`: without a listener that would never serve at all.
      for await (const conn of listener) {
        const s = await exp.serve(conn);
        onSession?.(s);
      }
    } catch { /* closed */ }
  })();
  return {
    addr: listener.addr,
    done,
    close() {
      try {
        listener.close();
      } catch { /* closed */ }
    },
  };
}
