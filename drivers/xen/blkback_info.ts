/**
 * What a blkif backend says of itself and of the disk in xenstore (Xen public/io/blkif.h, "Backend XenBus
 * Nodes"), read and checked: every key is the backend's word, so each value is parsed strictly and bounded
 * before blkfront sizes anything with it; a bad one is a protocol error naming the key. The ring features are
 * there at InitWait; Linux blkback writes the disk's keys (sectors, info, sector-size, flush, discard) only as it
 * connects, so those are read once it is Connected (and again after a resize).
 * @module
 */
import { type XenStore, XenStoreError } from "./xenstore.ts";
import { BLKIF_SECTOR, VDISK } from "./blkif.ts";

/** What the backend offers for the rings (read at InitWait). */
export interface BlkbackRings {
  /** feature-max-indirect-segments (0: none). */
  maxIndirectSegments: number;
  /** max-ring-page-order (0: one page), capped at {@link MAX_RING_PAGE_ORDER}. */
  maxRingPageOrder: number;
  /** multi-queue-max-queues (1 without). */
  maxQueues: number;
}

/** The disk as the backend describes it (read once Connected). */
export interface BlkbackDisk {
  /** Size, in units of {@link BlkbackDisk.sectorSize}. */
  sectors: number;
  /** Logical sector size in bytes (a power of two, 512..65536; default 512). */
  sectorSize: number;
  /** Physical sector size (a multiple of sectorSize; default sectorSize). */
  physicalSectorSize: number;
  /** VDISK_READONLY in `info`: writes are refused. */
  readOnly: boolean;
  /** VDISK_CDROM in `info`. */
  cdrom: boolean;
  /** VDISK_REMOVABLE in `info`. */
  removable: boolean;
  /** feature-flush-cache. */
  flush: boolean;
  /** feature-barrier. */
  barrier: boolean;
  /** feature-discard. */
  discard: boolean;
  /** discard-granularity in bytes (default sectorSize). */
  discardGranularity: number;
  /** discard-secure. */
  discardSecure: boolean;
  /** feature-persistent. */
  persistent: boolean;
}

/** The largest ring-page-order blkfront uses (16 pages, 512 requests: blkback's own limit is 4). */
export const MAX_RING_PAGE_ORDER = 4;

/** Strict readers of one backend directory's keys. */
function keys(xs: XenStore, dir: string) {
  const key = (k: string) => xs.tryRead(`${dir}/${k}`);
  const bad = (k: string, v: string | null, why: string) =>
    new XenStoreError("EPROTO", `${dir}/${k} is '${v}': ${why}`);
  /** A decimal integer in lo..hi, or `dflt` when the key is absent (undefined: required). */
  const int = async (k: string, lo: number, hi: number, dflt?: number): Promise<number> => {
    const v = await key(k);
    if (v === null) {
      if (dflt === undefined) throw new XenStoreError("ENOENT", `${dir}/${k} is missing`);
      return dflt;
    }
    if (!/^\d{1,16}$/.test(v)) throw bad(k, v, "not a decimal integer");
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < lo || n > hi) throw bad(k, v, `outside ${lo}..${hi}`);
    return n;
  };
  const flag = async (k: string) => {
    const v = await key(k);
    if (v === null || v === "0") return false;
    if (v === "1") return true;
    throw bad(k, v, "not 0 or 1");
  };
  return { int, flag, bad };
}

/** The ring features of backend directory `dir`. */
export async function readBlkbackRings(xs: XenStore, dir: string): Promise<BlkbackRings> {
  const { int } = keys(xs, dir);
  return {
    maxIndirectSegments: await int("feature-max-indirect-segments", 0, 1 << 20, 0),
    maxRingPageOrder: Math.min(MAX_RING_PAGE_ORDER, await int("max-ring-page-order", 0, 31, 0)),
    maxQueues: await int("multi-queue-max-queues", 1, 256, 1),
  };
}

/** The disk keys of backend directory `dir` (sectors must be there: the backend has connected). */
export async function readBlkbackDisk(xs: XenStore, dir: string): Promise<BlkbackDisk> {
  const { int, flag, bad } = keys(xs, dir);
  const sectorSize = await int("sector-size", BLKIF_SECTOR, 65536, BLKIF_SECTOR);
  if (sectorSize & (sectorSize - 1)) throw bad("sector-size", String(sectorSize), "not a power of two");
  const physicalSectorSize = await int("physical-sector-size", sectorSize, 1 << 20, sectorSize);
  if (physicalSectorSize % sectorSize) {
    throw bad(
      "physical-sector-size",
      String(physicalSectorSize),
      `not a multiple of sector-size ${sectorSize}`,
    );
  }
  // The capacity in bytes must stay an exact JS number.
  const sectors = await int("sectors", 0, Math.floor(Number.MAX_SAFE_INTEGER / sectorSize));
  const info = await int("info", 0, 0xffff_ffff, 0);
  const discard = await flag("feature-discard");
  let discardGranularity = sectorSize;
  if (discard) {
    discardGranularity = await int("discard-granularity", 0, 1 << 30, sectorSize) || sectorSize;
    if (discardGranularity % sectorSize) {
      throw bad(
        "discard-granularity",
        String(discardGranularity),
        `not a multiple of sector-size ${sectorSize}`,
      );
    }
  }
  return {
    sectors,
    sectorSize,
    physicalSectorSize,
    readOnly: (info & VDISK.READONLY) !== 0,
    cdrom: (info & VDISK.CDROM) !== 0,
    removable: (info & VDISK.REMOVABLE) !== 0,
    flush: await flag("feature-flush-cache"),
    barrier: await flag("feature-barrier"),
    discard,
    discardGranularity,
    discardSecure: discard && await flag("discard-secure"),
    persistent: await flag("feature-persistent"),
  };
}
