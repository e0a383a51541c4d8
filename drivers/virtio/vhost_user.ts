/**
 * A vhost-user backend's session with one front end (QEMU's docs/interop/vhost-user.rst): it reads the front
 * end's messages from an {@link FdChannel}, answers them, keeps the negotiated features, the mapped memory table
 * and each vring's state, and turns a started ring into a device-side {@link DeviceQueue}. What the queues carry
 * is the device's business ({@link VhostDevice}: virtio-net in drivers/virtio/vhost_net.ts).
 *
 * Ring states follow the spec exactly: a ring is *stopped* until SET_VRING_KICK, and again after GET_VRING_BASE;
 * a started ring is *enabled* at once unless VHOST_USER_F_PROTOCOL_FEATURES was negotiated, in which case it
 * starts *disabled* and waits for SET_VRING_ENABLE.
 *
 * The front end is not trusted: a message that breaks framing (header, size, descriptors cut short) ends the
 * session; a well-framed message the backend refuses (an index, a ring size, an address outside the shared
 * memory, a feature not offered) is answered with a failure when REPLY_ACK asks for one, its descriptors closed,
 * and nothing else changes. Every descriptor received is closed on every path.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import type { FdChannel, FdOps } from "../../hal/fds.ts";
import { DeviceQueue } from "./device_queue.ts";
import { F } from "./features.ts";
import { VhostMemory } from "./vhost_memory.ts";
import {
  readHeader,
  readMemTable,
  readU64,
  readVringAddr,
  readVringFd,
  readVringState,
  VHOST_USER,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_FLAG,
  VHOST_USER_HEADER,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_MAX_REGIONS,
  VHOST_USER_PROTOCOL_F,
  type VringAddr,
  writeHeader,
  writeU64,
  writeVringState,
} from "./vhost_user_wire.ts";

/** What a device type gives its vhost-user backend. */
export interface VhostDevice {
  /** Virtio feature bits offered (the backend adds VHOST_USER_F_PROTOCOL_FEATURES). */
  readonly features: bigint;
  /** Vrings the device has (a net device: 2 per queue pair). */
  readonly vrings: number;
  /** Answer to GET_QUEUE_NUM (a net device: queue pairs). */
  readonly queueNum: number;
  /** A ring started, stopped, was enabled or disabled, or the session ended: re-read {@link VhostUserSession.rings}. */
  ringsChanged(): void;
}

/** One vring's state as the front end set it. */
export class Vring {
  /** Size (SET_VRING_NUM); 0 until set. */
  num = 0;
  /** The next avail index to take when started (SET_VRING_BASE). */
  base = 0;
  /** Ring addresses in the front end's address space (SET_VRING_ADDR). */
  addr: VringAddr | null = null;
  /** Kick eventfd (the driver notifies), -1 when none (the ring is polled). */
  kick: number = -1;
  /** Call eventfd (the device interrupts), -1 when none. */
  call: number = -1;
  /** Error eventfd (a broken ring is reported here), -1 when none. */
  err: number = -1;
  /** The ring as a device-side queue while started; null while stopped. */
  queue: DeviceQueue | null = null;
  /** Started and enabled: the device may use it (a started, disabled TX ring is drained and dropped). */
  enabled = false;
  /** Why the device quarantined the ring (it stays stopped until the front end restarts it), else null. */
  broken: string | null = null;

  /** Constructs an unset ring. */
  constructor(readonly index: number) {}

  /** Started (a kick came and the ring is mapped). */
  get started(): boolean {
    return this.queue !== null;
  }
}

/** The protocol features pvdrv's backend offers: multiple queues and REPLY_ACK. */
export const BACKEND_PROTOCOL_FEATURES: bigint = (1n << BigInt(VHOST_USER_PROTOCOL_F.MQ)) |
  (1n << BigInt(VHOST_USER_PROTOCOL_F.REPLY_ACK));

const PROTOCOL_FEATURES_BIT = 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);
// How long the rest of a message may take to arrive once its first bytes did.
const MESSAGE_TIMEOUT_MS = 1000;

function refuse(msg: string): PvdrvError {
  return new PvdrvError("vhost-user", `vhost-user: ${msg}`);
}

/** One front end's session. */
export class VhostUserSession {
  /** The rings, by index. */
  readonly rings: Vring[];
  /** Features the front end set (SET_FEATURES). */
  features = 0n;
  /** Protocol features the front end set. */
  protocolFeatures = 0n;
  /** Messages handled, and refused. */
  readonly counters = { messages: 0, refused: 0 };
  /** The last refusal, for logs. */
  lastError: string | null = null;
  #memory: VhostMemory | null = null;
  #closed = false;
  readonly #hdr = new Uint8Array(VHOST_USER_HEADER);
  readonly #payload = new Uint8Array(VHOST_USER_MAX_PAYLOAD);
  readonly #reply = new Uint8Array(VHOST_USER_HEADER + 8);
  readonly #fds: number[] = [];
  readonly #more: number[] = [];
  // VHOST_USER_F_PROTOCOL_FEATURES is negotiated once the front end has set protocol features (QEMU does that at
  // connect, before SET_FEATURES carries the bit, and sends SET_VRING_ENABLE in between).
  #protocol = false;
  // SET_VRING_ENABLE may come before the kick (QEMU sends it last, but the spec does not order it).
  readonly #pendingEnable: boolean[] = [];

  /**
   * A session on `channel` (owned from now on), serving `device`; `log` hears refusals, quarantines and the end
   * (and, with `trace`, every message).
   */
  constructor(
    readonly channel: FdChannel,
    readonly ops: FdOps,
    readonly device: VhostDevice,
    readonly log: (line: string) => void = () => {},
    readonly trace = false,
  ) {
    this.rings = Array.from({ length: device.vrings }, (_, i) => new Vring(i));
  }

  /** The guest's memory, or null before SET_MEM_TABLE. */
  get memory(): VhostMemory | null {
    return this.#memory;
  }

  /** Whether the session ended (the front end left, broke framing, or {@link close} was called). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Features negotiated: whether `bit` (a {@link F} or NET_F value) was set by the front end. */
  has(bit: bigint): boolean {
    return (this.features & bit) !== 0n;
  }

  /** Handle every message that is waiting, without blocking; false once the session has ended. */
  pump(): boolean {
    while (!this.#closed && this.channel.readableWithin(0)) this.#one();
    return !this.#closed;
  }

  /** Serve messages until the session ends. */
  async serve(): Promise<void> {
    while (!this.#closed) {
      try {
        await this.channel.readable();
      } catch {
        break; // closed under us
      }
      this.pump();
    }
  }

  /** Report ring `r` broken by the driver: stop it and signal its error eventfd (QEMU logs "vring error"). */
  quarantine(r: Vring, why: string): void {
    if (r.broken) return;
    r.broken = why;
    this.log(`vring ${r.index} quarantined: ${why}`);
    r.queue = null;
    r.enabled = false;
    if (r.err >= 0) {
      try {
        this.ops.signal(r.err);
      } catch { /* the front end closed it: the ring is stopped either way */ }
    }
    this.device.ringsChanged();
  }

  /** End the session: unmap memory, close every descriptor and the channel (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.rings) {
      for (const fd of [r.kick, r.call, r.err]) this.ops.close(fd);
      r.kick = r.call = r.err = -1;
      r.queue = null;
      r.enabled = false;
    }
    this.#memory?.release();
    this.#memory = null;
    this.channel.close();
    this.device.ringsChanged();
  }

  // ---- reading ----

  /** Read `into` whole; the descriptors of the first read go to `fds`. False when the peer closed at once. */
  #read(into: Uint8Array, fds: number[] | null): boolean {
    let got = 0;
    while (got < into.length) {
      if (got > 0 && !this.channel.readableWithin(MESSAGE_TIMEOUT_MS)) {
        throw refuse(`a message was cut short (${got} of ${into.length} bytes)`);
      }
      const more = this.#more;
      const n = this.channel.recv(into.subarray(got), got === 0 && fds ? fds : more, VHOST_USER_MAX_REGIONS);
      if (more.length) {
        for (const fd of more.splice(0)) this.ops.close(fd);
        throw refuse("descriptors arrived in the middle of a message");
      }
      if (n === 0) {
        if (got === 0 && fds) return false;
        throw refuse("the front end left in the middle of a message");
      }
      got += n;
    }
    return true;
  }

  #one(): void {
    const fds = this.#fds;
    fds.length = 0;
    let request = 0, flags = 0, size = 0;
    try {
      if (!this.#read(this.#hdr, fds)) {
        this.log("the front end left");
        return this.close();
      }
      ({ request, flags, size } = readHeader(this.#hdr));
      if (size) this.#read(this.#payload.subarray(0, size), null);
    } catch (e) {
      for (const fd of fds) this.ops.close(fd);
      this.lastError = (e as Error).message;
      this.counters.refused++;
      this.log(`session ended: ${this.lastError}`);
      return this.close();
    }
    this.counters.messages++;
    if (this.trace) {
      this.log(`request ${request} flags 0x${flags.toString(16)} size ${size} fds ${fds.length}`);
    }
    const p = this.#payload.subarray(0, size);
    let ok = true;
    let replied = false;
    try {
      replied = this.#handle(request, p, fds);
    } catch (e) {
      ok = false;
      this.lastError = `request ${request}: ${(e as Error).message}`;
      this.counters.refused++;
      this.log(`refused ${this.lastError}`);
    } finally {
      // Whatever a handler did not keep is closed: a refused message leaks nothing.
      for (const fd of fds) this.ops.close(fd);
    }
    if (this.#closed) return;
    const ack = (this.protocolFeatures & (1n << BigInt(VHOST_USER_PROTOCOL_F.REPLY_ACK))) !== 0n;
    if (!replied && ack && (flags & VHOST_USER_FLAG.NEED_REPLY)) this.#replyU64(request, ok ? 0n : 1n);
    else if (!ok && isGet(request)) this.close(); // the front end waits for an answer pvdrv cannot give
  }

  #replyU64(request: number, x: bigint): void {
    writeU64(this.#reply.subarray(VHOST_USER_HEADER), x);
    this.#send(request, 8);
  }

  #send(request: number, size: number): void {
    writeHeader(this.#reply, { request, flags: VHOST_USER_FLAG.VERSION | VHOST_USER_FLAG.REPLY, size });
    try {
      this.channel.send(this.#reply.subarray(0, VHOST_USER_HEADER + size));
    } catch (e) {
      this.lastError = `reply to request ${request}: ${(e as Error).message}`;
      this.close();
    }
  }

  // ---- requests ----

  #ring(index: number): Vring {
    const r = this.rings[index];
    if (!r) throw refuse(`vring ${index} does not exist (the device has ${this.rings.length})`);
    return r;
  }

  /** Take the single descriptor of a KICK/CALL/ERR message (or none with NOFD); the caller's array is emptied. */
  #takeFd(fds: number[], noFd: boolean, what: string): number {
    if (noFd ? fds.length !== 0 : fds.length !== 1) {
      throw refuse(`${what} came with ${fds.length} descriptors`);
    }
    if (noFd) return -1;
    const fd = fds.pop()!;
    try {
      this.ops.nonBlocking(fd);
    } catch (e) {
      this.ops.close(fd);
      throw e;
    }
    return fd;
  }

  /** Handle one message; true when it was answered with a reply of its own. */
  #handle(request: number, p: Uint8Array, fds: number[]): boolean {
    const Q = VHOST_USER;
    if (
      request !== Q.SET_MEM_TABLE && request !== Q.SET_VRING_KICK && request !== Q.SET_VRING_CALL &&
      request !== Q.SET_VRING_ERR && request !== Q.SET_LOG_FD && fds.length
    ) {
      throw refuse(`came with ${fds.length} descriptors it does not take`);
    }
    switch (request) {
      case Q.GET_FEATURES:
        this.#expect(p, 0);
        this.#replyU64(request, this.device.features | PROTOCOL_FEATURES_BIT);
        return true;
      case Q.SET_FEATURES: {
        const f = readU64(p, "SET_FEATURES");
        const extra = f & ~(this.device.features | PROTOCOL_FEATURES_BIT);
        if (extra) throw refuse(`features 0x${extra.toString(16)} were not offered`);
        this.features = f;
        return false;
      }
      case Q.GET_PROTOCOL_FEATURES:
        this.#expect(p, 0);
        this.#replyU64(request, BACKEND_PROTOCOL_FEATURES);
        return true;
      case Q.SET_PROTOCOL_FEATURES: {
        const f = readU64(p, "SET_PROTOCOL_FEATURES");
        const extra = f & ~BACKEND_PROTOCOL_FEATURES;
        if (extra) throw refuse(`protocol features 0x${extra.toString(16)} were not offered`);
        this.protocolFeatures = f;
        this.#protocol = true;
        return false;
      }
      case Q.GET_QUEUE_NUM:
        this.#expect(p, 0);
        this.#replyU64(request, BigInt(this.device.queueNum));
        return true;
      case Q.SET_OWNER:
        this.#expect(p, 0);
        return false;
      case Q.RESET_OWNER:
        this.#expect(p, 0);
        for (const r of this.rings) this.#stop(r);
        this.features = 0n;
        this.device.ringsChanged();
        return false;
      case Q.SET_MEM_TABLE:
        this.#setMemTable(p, fds);
        return false;
      case Q.SET_VRING_NUM: {
        const s = readVringState(p), r = this.#ring(s.index);
        if (r.started) throw refuse(`vring ${s.index} is running: its size cannot change`);
        if (!(s.num >= 1 && s.num <= 32768 && (s.num & (s.num - 1)) === 0)) {
          throw refuse(`vring ${s.index}: size ${s.num} is not a power of two in 1..32768`);
        }
        r.num = s.num;
        return false;
      }
      case Q.SET_VRING_BASE: {
        const s = readVringState(p), r = this.#ring(s.index);
        if (r.started) throw refuse(`vring ${s.index} is running: its base cannot change`);
        if (s.num > 0xffff) throw refuse(`vring ${s.index}: base ${s.num} is not a 16-bit index`);
        r.base = s.num;
        return false;
      }
      case Q.SET_VRING_ADDR: {
        const a = readVringAddr(p), r = this.#ring(a.index);
        if (r.started) throw refuse(`vring ${a.index} is running: its addresses cannot change`);
        if (a.flags & ~1) throw refuse(`vring ${a.index}: unknown address flags 0x${a.flags.toString(16)}`);
        r.addr = a;
        return false;
      }
      case Q.GET_VRING_BASE: {
        const s = readVringState(p), r = this.#ring(s.index);
        const base = r.queue ? r.queue.lastAvail : r.base;
        this.#stop(r);
        r.base = base;
        this.device.ringsChanged();
        writeVringState(this.#reply.subarray(VHOST_USER_HEADER), { index: s.index, num: base });
        this.#send(request, 8);
        return true;
      }
      case Q.SET_VRING_KICK: {
        const v = readVringFd(p, "SET_VRING_KICK"), r = this.#ring(v.index);
        const fd = this.#takeFd(fds, v.noFd, "SET_VRING_KICK");
        this.ops.close(r.kick);
        r.kick = fd;
        try {
          this.#start(r);
        } catch (e) {
          this.ops.close(fd); // refused: the ring stays stopped and keeps nothing
          r.kick = -1;
          throw e;
        }
        return false;
      }
      case Q.SET_VRING_CALL:
      case Q.SET_VRING_ERR: {
        const what = request === Q.SET_VRING_CALL ? "SET_VRING_CALL" : "SET_VRING_ERR";
        const v = readVringFd(p, what), r = this.#ring(v.index);
        const fd = this.#takeFd(fds, v.noFd, what);
        if (request === Q.SET_VRING_CALL) this.ops.close(r.call), r.call = fd;
        else this.ops.close(r.err), r.err = fd;
        return false;
      }
      case Q.SET_VRING_ENABLE: {
        if (!this.#protocol) throw refuse("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES");
        const s = readVringState(p), r = this.#ring(s.index);
        if (s.num > 1) throw refuse(`vring ${s.index}: enable ${s.num} is neither 0 nor 1`);
        r.enabled = s.num === 1 && r.started;
        this.#pendingEnable[s.index] = s.num === 1;
        this.device.ringsChanged();
        return false;
      }
      default:
        throw refuse(`request ${request} is not supported by a net backend`);
    }
  }

  #expect(p: Uint8Array, n: number): void {
    if (p.length !== n) throw refuse(`payload of ${p.length} bytes, expected ${n}`);
  }

  #setMemTable(p: Uint8Array, fds: number[]): void {
    const regions = readMemTable(p, fds.length);
    const mem = new VhostMemory(regions, fds, this.ops);
    const old = this.#memory;
    this.#memory = mem;
    // Running rings are re-made on the new table (memory hot-plug); one that no longer maps stops.
    for (const r of this.rings) {
      if (!r.queue) continue;
      const last = r.queue.lastAvail, used = r.queue.usedIdx;
      try {
        r.queue = this.#queueOf(r, last);
        r.queue.usedIdx = used;
      } catch (e) {
        this.quarantine(r, (e as Error).message);
      }
    }
    old?.release();
    // The descriptors are mapped: the mappings keep the files, so they are closed now (by the caller's finally).
  }

  #queueOf(r: Vring, base: number): DeviceQueue {
    const mem = this.#memory;
    if (!mem) throw refuse(`vring ${r.index} started before SET_MEM_TABLE`);
    if (!r.num) throw refuse(`vring ${r.index} started before SET_VRING_NUM`);
    if (!r.addr) throw refuse(`vring ${r.index} started before SET_VRING_ADDR`);
    const a = r.addr, big = BigInt(Number.MAX_SAFE_INTEGER);
    if (a.desc > big || a.avail > big || a.used > big) throw refuse(`vring ${r.index}: addresses past 2^53`);
    const eventIdx = this.has(F.RING_EVENT_IDX);
    const q = new DeviceQueue(
      r.index,
      r.num,
      (addr, len) => mem.user(addr, len),
      { desc: Number(a.desc), driver: Number(a.avail), device: Number(a.used) },
      eventIdx,
    );
    q.lastAvail = base;
    q.usedIdx = base;
    return q;
  }

  #start(r: Vring): void {
    r.broken = null;
    try {
      r.queue = this.#queueOf(r, r.base);
    } catch (e) {
      r.queue = null;
      throw e;
    }
    // The used index the driver sees is where the device resumes publishing (a restart after a crash).
    r.queue.usedIdx = r.queue.publishedUsed();
    r.enabled = !this.#protocol || this.#pendingEnable[r.index] === true;
    this.device.ringsChanged();
  }

  #stop(r: Vring): void {
    r.queue = null;
    r.enabled = false;
    this.#pendingEnable[r.index] = false;
    this.ops.close(r.kick);
    r.kick = -1;
  }
}

function isGet(request: number): boolean {
  return request === VHOST_USER.GET_FEATURES || request === VHOST_USER.GET_PROTOCOL_FEATURES ||
    request === VHOST_USER.GET_QUEUE_NUM || request === VHOST_USER.GET_VRING_BASE;
}
