/**
 * The seam for descriptors a peer passes: a message channel whose messages carry file descriptors (a Unix socket
 * with SCM_RIGHTS), shared memory mapped from a passed descriptor, and eventfds a peer kicks or is called on. A
 * vhost-user backend (drivers/virtio/vhost_user.ts) sees only these; ffi/unix.ts implements them for Linux, and a
 * test can hand the backend an in-process front end over a socket pair and memfds.
 * @module
 */

/** A connected message stream whose messages may carry descriptors. */
export interface FdChannel {
  /** The descriptor (for a sleep that also watches it); -1 once closed. */
  readonly fd: number;
  /**
   * Receive up to `into.length` bytes; the descriptors that came with them (now the caller's) replace `fds`, at most
   * `maxFds` (more is an error and all are closed). Returns the bytes received, 0 when the peer closed.
   */
  recv(into: Uint8Array, fds: number[], maxFds: number): number;
  /** Send `data` with copies of `fds`; returns the bytes sent. */
  send(data: Uint8Array, fds?: readonly number[]): number;
  /** Resolves when a receive would not block. */
  readable(): Promise<void>;
  /** Block up to `timeoutMs` until a receive would not block; true when it would. */
  readableWithin(timeoutMs: number): boolean;
  /** Close the channel (idempotent). */
  close(): void;
}

/** Shared memory mapped from a passed descriptor. */
export interface SharedMapping {
  /** The mapped bytes. */
  readonly bytes: Uint8Array;
  /** Let go of the memory now (idempotent); views of {@link bytes} stay valid memory and read zeros. */
  unmap(): void;
}

/** What a backend does with the descriptors a peer passed it. */
export interface FdOps {
  /** Map `size` bytes of `fd` from `offset`, shared and read-write; refused unless the file holds them all. */
  map(fd: number, size: number, offset: number): SharedMapping;
  /** Make `fd` non-blocking, so a peer's pipe posing as an eventfd can never block the process. */
  nonBlocking(fd: number): void;
  /** Add 1 to eventfd `fd` (a call or error notification to the peer). */
  signal(fd: number): void;
  /** Consume eventfd `fd`'s counter; true when it was non-zero (a kick came). */
  drain(fd: number): boolean;
  /** Resolves when `fd` is readable. */
  waitReadable(fd: number): Promise<void>;
  /** Block up to `timeoutMs` until one of `a`, `b`, `c` (-1: unused) is readable; true when one is. */
  waitAnySync(a: number, b: number, c: number, timeoutMs: number): boolean;
  /** Stop waiting on `fd` and close it (idempotent for -1). */
  close(fd: number): void;
}

/** A listening endpoint that hands out channels (a Unix socket a front end connects to). */
export interface FdAcceptor {
  /** A waiting connection, or null when none is (never blocks). */
  accept(): FdChannel | null;
  /** Resolves when a connection is waiting. */
  readable(): Promise<void>;
  /** Stop listening (idempotent). */
  close(): void;
}
