/**
 * Unix stream sockets whose messages carry file descriptors (SCM_RIGHTS), and shared memory passed as an fd —
 * what a vhost-user backend needs (QEMU's docs/interop/vhost-user.rst: memory regions and eventfds arrive as
 * ancillary data) and Deno's own sockets cannot do. Every descriptor received is owned by the caller; a message
 * with more than the caller takes, or with control data that is not SCM_RIGHTS, is refused and its descriptors
 * closed, so a hostile peer cannot leak them into this process.
 * @module
 */
import { check, check64, cstr, MAP_SHARED, native, NativeError, PROT_RW } from "./lib.ts";
import { irqWaiter } from "./irq.ts";
import type { FdAcceptor, FdChannel, FdOps, SharedMapping } from "../hal/fds.ts";

/** The most descriptors one message may carry (the shim's limit; vhost-user sends at most 8). */
export const MAX_FDS = 16;

/** A connected Unix stream socket that sends and receives descriptors with its bytes. */
export class FdSocket implements FdChannel {
  #fd: number;
  // Made once: receive runs per message and allocates nothing of its own.
  readonly #fds = new Int32Array(MAX_FDS);
  readonly #nfds = new Uint32Array(1);
  readonly #out = new Int32Array(MAX_FDS);

  /** Wraps connected socket `fd` (owned from now on). */
  constructor(fd: number) {
    this.#fd = fd;
  }

  /** Connect to the listening socket at `path`. */
  static connect(path: string): FdSocket {
    return new FdSocket(check(`connect ${path}`, native().pvdrv_unix_connect(cstr(path))));
  }

  /** A connected pair (tests, in-process peers). */
  static pair(): [FdSocket, FdSocket] {
    const sv = new Int32Array(2);
    check("socketpair", native().pvdrv_socketpair(sv));
    return [new FdSocket(sv[0]), new FdSocket(sv[1])];
  }

  /** The descriptor (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  #live(): number {
    if (this.#fd < 0) throw new NativeError("unix socket", -9); // EBADF
    return this.#fd;
  }

  /** Send `data` with `fds` (still the caller's: the peer gets its own copies); returns the bytes sent. */
  send(data: Uint8Array, fds: readonly number[] = []): number {
    if (fds.length > MAX_FDS) {
      throw new RangeError(`at most ${MAX_FDS} descriptors per message, not ${fds.length}`);
    }
    for (let i = 0; i < fds.length; i++) this.#out[i] = fds[i];
    return check("sendmsg", native().pvdrv_send_fds(this.#live(), data, data.length, this.#out, fds.length));
  }

  /**
   * Receive up to `into.length` bytes (blocking until some arrive); the descriptors that came with them replace
   * the contents of `fds`, at most `maxFds` of them. Returns the bytes received: 0 when the peer closed.
   */
  recv(into: Uint8Array, fds: number[], maxFds: number = MAX_FDS): number {
    fds.length = 0;
    const r = native().pvdrv_recv_fds(this.#live(), into, into.length, this.#fds, maxFds, this.#nfds);
    if (r === -90) throw new NativeError(`message carried more than ${maxFds} descriptors`, r); // EMSGSIZE
    check("recvmsg", r);
    for (let i = 0; i < this.#nfds[0]; i++) fds.push(this.#fds[i]);
    return r;
  }

  /** Resolve when a receive would not block (data, descriptors or the peer's close are waiting). */
  readable(): Promise<void> {
    return irqWaiter().waitReadable(this.#live());
  }

  /** Block up to `timeoutMs` until a receive would not block; true when it would. */
  readableWithin(timeoutMs: number): boolean {
    return pollReadable(this.#live(), timeoutMs);
  }

  /** Close the socket (idempotent); a pending {@link readable} rejects. */
  close(): void {
    if (this.#fd < 0) return;
    irqWaiter().remove(this.#fd, true);
    this.#fd = -1;
  }
}

const pollFds = new Int32Array(3), pollRevents = new Int16Array(3);

function pollReadable(fd: number, timeoutMs: number, b = -1, c = -1): boolean {
  let n = 0;
  if (fd >= 0) pollFds[n++] = fd;
  if (b >= 0) pollFds[n++] = b;
  if (c >= 0) pollFds[n++] = c;
  pollRevents.fill(0);
  const r = native().pvdrv_poll_sync(pollFds, pollRevents, n, Math.max(0, Math.floor(timeoutMs)));
  if (r < 0 && r !== -4) check("poll", r); // -EINTR: a signal; nothing is readable yet
  return r > 0;
}

/** A listening Unix socket at a path; closing it removes the path. */
export class FdListener implements FdAcceptor {
  #fd: number;

  private constructor(fd: number, readonly path: string) {
    this.#fd = fd;
  }

  /** Listen at `path` (which must not exist: an old socket file is the caller's to remove). */
  static listen(path: string, backlog = 4): FdListener {
    return new FdListener(check(`listen on ${path}`, native().pvdrv_unix_listen(cstr(path), backlog)), path);
  }

  /** The descriptor (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  /** Accept a waiting connection, or null when none is (the listener never blocks). */
  accept(): FdSocket | null {
    if (this.#fd < 0) throw new NativeError(`listener ${this.path}`, -9);
    const r = native().pvdrv_unix_accept(this.#fd, 0);
    if (r === -11) return null; // EAGAIN: nothing waiting
    return new FdSocket(check(`accept on ${this.path}`, r));
  }

  /** Resolves when a connection is waiting. */
  readable(): Promise<void> {
    if (this.#fd < 0) throw new NativeError(`listener ${this.path}`, -9);
    return irqWaiter().waitReadable(this.#fd);
  }

  /** Wait for a connection and accept it. */
  async next(): Promise<FdSocket> {
    for (;;) {
      await irqWaiter().waitReadable(this.#fd);
      const s = this.accept();
      if (s) return s;
    }
  }

  /** Stop listening and remove the path (idempotent); a pending {@link readable} rejects. */
  close(): void {
    if (this.#fd < 0) return;
    irqWaiter().remove(this.#fd, true);
    this.#fd = -1;
    try {
      Deno.removeSync(this.path);
    } catch { /* already gone */ }
  }
}

/**
 * A front end's listening socket at `path` as an {@link FdAcceptor}, for a backend that is the client (QEMU's
 * `-chardev socket,server=on`): while no session runs, each accept tries to connect, at most every `retryMs`.
 */
export class FdConnector implements FdAcceptor {
  #next = 0;
  #closed = false;

  /** Connects to `path`. */
  constructor(readonly path: string, readonly retryMs = 1000) {}

  /** A new connection, or null (not yet time to retry, or the front end is not listening). */
  accept(): FdChannel | null {
    const now = performance.now();
    if (this.#closed || now < this.#next) return null;
    this.#next = now + this.retryMs;
    const r = native().pvdrv_unix_connect(cstr(this.path));
    return r >= 0 ? new FdSocket(r) : null; // ENOENT, ECONNREFUSED: not there yet
  }

  /** Resolves when it is time to try again. */
  readable(): Promise<void> {
    if (this.#closed) return Promise.reject(new NativeError(`connector ${this.path}`, -9));
    const wait = Math.max(0, this.#next - performance.now());
    return new Promise((r) => setTimeout(r, wait));
  }

  /** Stop connecting. */
  close(): void {
    this.#closed = true;
  }
}

/** A new anonymous shared file of `size` bytes (memfd), e.g. guest memory for a model; the caller closes it. */
export function memfd(name: string, size: number): number {
  return check(`memfd ${name}`, native().pvdrv_memfd(cstr(name), BigInt(size)));
}

/** Close a descriptor received or made here. */
export function closeFd(fd: number): void {
  native().pvdrv_close(fd);
}

// A mapping dropped with unmap() keeps anonymous memory at its address so stale views read zeros; the address
// range itself is given back when the last view of it is collected.
const released = new FinalizationRegistry<{ ptr: Deno.PointerObject; size: number }>((m) => {
  native().pvdrv_munmap(m.ptr, BigInt(m.size));
});

/** `size` bytes of shared file `fd` from `offset`, mapped read-write (vhost-user memory regions). */
export class FdMapping implements SharedMapping {
  /** The mapped bytes. */
  readonly bytes: Uint8Array;
  #ptr: Deno.PointerObject | null;

  /** Map them (the fd may be closed afterwards: the mapping keeps the file). */
  constructor(fd: number, readonly size: number, offset = 0) {
    if (!Number.isSafeInteger(size) || size <= 0 || !Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`cannot map ${size} bytes at offset ${offset}`);
    }
    const n = native();
    const addr = check64(
      `mmap fd ${fd}`,
      n.pvdrv_mmap(BigInt(size), PROT_RW, MAP_SHARED, fd, BigInt(offset)),
    );
    this.#ptr = n.pvdrv_ptr(addr)!;
    const buf = Deno.UnsafePointerView.getArrayBuffer(this.#ptr, size);
    this.bytes = new Uint8Array(buf);
    released.register(buf, { ptr: this.#ptr, size });
  }

  /**
   * Let go of the file's pages now (idempotent). Views of {@link bytes} stay valid memory, reading zeros, so a
   * reference kept past this point can never fault the process.
   */
  unmap(): void {
    if (!this.#ptr) return;
    check("remap", native().pvdrv_remap_anon(this.#ptr, BigInt(this.size)));
    this.#ptr = null;
  }
}

/** {@link FdOps} on Linux: mmap, eventfd reads and writes, and the process's one poll waiter. */
export const LINUX_FD_OPS: FdOps = {
  map(fd: number, size: number, offset: number): SharedMapping {
    // A region past the file's end would fault (SIGBUS) when touched: refuse it before mapping.
    const have = Number(check64(`fstat fd ${fd}`, native().pvdrv_fd_size(fd)));
    if (offset + size > have) {
      throw new NativeError(`fd ${fd} holds ${have} bytes, not ${size} from offset ${offset}`, -22);
    }
    return new FdMapping(fd, size, offset);
  },
  nonBlocking(fd: number): void {
    check(`fcntl fd ${fd}`, native().pvdrv_fd_nonblock(fd));
  },
  signal(fd: number): void {
    check("eventfd write", native().pvdrv_eventfd_signal(fd));
  },
  drain(fd: number): boolean {
    return check("eventfd read", native().pvdrv_eventfd_drain(fd)) === 1;
  },
  waitReadable: (fd: number): Promise<void> => irqWaiter().waitReadable(fd),
  waitAnySync: (a: number, b: number, c: number, timeoutMs: number): boolean =>
    pollReadable(a, timeoutMs, b, c),
  close(fd: number): void {
    if (fd >= 0) irqWaiter().remove(fd, true);
  },
};
