/**
 * pvdrv's one error type. Every error pvdrv raises on purpose is a {@link PvdrvError}; its `kind` says which part
 * of the stack refused, so callers branch on `e.kind` (or `instanceof` one of the named subclasses) and the
 * command-line tools print the message alone, never a stack trace.
 * @module
 */

/** Which part of the stack raised a {@link PvdrvError}. */
export type ErrorKind =
  /** A system call failed (the error carries `errno`). */
  | "native"
  /** A register or memory access outside its region. */
  | "bounds"
  /** PCI config space that is malformed or inconsistent. */
  | "pci-config"
  /** A refused bind (the device carries this machine's network, or is not one pvdrv drives). */
  | "bind"
  /** A virtio device that refused or broke the handshake. */
  | "virtio"
  /** A virtqueue the device broke (the queue stays unusable). */
  | "virtqueue"
  /** A Xen shared ring the backend broke. */
  | "ring"
  /** xenstore refused a request or holds a bad value (the error carries the xenstore `code`). */
  | "xenstore"
  /** A NIC used wrongly: closed, disconnected, bad queue, buffer not held. */
  | "nic"
  /** A disk used wrongly (closed, bad queue, a request outside the disk or its limits) or an I/O error. */
  | "disk"
  /** DMA memory that could not be had, or a device address outside it. */
  | "dma"
  /** A device that could not be opened or used through VFIO or UIO (binding, groups, regions, vectors). */
  | "device"
  /** A Xen interface (gntalloc, evtchn, xenbus, the guest agent's helpers) refused or ran out. */
  | "xen"
  /** An application on a NIC (traffic generation, forwarding) gave up: the device or the peer stopped. */
  | "app"
  /** A vhost-user front-end (QEMU) sent a message the backend refuses (size, count, range, order). */
  | "vhost-user"
  /** The QEMU or Xen lab failed. */
  | "lab"
  /** Bad command-line input. */
  | "usage";

/** Options of a {@link PvdrvError}. */
export interface PvdrvErrorOptions {
  /** The error that caused this one. */
  cause?: unknown;
  /** A symbolic code (an errno name such as "ETIMEDOUT", a xenstore error). */
  code?: string;
}

/** An error pvdrv raised on purpose: a clear message and the kind of failure. */
export class PvdrvError extends Error {
  /** Which part of the stack refused. */
  readonly kind: ErrorKind;
  /** A symbolic code where one applies ("ENOENT", "ETIMEDOUT", ...), else "". */
  readonly code: string;
  /** Creates the error; `name` is the concrete class's name. */
  constructor(kind: ErrorKind, message: string, opts: PvdrvErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.kind = kind;
    this.code = opts.code ?? "";
    this.name = new.target.name;
  }
}

/** True when `e` is a {@link PvdrvError} (of `kind`, when given). */
export function isPvdrvError(e: unknown, kind?: ErrorKind): e is PvdrvError {
  return e instanceof PvdrvError && (kind === undefined || e.kind === kind);
}
