/**
 * What the machine's own storage uses: mounted filesystems (`/proc/self/mountinfo`, by device number), swap
 * (`/proc/swaps`), and block devices other devices are built on (sysfs `holders/`: LVM, md, dm-crypt). `bind`
 * refuses a disk any of its partitions is in use by, `--force` or not, and `probe` marks it active: taking it from
 * the kernel would pull a filesystem out from under the machine.
 * @module
 */
import { listDir, readText, SYSFS } from "../ffi/sysfs.ts";

/** The storage the running machine depends on. */
export interface MachineDisks {
  /** Mounted filesystems: device number ("major:minor") and mount point; the root is the one at "/". */
  mounts: { dev: string; mountPoint: string }[];
  /** Swap devices and files, as named in /proc/swaps. */
  swaps: string[];
}

/** An empty view (nothing mounted), for fixture trees. */
export function noMachineDisks(): MachineDisks {
  return { mounts: [], swaps: [] };
}

function readOr(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** Mounts from the text of /proc/self/mountinfo (fields: id parent major:minor root mount-point ...). */
export function parseMountinfo(text: string): { dev: string; mountPoint: string }[] {
  const out: { dev: string; mountPoint: string }[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    if (f.length >= 5 && /^\d+:\d+$/.test(f[2])) {
      out.push({ dev: f[2], mountPoint: f[4].replace(/\\040/g, " ") });
    }
  }
  return out;
}

/** Swap names from the text of /proc/swaps (a header line, then "Filename Type Size Used Priority"). */
export function parseSwaps(text: string): string[] {
  return text.split("\n").slice(1).map((l) => l.trim().split(/\s+/)[0]).filter((n) => n);
}

/** Read the running machine's view (`procRoot` for tests). */
export function readMachineDisks(procRoot = "/proc"): MachineDisks {
  return {
    mounts: parseMountinfo(readOr(`${procRoot}/self/mountinfo`)),
    swaps: parseSwaps(readOr(`${procRoot}/swaps`)),
  };
}

/** A disk and its partitions as sysfs shows them under `root`/block/`disk`: names and device numbers. */
export function diskParts(disk: string, root = SYSFS): { name: string; dev: string; holders: string[] }[] {
  const dir = `${root}/block/${disk}`;
  const one = (name: string, d: string) => ({
    name,
    dev: readText(`${d}/dev`) ?? "",
    holders: listDir(`${d}/holders`),
  });
  const parts = [one(disk, dir)];
  for (const sub of listDir(dir)) {
    if (readText(`${dir}/${sub}/partition`) !== null) parts.push(one(sub, `${dir}/${sub}`));
  }
  return parts;
}

/** Why `disk` must never be taken from the kernel (its root, a mount, swap, a holder), or null. */
export function diskUseReason(disk: string, root: string, m: MachineDisks): string | null {
  const parts = diskParts(disk, root);
  const rootDev = m.mounts.find((x) => x.mountPoint === "/")?.dev;
  for (const p of parts) {
    if (p.dev && p.dev === rootDev) return `${p.name} holds the root filesystem`;
  }
  for (const p of parts) {
    const mnt = p.dev ? m.mounts.find((x) => x.dev === p.dev) : undefined;
    if (mnt) return `${p.name} is mounted on ${mnt.mountPoint}`;
    if (m.swaps.some((s) => s === `/dev/${p.name}`)) return `${p.name} is used as swap`;
    if (p.holders.length) return `${p.name} is held by ${p.holders.join(", ")}`;
  }
  return null;
}
