/**
 * The `vhost` target: pvdrv's vhost-user backend (VhostUserNet) against a hostile driver and a hostile front end.
 * Each iteration connects an in-process front end (QEMU's part), negotiates a random feature set, starts one queue
 * pair on a driver reduced to its rings (tests/models/vhost_guest.ts), and runs long valid traffic both ways with
 * hostile events among it: descriptors outside the shared memory, zero and huge lengths, loops, links out of
 * range, direction and indirect flags, avail index jumps and bad heads, headers with GSO or a checksum outside the
 * frame, RX buffers that are readable, empty or tiny, garbage used_event; and messages — random requests, sizes,
 * descriptor counts, a bad header (which ends the session), changes to a running ring, a ring stopped and
 * restarted where it stopped.
 *
 * The oracle: the backend never throws (a bad ring is quarantined, a bad message refused); a direction nothing
 * hostile touched delivers every frame byte-exact and in order, whatever happened to the other (isolation); every
 * used id names a chain in flight; a ring's error eventfd is signalled if and only if it was quarantined; after close, no descriptor of
 * the iteration is left open. Quarantines and a session ended for bad framing are clean breaks.
 * @module
 */
import { LINUX_FD_OPS } from "../../ffi/unix.ts";
import { VhostUserNet } from "../../drivers/virtio/vhost_net.ts";
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE } from "../../drivers/virtio/split_ring.ts";
import {
  VHOST_USER,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_FLAG,
  writeHeader,
} from "../../drivers/virtio/vhost_user_wire.ts";
import type { PacketBuffer, PacketPool } from "../../drivers/net/nic.ts";
import { OneShotAcceptor, VhostUserFrontend } from "../models/vhost_user_frontend.ts";
import { HostileGuest, LAYOUT, Q } from "../models/vhost_guest.ts";
import { classify, type Result, type Rng, Silent } from "./oracle.ts";

const MEM = 1 << 20;
const HOST_MAC = new Uint8Array([2, 0, 0, 0, 0, 0x42]);

/**
 * What identifies a descriptor's file across duplicates: a socket's or memfd's inode, an eventfd's id. A copy the
 * backend received names the same file as the front end's original, so "the iteration's files" covers both.
 */
function fileId(fd: string): string | null {
  try {
    const info = Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`);
    const ev = info.match(/^eventfd-id:\s*(\d+)/m);
    if (ev) return `eventfd:${ev[1]}`;
    const link = Deno.readLinkSync(`/proc/self/fd/${fd}`);
    return /^socket:|^\/memfd:/.test(link) ? link : null;
  } catch {
    return null; // closed meanwhile, or the directory's own descriptor
  }
}

/** Every open descriptor's file id. */
function openFiles(): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    const id = fileId(e.name);
    if (id) m.set(id, [...(m.get(id) ?? []), e.name]);
  }
  return m;
}

/** Descriptors still open on files of `mine` (the front end's, which it has closed): the backend leaked them. */
function leaked(mine: Set<string>): string[] {
  const out: string[] = [];
  for (const [id, fds] of openFiles()) if (mine.has(id)) out.push(`${id} (fd ${fds.join(",")})`);
  return out;
}

function frame(rng: Rng, seq: number): Uint8Array {
  const f = new Uint8Array(rng.bool(0.2) ? rng.int(14, 80) : rng.int(60, 1514));
  for (let i = 0; i < f.length; i++) f[i] = (seq * 31 + i * 7) & 0xff;
  f[0] &= 0xfe; // unicast: the switch would not care, but keep it a plain frame
  return f;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** One vhost iteration. */
export async function vhostIteration(rng: Rng, steps: number): Promise<Result> {
  let nic: VhostUserNet | null = null;
  const before = openFiles();
  const fe = new VhostUserFrontend(() => nic?.pumpControl(), 2, MEM);
  // The files this iteration made: the front end's sockets, eventfds and guest memory.
  const mine = new Set([...openFiles().keys()].filter((id) => !before.has(id)));
  // Rings quarantined, each counted once however often (its error eventfd's counter just grows).
  const quarantined = new Set<number>();
  nic = new VhostUserNet(new OneShotAcceptor(fe.backendEnd), LINUX_FD_OPS, {
    mac: HOST_MAC,
    irq: false,
    log: (l) => {
      const m = l.match(/vring (\d+) quarantined/);
      if (m) quarantined.add(Number(m[1]));
    },
  });
  const n = nic;
  let events = 0, step = 0, result: Result = { outcome: "ok", events: 0, event: 0, detail: "" };
  let txTainted = false, rxTainted = false, ended = false;
  const toHost: Uint8Array[] = [], toGuest: Uint8Array[] = [];
  const bufs: PacketBuffer[] = new Array(32);
  let seq = 0;
  try {
    n.pumpControl();
    fe.connect();
    const mrg = rng.bool(), eventIdx = rng.bool();
    const features = F.VERSION_1 | (mrg ? NET_F.MRG_RXBUF : 0n) | (eventIdx ? F.RING_EVENT_IDX : 0n) |
      (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES));
    fe.request(VHOST_USER.SET_FEATURES, VhostUserFrontend.u64(features));
    if (!fe.setMemTable()) throw new Silent("a valid memory table was refused");
    const g = new HostileGuest(fe);
    g.start();
    if (!n.linkUp()) throw new Silent("rings started and enabled, but the link is down");
    for (let i = 0; i < 32; i++) g.postRx();
    const rate = rng.pick([0, 0.002, 0.02, 0.1]);

    const hostReceive = () => {
      const k = n.receiveBatch(bufs, 32);
      for (let i = 0; i < k; i++) {
        const want = toHost.shift();
        const got = bufs[i].data.subarray(0, bufs[i].length);
        if (!txTainted && (!want || !same(got, want))) {
          throw new Silent(
            `guest → host frame ${i}: ${want ? "differs" : "unexpected"} (${got.length} bytes)`,
          );
        }
      }
      n.release(bufs, k);
      if (txTainted) toHost.length = 0;
      else g.reclaimTx();
    };
    const guestReceive = () => {
      if (rxTainted) {
        g.rx.used();
        return;
      }
      for (const f of g.receive()) {
        const want = toGuest.shift();
        if (!want || !same(f, want)) {
          throw new Silent(`host → guest frame: ${want ? "differs" : "unexpected"}`);
        }
      }
      while (g.rx.free.length > Q - 32 && g.postRx());
    };

    for (step = 0; step < steps && !ended; step++) {
      events++;
      if (rng.next() < rate) {
        const k = rng.int(0, 19);
        if (k < 9) txTainted = true, hostileTx(rng, g, k);
        else if (k < 14) rxTainted = true, hostileRx(rng, g, k - 9, eventIdx);
        else ended = hostileMessage(rng, fe, n, g, k - 14, () => (txTainted = rxTainted = true));
        continue;
      }
      switch (rng.int(0, 3)) {
        case 0: {
          if (txTainted) break;
          const f = frame(rng, seq++);
          if (g.postTx(f, rng.bool(0.3))) toHost.push(f);
          break;
        }
        case 1: {
          if (!n.linkUp()) break;
          const f = frame(rng, seq++);
          if (n.allocTx(bufs, 1) !== 1) break;
          bufs[0].data.set(f);
          bufs[0].length = f.length;
          if (n.sendBatch(bufs, 1) === 1) toGuest.push(f);
          else n.release(bufs, 1);
          break;
        }
        case 2:
          hostReceive();
          break;
        default:
          guestReceive();
      }
    }
    if (!ended) {
      hostReceive();
      guestReceive();
      if (!txTainted && toHost.length) {
        hostReceive();
        if (toHost.length) throw new Silent(`${toHost.length} guest frames never reached the host`);
      }
      if (!rxTainted && toGuest.length) {
        throw new Silent(`${toGuest.length} host frames never reached the guest`);
      }
      // A ring's error eventfd was signalled if and only if the ring was quarantined.
      for (const i of [0, 1]) {
        if (fe.errs[i].drain() !== quarantined.has(i)) {
          throw new Silent(`vring ${i}: quarantined ${quarantined.has(i)}, but its error eventfd disagrees`);
        }
      }
    }
    // The host holds no buffer between steps: every one is back in its pool, whatever the guest did.
    const pair = (n as unknown as { pairs: { rxPool: PacketPool; txPool: PacketPool }[] }).pairs[0];
    for (const pool of [pair.rxPool, pair.txPool]) {
      if (pool.available !== pool.buffers.length) {
        throw new Silent(`${pool.name}: ${pool.buffers.length - pool.available} buffers never came back`);
      }
    }
    if (n.counters.quarantined || ended || n.session?.counters.refused) {
      result = { outcome: "clean-break", events, event: step, detail: n.session?.lastError ?? "ended" };
    }
  } catch (e) {
    result = classify(e, events, step);
  }
  try {
    await n.close();
    fe.close();
    // Descriptors the process's poll thread was watching are closed once it lets go of them: give it a moment.
    let left = leaked(mine);
    for (let t = 0; left.length && t < 100; t++) {
      await new Promise((r) => setTimeout(r, 5));
      left = leaked(mine);
    }
    if (left.length && (result.outcome === "ok" || result.outcome === "clean-break")) {
      result = { outcome: "leak", events, event: step, detail: `left open: ${left.join(", ")}` };
    }
  } catch (e) {
    if (result.outcome === "ok" || result.outcome === "clean-break") result = classify(e, events, step);
  }
  result.events = events;
  return result;
}

/** A hostile TX chain or index (kind 0..8). */
function hostileTx(rng: Rng, g: HostileGuest, kind: number): void {
  const t = g.tx, h = rng.int(0, Q - 1), buf = HostileGuest.buffer(Q + h);
  switch (kind) {
    case 0: // outside the shared memory, or straddling its end
      t.desc(h, rng.pick([0, GUARD(), LAYOUT.buffers + MEM, 2 ** 52]), rng.int(1, 4096), 0, 0);
      break;
    case 1: // zero or huge length
      t.desc(h, buf, rng.pick([0, 0xffffffff, 0x80000000, 5]), 0, 0);
      break;
    case 2: // a loop
      t.desc(h, buf, 64, DESC_F_NEXT, h);
      break;
    case 3: // a link out of range
      t.desc(h, buf, 64, DESC_F_NEXT, rng.int(Q, 0xffff));
      break;
    case 4: // device-writable on TX, or readable after writable
      t.desc(h, buf, 100, DESC_F_WRITE | (rng.bool() ? DESC_F_NEXT : 0), (h + 1) & (Q - 1));
      t.desc((h + 1) & (Q - 1), buf + 100, 100, 0, 0);
      break;
    case 5: // indirect, never offered
      t.desc(h, buf, 64, DESC_F_INDIRECT, 0);
      break;
    case 6: // header garbage: GSO, or a checksum outside the frame
      t.bytes(buf, 12).set([rng.pick([1, 3]), rng.pick([0, 1, 4, 0x80]), 0, 0, 0, 0, 0xff, 0x7f, 0xff, 0xff]);
      t.desc(h, buf, rng.int(0, 200), 0, 0);
      break;
    case 7: // avail.idx far ahead
      t.publish(h, rng.int(Q, 0xfff0));
      return;
    default: // a head out of range
      t.publish(rng.int(Q, 0xffff));
      return;
  }
  t.publish(h);
}

// An address just below the shared memory.
const GUARD = () => LAYOUT.rx.desc - 64;

/** A hostile RX buffer or index (kind 0..4). */
function hostileRx(rng: Rng, g: HostileGuest, kind: number, eventIdx: boolean): void {
  const r = g.rx, h = rng.int(0, Q - 1), buf = HostileGuest.buffer(h);
  switch (kind) {
    case 0: // readable RX buffer
      r.desc(h, buf, 2048, 0, 0);
      break;
    case 1: // empty or tiny
      r.desc(h, buf, rng.pick([0, 1, 11, 12, 13]), DESC_F_WRITE, 0);
      break;
    case 2: // outside
      r.desc(h, rng.pick([GUARD(), LAYOUT.buffers + MEM - 100, 2 ** 50]), 2048, DESC_F_WRITE, 0);
      break;
    case 3:
      r.publish(h, rng.int(Q, 0xfff0));
      return;
    default:
      if (eventIdx) r.usedEvent(rng.int(0, 0xffff));
      else r.publish(rng.int(Q, 0xffff));
      return;
  }
  r.publish(h);
}

/** A hostile message (kind 0..5); true when the session ended. */
function hostileMessage(
  rng: Rng,
  fe: VhostUserFrontend,
  n: VhostUserNet,
  g: HostileGuest,
  kind: number,
  taint: () => void,
): boolean {
  const s = n.session!;
  switch (kind) {
    case 0: { // a random request, payload and descriptors
      const p = new Uint8Array(rng.pick([0, 8, 40, rng.int(0, 300)])).map(() => rng.int(0, 255));
      const fds = rng.pick([[], [fe.kicks[0].fd], [fe.kicks[0].fd, fe.errs[0].fd]]);
      const req = rng.pick([
        rng.int(0, 60),
        VHOST_USER.SET_VRING_NUM,
        VHOST_USER.SET_VRING_ADDR,
        VHOST_USER.SET_VRING_CALL,
        VHOST_USER.SET_MEM_TABLE,
        VHOST_USER.SET_FEATURES,
      ]); // deno-fmt-ignore
      if (req === VHOST_USER.SET_MEM_TABLE || req === VHOST_USER.GET_VRING_BASE || req === VHOST_USER.RESET_OWNER) {
        taint(); // may change what is running (a refused table changes nothing, but a valid one may)
      }
      if (req === VHOST_USER.SET_VRING_CALL || req === VHOST_USER.SET_VRING_KICK) taint();
      fe.request(req, p, fds, rng.bool() ? VHOST_USER_FLAG.NEED_REPLY : 0);
      drainReplies(fe);
      break;
    }
    case 1: { // a bad header: the session ends
      const h = new Uint8Array(12);
      writeHeader(h, { request: 1, flags: rng.pick([0, 2, 3]), size: rng.int(0, 8) });
      if (rng.bool(0.5)) writeHeader(h, { request: 1, flags: 1, size: rng.int(4097, 0xffffffff) });
      fe.sock.send(h);
      n.pumpControl();
      taint();
      break;
    }
    case 2: // resize or move a running ring: refused
      fe.request(
        VHOST_USER.SET_VRING_NUM,
        VhostUserFrontend.state(rng.int(0, 1), 32),
        [],
        VHOST_USER_FLAG.NEED_REPLY,
      );
      drainReplies(fe);
      break;
    case 3: { // stop a ring and restart it where it stopped (QEMU's reconnect path)
      const i = rng.int(0, 1);
      taint();
      const base = fe.stopRing(i);
      if (rng.bool(0.8)) fe.startRing(i, Q, i === 0 ? LAYOUT.rx : LAYOUT.tx, base);
      break;
    }
    case 4: { // a memory table the file cannot hold, or overlapping regions
      const p = new Uint8Array(8 + 64);
      const v = new DataView(p.buffer);
      v.setUint32(0, 2, true);
      for (let r = 0; r < 2; r++) {
        v.setBigUint64(8 + 32 * r, BigInt(rng.pick([0x4000_0000, 0x4000_1000])), true);
        v.setBigUint64(16 + 32 * r, BigInt(rng.pick([4096, MEM, MEM * 4])), true);
        v.setBigUint64(24 + 32 * r, BigInt(0x7f00_0000_0000 + r * 0x1000_0000), true);
      }
      taint();
      fe.request(VHOST_USER.SET_MEM_TABLE, p, [fe.memFd, fe.memFd], VHOST_USER_FLAG.NEED_REPLY);
      drainReplies(fe);
      break;
    }
    default: // enable flapping
      fe.request(VHOST_USER.SET_VRING_ENABLE, VhostUserFrontend.state(rng.int(0, 1), rng.int(0, 2)));
      taint();
  }
  void g;
  return s.closed;
}

function drainReplies(fe: VhostUserFrontend): void {
  fe.pump();
  const b = new Uint8Array(4096), fds: number[] = [];
  while (fe.sock.fd >= 0 && fe.sock.readableWithin(0)) {
    if (fe.sock.recv(b, fds, 0) === 0) break;
  }
}
