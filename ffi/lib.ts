/**
 * The one `Deno.dlopen` table for pvdrv's native shim (native/pvdrv.c), and its build step.
 *
 * Every symbol is fast-path compatible: pointers, u8–u32/i32 and BigInt-typed 64-bit values only.
 * @module
 */

const ABI_VERSION = 3;

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
  pvdrv_pread: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  pvdrv_pwrite: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  pvdrv_pio_read: { parameters: ["i32", "u32", "u32", "u32"], result: "u32" },
  pvdrv_pio_write: { parameters: ["i32", "u32", "u32", "u32", "u32"], result: "i32" },
  pvdrv_pio_last_status: { parameters: [], result: "i32" },
  pvdrv_eventfd: { parameters: ["u32", "i32"], result: "i32" },
  pvdrv_eventfd_drain: { parameters: ["i32"], result: "i32" },
  pvdrv_eventfd_signal: { parameters: ["i32"], result: "i32" },
  pvdrv_poll: { parameters: ["buffer", "buffer", "u32", "i32"], result: "i32", nonblocking: true },
  pvdrv_mmap: { parameters: ["u64", "i32", "i32", "i32", "u64"], result: "i64" },
  pvdrv_munmap: { parameters: ["pointer", "u64"], result: "i32" },
  pvdrv_ptr: { parameters: ["u64"], result: "pointer" },
  pvdrv_addr: { parameters: ["pointer"], result: "u64" },
  pvdrv_dma_alloc: { parameters: ["u64", "i32"], result: "i64" },
  pvdrv_virt_to_phys: { parameters: ["pointer"], result: "i64" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The bound native symbols. */
export type Native = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const ROOT = new URL("../", import.meta.url);
const SOURCE = new URL("native/pvdrv.c", ROOT);

/** Path of the built shared library (override with PVDRV_LIB). */
export function libraryPath(): string {
  return Deno.env.get("PVDRV_LIB") ?? new URL("build/libpvdrv.so", ROOT).pathname;
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

/** True when the library is missing or older than its C source. */
export function needsBuild(): boolean {
  return isStale(libraryPath(), SOURCE);
}

/** Compile native/pvdrv.c into the shared library with the system C compiler. */
export function buildNative(opts: { force?: boolean; quiet?: boolean } = {}): string {
  const out = libraryPath();
  if (!opts.force && !needsBuild()) return out;
  const dir = out.slice(0, out.lastIndexOf("/"));
  Deno.mkdirSync(dir, { recursive: true });
  const cc = Deno.env.get("CC") ?? "cc";
  const args = [
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-shared",
    "-fPIC",
    "-o",
    out + ".tmp",
    SOURCE.pathname,
  ];
  const compile = (): Deno.CommandOutput | null => {
    try {
      return new Deno.Command(cc, { args, stdout: "piped", stderr: "piped" }).outputSync();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
  };
  let res = compile();
  if (!res && installCompiler()) res = compile();
  if (!res) throw new Error(`cannot run the C compiler '${cc}' to build ${out} (apt-get install gcc)`);
  if (!res.success) {
    throw new Error(`building ${out} failed:\n${new TextDecoder().decode(res.stderr)}`);
  }
  Deno.renameSync(out + ".tmp", out);
  if (!opts.quiet) console.error(`pvdrv: built ${out}`);
  return out;
}

/** As root on Debian/Ubuntu, install gcc and the C library headers with apt; false when that is not possible. */
function installCompiler(): boolean {
  if (Deno.uid() !== 0) return false;
  console.error("pvdrv: no C compiler: installing gcc and libc6-dev with apt-get");
  const apt = (args: string[]) => {
    try {
      return new Deno.Command("apt-get", {
        args,
        stdout: "null",
        stderr: "inherit",
        env: { DEBIAN_FRONTEND: "noninteractive" },
      })
        .outputSync().success;
    } catch {
      return false;
    }
  };
  return apt(["update", "-qq"]) &&
    apt(["install", "-y", "-qq", "--no-install-recommends", "gcc", "libc6-dev"]);
}

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

/** Open (building first if needed) the native shim; the same table is shared by the whole process. */
export function native(): Native {
  if (lib) return lib.symbols;
  if (needsBuild()) buildNative({ quiet: true });
  lib = Deno.dlopen(libraryPath(), SYMBOLS);
  const v = lib.symbols.pvdrv_abi_version();
  if (v !== ABI_VERSION) {
    lib.close();
    lib = undefined;
    throw new Error(`${libraryPath()} has ABI ${v}, expected ${ABI_VERSION}: run 'deno task build'`);
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
export class NativeError extends Error {
  /** The positive errno value. */
  readonly errno: number;
  /** Creates the error for `what` failing with `-errno` (a negative return value). */
  constructor(what: string, negErrno: number) {
    super(`${what}: ${errnoName(-negErrno)}`);
    this.errno = -negErrno;
    this.name = "NativeError";
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
  95: "EOPNOTSUPP (operation not supported)",
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
