/**
 * A minimal writer for the "newc" cpio format the kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst): 110-byte ASCII header, name, data, 4-byte padding.
 * @module
 */

/** One archive member. */
export type CpioEntry =
  | { path: string; type: "dir"; mode?: number }
  | { path: string; type: "file"; data: Uint8Array; mode?: number }
  | { path: string; type: "symlink"; target: string }
  | { path: string; type: "char"; major: number; minor: number; mode?: number };

const enc = new TextEncoder();

function hex8(n: number): string {
  return n.toString(16).padStart(8, "0");
}

/** Writes entries to a file, streaming (data of large members is written as is). */
export class CpioWriter {
  #f: Deno.FsFile;
  #ino = 1;
  #off = 0;
  constructor(path: string) {
    this.#f = Deno.openSync(path, { write: true, create: true, truncate: true });
  }

  #write(b: Uint8Array): void {
    let done = 0;
    while (done < b.length) done += this.#f.writeSync(b.subarray(done));
    this.#off += b.length;
  }

  #pad(): void {
    const p = (4 - (this.#off % 4)) % 4;
    if (p) this.#write(new Uint8Array(p));
  }

  /** Append one member. */
  add(e: CpioEntry): void {
    const name = enc.encode(e.path.replace(/^\/+/, "") + "\0");
    let mode: number, data: Uint8Array = new Uint8Array(0), major = 0, minor = 0;
    switch (e.type) {
      case "dir":
        mode = 0o040000 | (e.mode ?? 0o755);
        break;
      case "file":
        mode = 0o100000 | (e.mode ?? 0o644);
        data = e.data;
        break;
      case "symlink":
        mode = 0o120777;
        data = enc.encode(e.target);
        break;
      case "char":
        mode = 0o020000 | (e.mode ?? 0o600);
        major = e.major;
        minor = e.minor;
        break;
    }
    const fields = [
      this.#ino++,
      mode,
      0,
      0,
      e.type === "dir" ? 2 : 1,
      0,
      data.length,
      0,
      0,
      major,
      minor,
      name.length,
      0,
    ];
    this.#write(enc.encode("070701" + fields.map(hex8).join("")));
    this.#write(name);
    this.#pad();
    this.#write(data);
    this.#pad();
  }

  /** Write the trailer and close. */
  close(): void {
    this.#write(enc.encode("070701" + [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0].map(hex8).join("")));
    this.#write(enc.encode("TRAILER!!!\0"));
    this.#pad();
    this.#f.close();
  }
}

/**
 * Add a host directory tree under `at` (directories, regular files with their modes, symlinks; no devices).
 * `keep(relativePath)` can leave parts out.
 */
export function addTree(
  w: CpioWriter,
  dir: string,
  at = "",
  keep: (rel: string) => boolean = () => true,
): void {
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(`${dir}/${rel}`)) {
      const r = rel ? `${rel}/${e.name}` : e.name, host = `${dir}/${r}`, path = at ? `${at}/${r}` : r;
      if (!keep(r)) continue;
      const st = Deno.lstatSync(host);
      if (st.isSymlink) w.add({ path, type: "symlink", target: Deno.readLinkSync(host) });
      else if (st.isDirectory) {
        w.add({ path, type: "dir", mode: (st.mode ?? 0o755) & 0o7777 });
        walk(r);
      } else if (st.isFile) {
        w.add({ path, type: "file", data: Deno.readFileSync(host), mode: (st.mode ?? 0o644) & 0o7777 });
      }
    }
  };
  walk("");
}
