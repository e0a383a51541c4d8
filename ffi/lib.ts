/**
 * The one `Deno.dlopen` table for pvdrv's native shim (native/pvdrv.c), and its build step.
 *
 * Every symbol is fast-path compatible: pointers, u8–u32/i32 and BigInt-typed 64-bit values only.
 * @module
 */

import { PvdrvError } from "../hal/errors.ts";

const ABI_VERSION = 8;

const SYMBOLS = {
  pvdrv_abi_version: { parameters: [], result: "u32" },
  pvdrv_read8: { parameters: ["pointer", "u32"], result: "u8" },
  pvdrv_read16: { parameters: ["pointer", "u32"], result: "u16" },
  pvdrv_read32: { parameters: ["pointer", "u32"], result: "u32" },
  pvdrv_write8: { parameters: ["pointer", "u32", "u8"], result: "void" },
  pvdrv_write16: { parameters: ["pointer", "u32", "u16"], result: "void" },
  pvdrv_write32: { parameters: ["pointer", "u32", "u32"], result: "void" },
  pvdrv_write64: { parameters: ["pointer", "u32", "u32", "u32"], result: "void" },
  pvdrv_read64_lo: { parameters: ["pointer", "u32"], result: "u32" },
  pvdrv_read64_hi: { parameters: [], result: "u32" },
  pvdrv_mb: { parameters: [], result: "void" },
  pvdrv_wmb: { parameters: [], result: "void" },
  pvdrv_rmb: { parameters: [], result: "void" },
  pvdrv_open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  pvdrv_close: { parameters: ["i32"], result: "i32" },
  pvdrv_ioctl_ptr: { parameters: ["i32", "u32", "buffer"], result: "i32" },
  pvdrv_ioctl_int: { parameters: ["i32", "u32", "u32"], result: "i32" },
  pvdrv_read: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  pvdrv_write: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // The same calls on the thread pool, for an fd whose other end this process serves (an NBD handshake).
  pvdrv_read_async: {
    name: "pvdrv_read",
    parameters: ["i32", "buffer", "u32"],
    result: "i32",
    nonblocking: true,
  },
  pvdrv_write_async: {
    name: "pvdrv_write",
    parameters: ["i32", "buffer", "u32"],
    result: "i32",
    nonblocking: true,
  },
  // An ioctl that blocks until the device is done with it (NBD_DO_IT), off the JS thread.
  pvdrv_ioctl_int_async: {
    name: "pvdrv_ioctl_int",
    parameters: ["i32", "u32", "u32"],
    result: "i32",
    nonblocking: true,
  },
  pvdrv_unix_connect: { parameters: ["buffer"], result: "i32" },
  pvdrv_pio_read: { parameters: ["i32", "u32", "u32", "u32"], result: "u32" },
  pvdrv_pio_write: { parameters: ["i32", "u32", "u32", "u32", "u32"], result: "i32" },
  pvdrv_pio_last_status: { parameters: [], result: "i32" },
  pvdrv_eventfd: { parameters: ["u32", "i32"], result: "i32" },
  pvdrv_eventfd_drain: { parameters: ["i32"], result: "i32" },
  pvdrv_eventfd_signal: { parameters: ["i32"], result: "i32" },
  pvdrv_poll: { parameters: ["buffer", "buffer", "u32", "i32"], result: "i32", nonblocking: true },
  // The same poll() on the calling thread: a receive loop that sleeps in the kernel until its interrupt.
  pvdrv_poll_sync: { name: "pvdrv_poll", parameters: ["buffer", "buffer", "u32", "i32"], result: "i32" },
  pvdrv_mmap: { parameters: ["u64", "i32", "i32", "i32", "u64"], result: "i64" },
  pvdrv_munmap: { parameters: ["pointer", "u64"], result: "i32" },
  pvdrv_ptr: { parameters: ["u64"], result: "pointer" },
  pvdrv_addr: { parameters: ["pointer"], result: "u64" },
  pvdrv_dma_alloc: { parameters: ["u64", "i32"], result: "i64" },
  pvdrv_virt_to_phys: { parameters: ["pointer"], result: "i64" },
  pvdrv_unix_listen: { parameters: ["buffer", "i32"], result: "i32" },
  pvdrv_unix_accept: { parameters: ["i32", "i32"], result: "i32" },
  pvdrv_socketpair: { parameters: ["buffer"], result: "i32" },
  pvdrv_send_fds: { parameters: ["i32", "buffer", "u32", "buffer", "u32"], result: "i32" },
  pvdrv_recv_fds: { parameters: ["i32", "buffer", "u32", "buffer", "u32", "buffer"], result: "i32" },
  pvdrv_memfd: { parameters: ["buffer", "u64"], result: "i32" },
  pvdrv_remap_anon: { parameters: ["pointer", "u64"], result: "i32" },
  pvdrv_fd_size: { parameters: ["i32"], result: "i64" },
  pvdrv_fd_nonblock: { parameters: ["i32"], result: "i32" },
  pvdrv_udp_link: { parameters: ["u32", "u32", "u32", "u32"], result: "i32" },
  pvdrv_pin_thread: { parameters: ["i32", "u32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The bound native symbols. */
export type Native = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const SOURCE = new URL("../native/pvdrv.c", import.meta.url);

/** Per-user cache for shims built from a source pvdrv cannot build next to (read-only or remote imports). */
function cacheDir(): string {
  const base = Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME") ?? "/tmp"}/.cache`;
  return `${base}/pvdrv`;
}

/** FNV-1a of the source, so a cached shim is rebuilt whenever the C source changes. */
function sourceTag(src: Uint8Array): string {
  let h = 0x811c9dc5;
  for (const b of src) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

function writable(dir: string): boolean {
  try {
    Deno.mkdirSync(dir, { recursive: true });
    const probe = `${dir}/.pvdrv-write-test-${Deno.pid}`;
    Deno.writeTextFileSync(probe, "");
    Deno.removeSync(probe);
    return true;
  } catch {
    return false;
  }
}

/** The C source when this module was imported from the file system, else null (a remote import). */
function localSource(): string | null {
  return SOURCE.protocol === "file:" ? SOURCE.pathname : null;
}

/**
 * Where the shared library is (or will be built): PVDRV_LIB when set; build/libpvdrv.so in the pvdrv folder when
 * pvdrv is a local checkout and that build is current or can be written; otherwise a per-user cache keyed by the
 * source (its hash, or its URL for a remote import), so a project that imports mod.ts from a read-only folder or
 * over the network still finds (or builds) its shim.
 */
export function libraryPath(): string {
  const env = Deno.env.get("PVDRV_LIB");
  if (env) return env;
  const src = localSource();
  if (src) {
    const build = src.replace(/native\/pvdrv\.c$/, "build"), lib = `${build}/libpvdrv.so`;
    // A checkout's own build is used when it is current, even on a read-only mount (the lab guest's 9p share).
    if (!isStale(lib, src) || writable(build)) return lib;
    return `${cacheDir()}/libpvdrv-${ABI_VERSION}-${sourceTag(Deno.readFileSync(src))}.so`;
  }
  return `${cacheDir()}/libpvdrv-${ABI_VERSION}-${sourceTag(new TextEncoder().encode(SOURCE.href))}.so`;
}

function mtime(path: string | URL): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return -1;
  }
}

/** True when `output` is missing or older than `source`. */
export function isStale(output: string | URL, source: string | URL): boolean {
  const out = mtime(output);
  return out < 0 || mtime(source) > out;
}

/** True when the library (at `lib`, default {@link libraryPath}) is missing or older than its C source. */
export function needsBuild(lib: string = libraryPath()): boolean {
  const src = localSource();
  return src ? isStale(lib, src) : mtime(lib) < 0;
}

/**
 * Compile native/pvdrv.c into the shared library with the system C compiler (`CC`, default `cc`). The compiler is
 * not installed here: `deno task build` and the labs install gcc with apt when it is missing.
 */
export function buildNative(opts: { force?: boolean; quiet?: boolean } = {}): string {
  const out = libraryPath();
  if (!opts.force && !needsBuild(out)) return out;
  const src = localSource();
  if (!src) {
    throw new PvdrvError(
      "native",
      `pvdrv was imported from ${SOURCE.origin}: fetch and build its shim once with 'await prepareNative()' ` +
        `(or set PVDRV_LIB to a built libpvdrv.so)`,
    );
  }
  compile(src, out, opts.quiet ?? false);
  return out;
}

/**
 * Make sure the shim exists, fetching the C source first when pvdrv was imported over the network (JSR, https).
 * Local imports need no call: the shim is built on first use.
 */
export async function prepareNative(): Promise<string> {
  if (localSource()) return buildNative({ quiet: true });
  const out = libraryPath();
  if (mtime(out) >= 0) return out;
  const res = await fetch(SOURCE);
  if (!res.ok) throw new PvdrvError("native", `cannot fetch ${SOURCE.href}: HTTP ${res.status}`);
  const dir = cacheDir();
  Deno.mkdirSync(dir, { recursive: true });
  const src = `${dir}/pvdrv-${Deno.pid}.c`;
  Deno.writeFileSync(src, new Uint8Array(await res.arrayBuffer()));
  try {
    compile(src, out, true);
  } finally {
    Deno.removeSync(src);
  }
  return out;
}

function compile(src: string, out: string, quiet: boolean): void {
  Deno.mkdirSync(out.slice(0, out.lastIndexOf("/")), { recursive: true });
  const cc = Deno.env.get("CC") ?? "cc";
  const tmp = `${out}.${Deno.pid}.tmp`;
  const args = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", tmp, src];
  let res: Deno.CommandOutput;
  try {
    res = new Deno.Command(cc, { args, stdout: "piped", stderr: "piped" }).outputSync();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new PvdrvError(
        "native",
        `cannot run the C compiler '${cc}' to build ${out}: install gcc (apt-get install gcc libc6-dev, ` +
          `or 'deno task build' as root does it)`,
      );
    }
    throw e;
  }
  if (!res.success) {
    throw new PvdrvError("native", `building ${out} failed:\n${new TextDecoder().decode(res.stderr)}`);
  }
  Deno.renameSync(tmp, out);
  if (!quiet) console.error(`pvdrv: built ${out}`);
}

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

/** Open (building first if needed) the native shim; the same table is shared by the whole process. */
export function native(): Native {
  if (lib) return lib.symbols;
  const path = buildNative({ quiet: true }); // resolves the path once; compiles only when missing or stale
  lib = Deno.dlopen(path, SYMBOLS);
  const v = lib.symbols.pvdrv_abi_version();
  if (v !== ABI_VERSION) {
    lib.close();
    lib = undefined;
    throw new PvdrvError("native", `${path} has ABI ${v}, expected ${ABI_VERSION}: run 'deno task build'`);
  }
  return lib.symbols;
}

const enc = new TextEncoder();

/** A NUL-terminated C string in a fresh buffer. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(s.length * 3 + 1);
  const { written } = enc.encodeInto(s, b);
  return b.subarray(0, written + 1);
}

/** Error carrying the errno a native wrapper returned. */
export class NativeError extends PvdrvError {
  /** The positive errno value. */
  readonly errno: number;
  /** Creates the error for `what` failing with `-errno` (a negative return value). */
  constructor(what: string, negErrno: number) {
    super("native", `${what}: ${errnoName(-negErrno)}`, { code: errnoName(-negErrno).split(" ")[0] });
    this.errno = -negErrno;
  }
}

const ERRNO: Record<number, string> = {
  1: "EPERM (operation not permitted)",
  2: "ENOENT (no such file or directory)",
  5: "EIO (I/O error)",
  9: "EBADF (bad file descriptor)",
  11: "EAGAIN (try again)",
  12: "ENOMEM (out of memory)",
  13: "EACCES (permission denied)",
  14: "EFAULT (bad address)",
  16: "EBUSY (device or resource busy)",
  17: "EEXIST (exists)",
  19: "ENODEV (no such device)",
  22: "EINVAL (invalid argument)",
  25: "ENOTTY (inappropriate ioctl for device)",
  28: "ENOSPC (no space left)",
  32: "EPIPE (the peer closed the socket)",
  36: "ENAMETOOLONG (path too long for a Unix socket)",
  74: "EBADMSG (control data that is not SCM_RIGHTS)",
  90: "EMSGSIZE (message too long)",
  95: "EOPNOTSUPP (operation not supported)",
  98: "EADDRINUSE (address in use)",
  104: "ECONNRESET (connection reset by peer)",
  111: "ECONNREFUSED (connection refused)",
};

/** Human-readable errno name. */
export function errnoName(errno: number): string {
  return ERRNO[errno] ?? `errno ${errno}`;
}

/** Throw a NativeError when a wrapper returned a negative value; return it otherwise. */
export function check(what: string, r: number): number {
  if (r < 0) throw new NativeError(what, r);
  return r;
}

/** Like {@link check} for 64-bit (BigInt) returns. */
export function check64(what: string, r: bigint): bigint {
  if (r < 0n) throw new NativeError(what, Number(r));
  return r;
}

/** open(2) flags pvdrv uses. */
export const O_RDWR = 2, O_NONBLOCK = 0o4000;
/** mmap(2) protection and flags pvdrv uses. */
export const PROT_RW = 3, MAP_SHARED = 1;

/** What to tell the user when an open fails the common ways. */
export interface OpenHints {
  /** When the path does not exist (ENOENT): which module or driver to load. */
  missing?: string;
  /** When access is refused (EACCES/EPERM). */
  denied?: string;
}

/** open(2) through the shim: the fd, or a {@link NativeError} naming the path and what to do about it. */
export function openPath(path: string, flags = O_RDWR, hints: OpenHints = {}): number {
  const r = native().pvdrv_open(cstr(path), flags, 0);
  if (r === -2) throw new NativeError(`${path} is missing${hints.missing ? `: ${hints.missing}` : ""}`, r);
  if (r === -13 || r === -1) throw new NativeError(`opening ${path} ${hints.denied ?? "needs root"}`, r);
  return check(`opening ${path}`, r);
}

/**
 * An ioctl argument structure: little-endian fields written and read by byte offset, passed to the kernel by
 * pointer. Layouts come from the kernel headers each caller cites.
 */
export class IoctlStruct {
  /** The bytes handed to the kernel. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  readonly #dv: DataView;
  /** `size` zeroed bytes; with `argsz`, the first u32 holds the size (VFIO's convention). */
  constructor(size: number, argsz = false) {
    this.bytes = new Uint8Array(size);
    this.#dv = new DataView(this.bytes.buffer);
    if (argsz) this.#dv.setUint32(0, size, true);
  }
  /** Write a u16 at `off`. */
  u16(off: number, v: number): this {
    this.#dv.setUint16(off, v, true);
    return this;
  }
  /** Write a u32 at `off`. */
  u32(off: number, v: number): this {
    this.#dv.setUint32(off, v >>> 0, true);
    return this;
  }
  /** Write an i32 at `off`. */
  i32(off: number, v: number): this {
    this.#dv.setInt32(off, v, true);
    return this;
  }
  /** Write a u64 at `off`. */
  u64(off: number, v: bigint | number): this {
    this.#dv.setBigUint64(off, BigInt(v), true);
    return this;
  }
  /** Read the u32 at `off`. */
  getU32(off: number): number {
    return this.#dv.getUint32(off, true);
  }
  /** Read the u64 at `off`. */
  getU64(off: number): bigint {
    return this.#dv.getBigUint64(off, true);
  }
  /** ioctl(fd, request, this): the raw result (negative errno on failure). */
  call(fd: number, request: number): number {
    return native().pvdrv_ioctl_ptr(fd, request, this.bytes);
  }
  /** ioctl(fd, request, this), throwing a {@link NativeError} named `what` on failure. */
  ioctl(fd: number, request: number, what: string): number {
    return check(what, this.call(fd, request));
  }
}
