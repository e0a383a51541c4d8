/**
 * Interrupts as eventfds, and the one waiter per process that parks a single native `poll()` over all of them
 * (Deno's nonblocking FFI pool has 32 threads; pvdrv never uses more than one).
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { check, native } from "./lib.ts";
import type { IrqSource } from "../hal/irq.ts";

const EFD_NONBLOCK = 0o4000;

/** A non-blocking eventfd. */
export class EventFd {
  /** The file descriptor. */
  fd: number;
  /** Creates a non-blocking eventfd. */
  constructor() {
    this.fd = check("eventfd", native().pvdrv_eventfd(0, EFD_NONBLOCK));
  }
  /** Add 1 to the counter (wakes a waiter). */
  signal(): void {
    check("eventfd write", native().pvdrv_eventfd_signal(this.fd));
  }
  /** Consume the counter: true if it was non-zero. */
  drain(): boolean {
    return check("eventfd read", native().pvdrv_eventfd_drain(this.fd)) === 1;
  }
  /** Close the fd. */
  close(): void {
    if (this.fd >= 0) native().pvdrv_close(this.fd);
    this.fd = -1;
  }
}

interface Entry {
  fd: number;
  resolvers: (() => void)[];
  rejecters: ((e: Error) => void)[];
  closeFd: boolean;
}

const MAX_FDS = 255;

/**
 * Dispatches readiness of many fds to promises with one parked `poll()`. Fds are only polled while someone waits
 * on them, so an idle process has nothing parked and can exit.
 */
export class IrqWaiter {
  readonly #ctl = new EventFd();
  readonly #entries = new Map<number, Entry>();
  readonly #fds = new Int32Array(MAX_FDS + 1);
  readonly #revents = new Int16Array(MAX_FDS + 1);
  // True from the moment a poll loop is started until it has ended and closed what was pending. Set and cleared
  // synchronously: a promise's `finally` left a window where the loop had ended but still looked parked, and a
  // descriptor removed then stayed open until some later wait.
  #parked = false;
  #toClose: number[] = [];

  /** Wait for `fd` to become readable. The caller consumes the event (read the fd) afterwards. */
  waitReadable(fd: number, closeFdWithSource = false): Promise<void> {
    let e = this.#entries.get(fd);
    if (!e) {
      if (this.#entries.size >= MAX_FDS) {
        throw new PvdrvError("device", `irq waiter: more than ${MAX_FDS} fds`);
      }
      e = { fd, resolvers: [], rejecters: [], closeFd: closeFdWithSource };
      this.#entries.set(fd, e);
    }
    const p = new Promise<void>((res, rej) => {
      e.resolvers.push(res);
      e.rejecters.push(rej);
    });
    this.#kick();
    return p;
  }

  /** Forget `fd`: pending waits reject; the fd is closed once no poll uses it (if `close`). */
  remove(fd: number, close: boolean): void {
    const e = this.#entries.get(fd);
    this.#entries.delete(fd);
    if (e) { for (const r of e.rejecters) r(new PvdrvError("device", `interrupt source fd ${fd} closed`)); }
    if (close) this.#toClose.push(fd);
    if (this.#parked) this.#ctl.signal();
    else this.#closePending();
  }

  #closePending(): void {
    for (const fd of this.#toClose.splice(0)) native().pvdrv_close(fd);
  }

  #kick(): void {
    if (this.#parked) {
      this.#ctl.signal(); // re-park with the new fd set
      return;
    }
    this.#parked = true;
    void this.#loop();
  }

  async #loop(): Promise<void> {
    try {
      await this.#polls();
    } finally {
      this.#parked = false;
      this.#closePending();
    }
  }

  async #polls(): Promise<void> {
    const n = native();
    while (true) {
      let count = 0;
      this.#fds[count++] = this.#ctl.fd;
      for (const e of this.#entries.values()) if (e.resolvers.length) this.#fds[count++] = e.fd;
      if (count === 1) break;
      const r = await n.pvdrv_poll(this.#fds, this.#revents, count, -1);
      if (r < 0) {
        const err = new PvdrvError("native", `poll failed: errno ${-r}`);
        for (const e of this.#entries.values()) for (const rej of e.rejecters.splice(0)) rej(err);
        break;
      }
      if (this.#revents[0]) this.#ctl.drain();
      for (let i = 1; i < count; i++) {
        if (!this.#revents[i]) continue;
        const e = this.#entries.get(this.#fds[i]);
        if (!e) continue;
        const rs = e.resolvers.splice(0);
        e.rejecters.length = 0;
        for (const res of rs) res();
      }
      this.#closePending();
    }
  }
}

let shared: IrqWaiter | undefined;

/** The process-wide waiter. */
export function irqWaiter(): IrqWaiter {
  return shared ??= new IrqWaiter();
}

const syncFd = new Int32Array(2), syncRevents = new Int16Array(2);

/**
 * {@link IrqSource.waitSync} for a source signalled through `fd`: block the thread in poll(2) until `fd` (or
 * `alsoFd`, when given) is readable or `timeoutMs` passes — at once when a signal is already pending, so no read
 * is tried first (in a Xen PV guest every system call is a trip through the hypervisor) — then consume it. True
 * when a signal was consumed.
 */
export function waitSyncOn(src: { poll(): boolean }, fd: number, timeoutMs: number, alsoFd = -1): boolean {
  syncFd[0] = fd;
  syncFd[1] = alsoFd;
  syncRevents[0] = syncRevents[1] = 0;
  const n = alsoFd >= 0 ? 2 : 1;
  const r = native().pvdrv_poll_sync(syncFd, syncRevents, n, Math.max(0, Math.floor(timeoutMs)));
  if (r < 0 && r !== -4) check("poll", r); // -EINTR: a signal; report no event
  return r > 0 && src.poll();
}

/** An {@link IrqSource} over an eventfd (VFIO interrupts, test signals). */
export class EventFdIrq implements IrqSource {
  /** The eventfd. */
  readonly efd: EventFd;
  /** Creates a source over a new eventfd. */
  constructor() {
    this.efd = new EventFd();
  }
  async wait(): Promise<void> {
    while (!this.efd.drain()) await irqWaiter().waitReadable(this.efd.fd);
  }
  waitSync(timeoutMs: number, alsoFd?: number): boolean {
    return waitSyncOn(this, this.efd.fd, timeoutMs, alsoFd);
  }
  poll(): boolean {
    return this.efd.drain();
  }
  close(): void {
    if (this.efd.fd < 0) return;
    irqWaiter().remove(this.efd.fd, true);
    this.efd.fd = -1;
  }
}
