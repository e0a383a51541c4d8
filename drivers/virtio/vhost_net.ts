/**
 * The device side of virtio-net (virtio 1.2 §5.1) as a vhost-user backend: pvdrv is the NIC a QEMU guest's
 * virtio-net driver talks to. To the host it is an ordinary {@link Nic}: frames the guest transmits are received,
 * frames sent go into the guest's receive buffers, so the IPv4 host, the traffic tools and the switch run on a
 * guest's port unchanged.
 *
 * Per queue pair k, vring 2k is the guest's receiveq (the device writes) and 2k+1 its transmitq (§5.1.2). TX
 * chains are gathered into host buffers with the `virtio_net_hdr` stripped (read across descriptors: a header
 * may span them); RX frames are written with a header into one chain, or with VIRTIO_NET_F_MRG_RXBUF across as
 * many as it takes, `num_buffers` set (§5.1.6.4). Interrupts follow EVENT_IDX or the NO_INTERRUPT flag, once per
 * batch. Every guest value is checked by {@link DeviceQueue} and {@link VhostMemory}; a guest that breaks a ring
 * gets that ring quarantined (stopped, its error eventfd signalled), never the process and never another queue.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { FdAcceptor, FdChannel, FdOps } from "../../hal/fds.ts";
import type { IrqSource } from "../../hal/irq.ts";
import { NicCore, type QueuePair } from "../net/core.ts";
import { emptyStats, MIN_FRAME, type QueueStats, RX_CSUM_PARTIAL } from "../net/nic.ts";
import { type PacketBuffer, PacketPool, type PoolMemory } from "../net/packet_pool.ts";
import { Chain, type DeviceQueue } from "./device_queue.ts";
import { F, NET_F } from "./features.ts";
import { HDR_F_NEEDS_CSUM, writeRxHeader } from "./net_wire.ts";
import { type VhostDevice, VhostUserSession, type Vring } from "./vhost_user.ts";
import type { VhostMemory } from "./vhost_memory.ts";

/** Options of {@link VhostUserNet}. */
export interface VhostUserNetOptions {
  /** A name for logs and errors. */
  name?: string;
  /** The MAC the host side uses as its own (the guest's MAC is QEMU's business). */
  mac: Uint8Array;
  /** Queue pairs offered (GET_QUEUE_NUM); default 1. */
  pairs?: number;
  /** Host buffers per queue and direction; default 256. */
  buffers?: number;
  /** Wait on kick eventfds (true) or poll (false); default true. */
  irq?: boolean;
  /** Hears sessions start and end, refused messages and quarantined rings (default: nothing). */
  log?: (line: string) => void;
  /** Also log every vhost-user message. */
  trace?: boolean;
}

// Host buffers: a 1514-byte frame with a VLAN tag and room for the guest's own jumbo-less MTU up to 2030.
const SLOT = 2048;
// Each slot keeps room for the largest virtio_net_hdr before its frame (§5.1.6), so a chain's header and frame
// move in one copy; a 10-byte header sits 2 bytes in.
const HEADROOM = 12;
const GSO_NONE = 0;
// How often a busy receive loop looks for vhost-user messages, in batches (a poll(2) each time).
const CONTROL_EVERY = 256;
/** The most one-descriptor chains read at once (a batch is 32 to 256 frames). */
const MAX_RUN = 256;

/** The features pvdrv's virtio-net device offers (VERSION_1, EVENT_IDX, MRG_RXBUF, CSUM, MQ). */
export const VHOST_NET_FEATURES = F.VERSION_1 | F.RING_EVENT_IDX | NET_F.MRG_RXBUF | NET_F.CSUM | NET_F.MQ;

/** One queue pair, host side. */
export interface VhostPair extends QueuePair {
  /** The pair's index (vrings 2·index and 2·index + 1). */
  readonly index: number;
  /** The guest's TX kicks, or null when polling. */
  readonly irq: IrqSource | null;
  /** The pair's counters (rx: from the guest, tx: to the guest). */
  readonly stats: QueueStats;
}

function heap(bytes: number): PoolMemory {
  return { bytes: new Uint8Array(bytes), free() {} };
}

/** A guest's virtio-net port, served over vhost-user. */
export class VhostUserNet extends NicCore<VhostPair> implements VhostDevice {
  /** The port's name. */
  readonly name: string;
  /** The host side's MAC. */
  readonly mac: Uint8Array;
  /** The MTU frames to the guest may have. */
  readonly mtu = 1500;
  /** The largest frame sent to the guest (an Ethernet header and a VLAN tag over the MTU). */
  readonly maxFrame = 1518;
  /** Frames sent to the guest carry complete checksums (VIRTIO_NET_F_GUEST_CSUM is not offered). */
  readonly txChecksum = false;
  /** VhostDevice: the virtio features offered. */
  readonly features: bigint = VHOST_NET_FEATURES;
  /** VhostDevice: vrings (two per pair). */
  readonly vrings: number;
  /** VhostDevice: queue pairs (GET_QUEUE_NUM). */
  readonly queueNum: number;
  /** Sessions accepted, ended, and rings quarantined, over the port's life. */
  readonly counters = { sessions: 0, ended: 0, quarantined: 0, refusedConnections: 0 };
  #session: VhostUserSession | null = null;
  #acceptor: FdAcceptor | null;
  #batches = 0;
  #control = false;
  #hdrLen = 12;
  readonly #chain = new Chain();
  // A run of one-descriptor chains (DeviceQueue.peekSingles): heads, guest addresses, lengths.
  readonly #heads = new Uint16Array(MAX_RUN);
  readonly #addrs = new Float64Array(MAX_RUN);
  readonly #lens = new Uint32Array(MAX_RUN);
  #changed: (() => void) | null = null;
  readonly #log: (line: string) => void;
  readonly #trace: boolean;

  /** A port that serves front ends connecting to `acceptor` (one at a time), using `ops` for their descriptors. */
  constructor(acceptor: FdAcceptor, readonly ops: FdOps, opts: VhostUserNetOptions) {
    super();
    const pairs = opts.pairs ?? 1, n = opts.buffers ?? 256;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > 64) throw new RangeError(`pairs ${pairs}: 1..64`);
    if (!Number.isInteger(n) || n < 1 || n > 65536) throw new RangeError(`buffers ${n}: 1..65536`);
    if (opts.mac.length !== 6) throw new RangeError("a MAC address is 6 bytes");
    this.name = opts.name ?? "vhost-user";
    this.mac = opts.mac;
    this.vrings = 2 * pairs;
    this.queueNum = pairs;
    this.#acceptor = acceptor;
    const log = opts.log;
    this.#log = log ? (l) => log(`${this.name}: ${l}`) : () => {};
    this.#trace = opts.trace ?? false;
    for (let i = 0; i < pairs; i++) {
      const p: VhostPair = {
        index: i,
        rxPool: new PacketPool(`${this.name} rx${i}`, heap(n * SLOT), n, SLOT, HEADROOM),
        txPool: new PacketPool(`${this.name} tx${i}`, heap(n * SLOT), n, SLOT, HEADROOM),
        irq: opts.irq === false ? null : new KickIrq(this, 2 * i + 1),
        stats: emptyStats(),
      };
      this.adopt(p.rxPool, p.txPool);
      this.pairs.push(p);
    }
    this.#acceptLoop();
  }

  /** The current front end's session, or null while none is connected. */
  get session(): VhostUserSession | null {
    return this.#session;
  }

  /** Connected, and the first pair's rings started and enabled. */
  linkUp(): boolean {
    const s = this.#session;
    return !!s && !s.closed && s.rings[0].enabled && s.rings[1].enabled;
  }

  /** The ring the guest broke in this pair, as an error, or null. */
  protected fault(q: VhostPair): Error | null {
    const s = this.#session;
    if (!s) return null;
    const r = s.rings[2 * q.index].broken ?? s.rings[2 * q.index + 1].broken;
    return r
      ? new PvdrvError("vhost-user", `${this.name}: the guest broke a ring of pair ${q.index}: ${r}`)
      : null;
  }

  /** VhostDevice: rings changed; wake a waiter so it looks again. */
  ringsChanged(): void {
    const s = this.#session;
    if (s?.closed) {
      this.#session = null;
      this.counters.ended++;
    }
    if (s) {
      const v = s.features & (F.VERSION_1 | NET_F.MRG_RXBUF);
      this.#hdrLen = v ? 12 : 10;
    }
    const w = this.#changed;
    this.#changed = null;
    w?.();
  }

  /** Resolves at the next ring change (a session, a start, a stop). */
  changed(): Promise<void> {
    return new Promise((r) => {
      const prev = this.#changed;
      this.#changed = () => (prev?.(), r());
    });
  }

  /** Handle waiting vhost-user messages and connections now (a busy loop calls it through receive). */
  pumpControl(): void {
    this.#control = false;
    if (!this.#session && this.#acceptor) this.#take(this.#acceptor.accept());
    this.#session?.pump();
  }

  #take(ch: FdChannel | null): void {
    if (!ch) return;
    if (this.#session || this.closed) {
      this.counters.refusedConnections++; // one front end at a time
      ch.close();
      return;
    }
    this.counters.sessions++;
    this.#log(`front end connected (session ${this.counters.sessions})`);
    const s = new VhostUserSession(ch, this.ops, this, this.#log, this.#trace);
    this.#session = s;
    s.serve().catch(() => s.close());
  }

  // One front end at a time: while a session runs, the next waits (in the listener's backlog, or undialled).
  async #acceptLoop(): Promise<void> {
    for (;;) {
      const a = this.#acceptor;
      if (!a || this.closed) return;
      if (this.#session) {
        await this.changed();
        continue;
      }
      try {
        await a.readable();
      } catch {
        return; // the listener closed
      }
      if (!this.closed && !this.#session) this.#take(a.accept());
    }
  }

  /** The session's vring `i`, or null. */
  ring(i: number): Vring | null {
    return this.#session?.rings[i] ?? null;
  }

  /** The control socket's descriptor, or -1 (a sleeper watches it too). */
  get controlFd(): number {
    return this.#session?.channel.fd ?? -1;
  }

  // ---- ring steps ----

  #quarantine(r: Vring, e: unknown): void {
    if (!(e instanceof PvdrvError)) throw e;
    this.counters.quarantined++;
    this.#session?.quarantine(r, e.message);
  }

  #signal(r: Vring, q: DeviceQueue, old: number): void {
    if (q.usedIdx === old) return;
    q.flushUsed(); // the batch's used.idx, fenced before used_event is read
    if (r.call >= 0 && q.wantsInterrupt(old)) {
      try {
        this.ops.signal(r.call);
      } catch (e) {
        this.#quarantine(r, e);
      }
    }
  }

  /** Guest TX → host: gather chains into host buffers, header stripped. */
  protected collect(q: VhostPair, out: PacketBuffer[], max: number): void {
    if (++this.#batches % CONTROL_EVERY === 0 || this.#control) this.pumpControl();
    const r = this.ring(2 * q.index + 1), dq = r?.queue;
    if (!r || !dq) return;
    const c = this.#chain, mem = this.#session!.memory!, old = dq.usedIdx, pool = q.rxPool;
    const heads = this.#heads, addrs = this.#addrs, lens = this.#lens;
    let got = 0, bytes = 0; // frames in out[0..got), and their bytes
    try {
      while (got < max && pool.available > 0) {
        if (r.enabled) {
          // One-descriptor chains (the usual frame) a run at a time, a buffer each taken for all at once into
          // out[got..got + n); any other chain after them on its own.
          const n = dq.peekSingles(heads, addrs, lens, Math.min(max - got, pool.available, MAX_RUN), false);
          const from = got, t = pool.takeMany(out, n, from);
          let k = 0;
          try {
            for (; k < t; k++) {
              const b = out[from + k], ok = this.#copyFrame(q, b, addrs[k], lens[k], mem);
              dq.addUsed(heads[k], 0);
              if (ok) out[got++] = b, bytes += b.length;
              else pool.put(b, "app"); // dropped: the ring is fine
            }
          } finally {
            dq.skip(k);
            // A chain outside the shared memory ends the run: its buffer and those after it go back.
            for (let j = k; j < t; j++) pool.put(out[from + j], "app");
          }
          if (t > 0) continue;
          if (n > 0) break; // no buffer to take them into (the pool was retired)
        }
        if (!dq.take(c)) break;
        if (!r.enabled) {
          dq.addUsed(c.head, 0); // started but disabled: TX is taken and dropped (vhost-user.rst "Ring states")
          continue;
        }
        const b = this.#gather(q, c, mem);
        dq.addUsed(c.head, 0);
        if (b) out[got++] = b, bytes += b.length;
      }
    } catch (e) {
      this.#quarantine(r, e);
    } finally {
      this.delivered(got, bytes);
    }
    // Chains used before a quarantine are the guest's again: it hears of them either way.
    this.#signal(r, dq, old);
  }

  /**
   * Copy a frame in one readable descriptor of `len` bytes at guest address `addr` into `b`, as {@link #gather}
   * does a chain; false when it is dropped (`b` is still the application's). Throws when outside guest memory.
   */
  #copyFrame(q: VhostPair, b: PacketBuffer, addr: number, len: number, mem: VhostMemory): boolean {
    const h = this.#hdrLen, pool = q.rxPool, at = b.slotOffset + HEADROOM - h;
    if (!this.#carries(q, len - h)) return false;
    mem.copyOut(addr, len, pool.bytes, at, pool.u32);
    return this.#check(q, b, at, len - h);
  }

  /** Whether a guest frame of `len` bytes (after its header) is one this port carries; a drop is counted. */
  #carries(q: VhostPair, len: number): boolean {
    if (len >= MIN_FRAME && len <= SLOT - HEADROOM) return true;
    q.stats.rxDropped++; // dropped, the ring is fine
    return false;
  }

  #gather(q: VhostPair, c: Chain, mem: VhostMemory): PacketBuffer | null {
    const h = this.#hdrLen, len = c.readable - h;
    if (!this.#carries(q, c.writable !== 0 ? -1 : len)) return null; // a writable part: no frame to send
    // The chain's bytes in order, header then frame, so the frame starts at the headroom's end: one copy per
    // descriptor, however the guest split them.
    const pool = q.rxPool, b = pool.take()!, at = b.slotOffset + HEADROOM - h, bytes = pool.bytes;
    try {
      for (let i = 0, o = at; i < c.count; i++) {
        mem.copyOut(c.addr[i], c.len[i], bytes, o, pool.u32);
        o += c.len[i];
      }
    } catch (e) {
      pool.put(b, "app"); // outside the shared memory: the ring is quarantined, the buffer is not lost with it
      throw e;
    }
    if (this.#check(q, b, at, len)) return b;
    pool.put(b, "app");
    return null;
  }

  /**
   * Check the virtio-net header at `at` in front of frame `b` (`len` bytes after it) and set the frame's length
   * and offload fields: false when it is dropped (counted).
   */
  #check(q: VhostPair, b: PacketBuffer, at: number, len: number): boolean {
    const bytes = q.rxPool.bytes;
    b.length = len;
    if (bytes[at + 1] !== GSO_NONE) {
      q.stats.rxDropped++; // GSO was not offered
      return false;
    }
    if (bytes[at] & HDR_F_NEEDS_CSUM) {
      const start = bytes[at + 6] | (bytes[at + 7] << 8), off = bytes[at + 8] | (bytes[at + 9] << 8);
      if (start + off + 2 > len) {
        q.stats.rxDropped++; // csum_start/csum_offset outside the frame
        return false;
      }
      b.flags = RX_CSUM_PARTIAL;
      b.csumStart = start;
      b.csumOffset = off;
    }
    return true;
  }

  /** Host posts no receive buffers: the guest's TX chains are its buffers. */
  protected refill(_q: VhostPair): void {}

  /** Host → guest RX: each frame into the guest's buffers; returns the frames taken (the rest wait for room). */
  protected post(q: VhostPair, pkts: PacketBuffer[], n: number): number {
    this.checkFrames(pkts, n);
    const r = this.ring(2 * q.index), dq = r?.queue;
    if (!r || !dq || !r.enabled) return 0;
    const mem = this.#session!.memory!, merge = this.#session!.has(NET_F.MRG_RXBUF), old = dq.usedIdx;
    // The application's misuse is its error, not the guest's: checked before any byte is read or the ring touched,
    // a buffer twice in the batch too (the batch is the device's while it is written, so its repeat is refused).
    const heads = this.#heads, addrs = this.#addrs, lens = this.#lens, h = this.#hdrLen, pool = q.txPool;
    pool.toDeviceMany(pkts, n);
    let i = 0; // frames taken: written, or dropped for want of room (no MRG_RXBUF)
    try {
      while (i < n) {
        // A run of one-descriptor buffers (the usual RX buffer), one frame each while the frame fits; a frame
        // that does not, or any other chain, goes on its own.
        const m = dq.peekSingles(heads, addrs, lens, Math.min(n - i, MAX_RUN), true);
        let j = 0;
        try {
          for (; j < m; j++, i++) {
            const b = pkts[i], need = h + b.length, at = b.slotOffset + HEADROOM - h;
            if (lens[j] < need) break;
            writeRxHeader(pool.u32, pool.bytes, at, h, 1); // a 12-byte header starts its slot
            mem.copyIn(addrs[j], pool.bytes, at, need, pool.u32);
            dq.addUsed(heads[j], need);
            q.stats.txPackets++;
            q.stats.txBytes += b.length;
          }
        } finally {
          dq.skip(j);
        }
        if (m > 0 && j === m) continue;
        if (!this.#fill(q, dq, pkts[i], merge, mem)) break;
        i++;
      }
    } catch (e) {
      this.#quarantine(r, e);
    } finally {
      pool.putRun(pkts, 0, i, "device"); // written (or dropped): free again
      for (let k = i; k < n; k++) pool.toApp(pkts[k]); // no room for the rest: the application's again
    }
    this.#signal(r, dq, old);
    return i;
  }

  /** Write one frame into the guest's RX chains; false when the guest has no room for it now. */
  #fill(
    q: VhostPair,
    dq: DeviceQueue,
    b: PacketBuffer,
    merge: boolean,
    mem: VhostMemory,
  ): boolean {
    const h = this.#hdrLen, need = h + b.length, c = this.#chain, pool = q.txPool;
    // The header goes into the headroom, right before the frame: header and frame are copied as one.
    const at = b.slotOffset + HEADROOM - h;
    // Count the chains it takes first, so a frame is written whole or not at all.
    let chains = 0, room = 0;
    while (room < need) {
      if (!dq.peek(c, chains)) return false;
      if (c.readable !== 0) {
        throw new PvdrvError("vhost-user", `vring ${dq.index}: an RX chain is device-readable`);
      }
      room += c.writable;
      chains++;
      if (!merge && room < need) {
        dq.skip(1);
        dq.addUsed(c.head, 0); // too small for this frame (no MRG_RXBUF): given back empty, the frame dropped
        q.stats.txErrors++;
        return true;
      }
    }
    writeRxHeader(pool.u32, pool.bytes, at, h, chains);
    let src = 0; // bytes of header and frame written so far
    for (let k = 0; k < chains; k++) {
      if (chains > 1) dq.peek(c, 0); // one chain (the usual case) is in `c` already, checked
      let wrote = 0;
      for (let d = 0; d < c.count && src < need; d++) {
        const m = Math.min(need - src, c.len[d]);
        mem.copyIn(c.addr[d], pool.bytes, at + src, m, pool.u32);
        src += m, wrote += m;
      }
      dq.skip(1);
      dq.addUsed(c.head, wrote);
    }
    q.stats.txPackets++;
    q.stats.txBytes += b.length;
    return true;
  }

  /** Frames are copied at once: nothing is left to reclaim. */
  protected reclaim(_q: VhostPair): number {
    return 0;
  }

  /** Ask the guest to kick on TX; true when there is work already (do not sleep). */
  protected armIrq(q: VhostPair): boolean {
    this.pumpControl();
    const dq = this.ring(2 * q.index + 1)?.queue;
    if (!dq) return false;
    dq.setNotify(true);
    return dq.available() > 0;
  }

  /** Stop TX kicks while polling. */
  protected disarmIrq(q: VhostPair): void {
    this.ring(2 * q.index + 1)?.queue?.setNotify(false);
  }

  /** Mark that a control message may be waiting (from a sleeper's wakeup). */
  noteControl(): void {
    this.#control = true;
  }

  /** Stop accepting, end the session (memory unmapped, descriptors closed). */
  protected teardown(): void {
    this.#acceptor?.close();
    this.#acceptor = null;
    this.#session?.close();
    this.#session = null;
  }
}

/** A pair's TX kick eventfd as an interrupt source (it follows the session's current kick descriptor). */
class KickIrq implements IrqSource {
  constructor(readonly nic: VhostUserNet, readonly vring: number) {}

  async wait(): Promise<void> {
    const fd = this.nic.ring(this.vring)?.kick ?? -1;
    if (fd < 0) return await this.nic.changed();
    try {
      await this.nic.ops.waitReadable(fd);
    } catch { /* the descriptor was closed (a stop or a new kick): a wakeup, and the caller looks again */ }
    this.poll();
  }

  poll(): boolean {
    const fd = this.nic.ring(this.vring)?.kick ?? -1;
    if (fd < 0) return false;
    try {
      return this.nic.ops.drain(fd);
    } catch {
      return false; // not an eventfd after all: the ring is polled
    }
  }

  waitSync(timeoutMs: number, alsoFd = -1): boolean {
    const fd = this.nic.ring(this.vring)?.kick ?? -1, ctl = this.nic.controlFd;
    const woke = this.nic.ops.waitAnySync(fd, ctl, alsoFd, timeoutMs);
    if (woke) this.nic.noteControl();
    return this.poll() || woke;
  }

  close(): void {}
}
