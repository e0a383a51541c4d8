/**
 * An in-process virtio-blk device (virtio 1.2 §5.2) on the shared virtio-PCI device model: a RAM disk with a
 * volatile write cache (what a flush makes durable is kept apart, so tests see what would survive a power cut),
 * serial, discard and write-zeroes, and a device config of its own. It reads requests with the library's wire
 * module and device-side queue, and checks them as a device must. Tests can make it misbehave: wrong status
 * bytes, an unwritten status, bad used lengths, requests completed twice, capacity or blk_size changing.
 */
import { BLK_F, F, VIRTIO_ID } from "../../drivers/virtio/features.ts";
import { Chain } from "../../drivers/virtio/device_queue.ts";
import {
  BLK_CONFIG as CFG,
  BLK_DWZ_SEG,
  BLK_ID_BYTES,
  BLK_REQ_HDR,
  BLK_S,
  BLK_T,
  readBlkHeader,
  readDwzSegment,
  SECTOR,
} from "../../drivers/virtio/blk_wire.ts";
import { type PciModelOptions, VirtioPciModel } from "./virtio_pci_model.ts";

/** Model configuration. */
export interface BlkModelOptions extends PciModelOptions {
  /** Offered features (default: all pvdrv wants). */
  features?: bigint;
  /** Capacity in 512-byte sectors (default 8192: 4 MiB). */
  sectors?: number;
  /** blk_size (default 512). */
  blkSize?: number;
  /** physical_block_exp (default 3: 4 KiB physical blocks with 512-byte logical ones). */
  physExp?: number;
  /** seg_max (default 32). */
  segMax?: number;
  /** size_max (default 0: none). */
  sizeMax?: number;
  /** Request queues (config num_queues; default 2). */
  queues?: number;
  /** num_queues as the config reports it (default: queues). */
  configQueues?: number;
  /** writeback (default 1: a volatile cache). */
  writeback?: number;
  /** max_discard_sectors, max_write_zeroes_sectors (default 65536). */
  maxDiscardSectors?: number;
  /** discard_sector_alignment (default 8). */
  discardAlignment?: number;
  /** The serial GET_ID answers (default "pvdrv-model-disk"). */
  serial?: string;
}

/** One request the model served, for tests. */
export interface BlkRecord {
  /** Request type. */
  type: number;
  /** Sector. */
  sector: number;
  /** Data bytes (reads and writes). */
  bytes: number;
  /** Descriptors in the chain. */
  descriptors: number;
  /** Status written. */
  status: number;
}

/** The virtio-blk device model. */
export class VirtioBlkModel extends VirtioPciModel {
  /** The disk as reads see it (cache included). */
  disk: Uint8Array;
  /** What a flush made durable (the disk after a power cut). */
  durable: Uint8Array;
  /** Requests served, in order. */
  readonly served: BlkRecord[] = [];
  /** Status byte to write instead of the real one (hostile device), by request type; undefined: the real one. */
  statusFor: ((type: number) => number | undefined) | null = null;
  /** Complete requests without writing their status byte. */
  skipStatus = false;
  /** Report this used length instead of the real one. */
  usedLen: number | null = null;
  /** Complete each request twice (the second used element names a head no longer in flight). */
  completeTwice = false;
  /** Hold requests instead of completing them (tests complete them with {@link completeHeld}). */
  hold = false;
  readonly #held: { qi: number; head: number; len: number }[] = [];
  readonly #chain = new Chain();
  readonly #serial: string;

  constructor(opts: BlkModelOptions = {}) {
    const queues = opts.queues ?? 2;
    super(
      VIRTIO_ID.BLOCK,
      opts.features ??
        (F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | BLK_F.SEG_MAX | BLK_F.BLK_SIZE |
          BLK_F.TOPOLOGY |
          BLK_F.FLUSH | BLK_F.CONFIG_WCE | BLK_F.MQ | BLK_F.DISCARD | BLK_F.WRITE_ZEROES),
      queues,
      opts,
    );
    const sectors = opts.sectors ?? 8192;
    this.disk = new Uint8Array(sectors * SECTOR);
    this.durable = new Uint8Array(sectors * SECTOR);
    this.#serial = opts.serial ?? "pvdrv-model-disk";
    const dc = this.deviceConfig;
    this.#setCapacity(sectors);
    if (opts.sizeMax) dc.setUint32(CFG.SIZE_MAX, opts.sizeMax, true);
    dc.setUint32(CFG.SEG_MAX, opts.segMax ?? 32, true);
    dc.setUint32(CFG.BLK_SIZE, opts.blkSize ?? SECTOR, true);
    dc.setUint8(CFG.PHYSICAL_BLOCK_EXP, opts.physExp ?? 3);
    dc.setUint8(CFG.WRITEBACK, opts.writeback ?? 1);
    dc.setUint16(CFG.NUM_QUEUES, opts.configQueues ?? queues, true);
    dc.setUint32(CFG.MAX_DISCARD_SECTORS, opts.maxDiscardSectors ?? 65536, true);
    dc.setUint32(CFG.MAX_DISCARD_SEG, 1, true);
    dc.setUint32(CFG.DISCARD_SECTOR_ALIGNMENT, opts.discardAlignment ?? 8, true);
    dc.setUint32(CFG.MAX_WRITE_ZEROES_SECTORS, opts.maxDiscardSectors ?? 65536, true);
    dc.setUint32(CFG.MAX_WRITE_ZEROES_SEG, 1, true);
    dc.setUint8(CFG.WRITE_ZEROES_MAY_UNMAP, 1);
  }

  #setCapacity(sectors: number): void {
    const dc = this.deviceConfig;
    dc.setUint32(CFG.CAPACITY, sectors >>> 0, true);
    dc.setUint32(CFG.CAPACITY + 4, Math.floor(sectors / 0x1_0000_0000), true);
  }

  /** Grow or shrink the disk (QEMU's block_resize) and raise the configuration interrupt. */
  resize(sectors: number): void {
    const d = new Uint8Array(sectors * SECTOR), u = new Uint8Array(sectors * SECTOR);
    d.set(this.disk.subarray(0, d.length));
    u.set(this.durable.subarray(0, u.length));
    this.disk = d;
    this.durable = u;
    this.#setCapacity(sectors);
    this.configChanged();
  }

  /** Change blk_size under the driver (hostile) and raise the configuration interrupt. */
  changeBlockSize(n: number): void {
    this.deviceConfig.setUint32(CFG.BLK_SIZE, n, true);
    this.configChanged();
  }

  /** Complete every held request. */
  completeHeld(): number {
    const n = this.#held.length;
    for (const h of this.#held.splice(0)) this.pushUsed(h.qi, h.head, h.len);
    return n;
  }

  /** Serve every request the driver made available on queue `qi`. */
  protected serve(qi: number): number {
    if (!this.live(qi)) return 0;
    const dq = this.dq(qi), c = this.#chain;
    let n = 0;
    while (dq.take(c)) {
      const len = this.#serve(c);
      if (this.hold) this.#held.push({ qi, head: c.head, len });
      else {
        this.pushUsed(qi, c.head, this.usedLen ?? len);
        if (this.completeTwice) this.pushUsed(qi, c.head, len);
      }
      n++;
    }
    dq.publishAvailEvent();
    return n;
  }

  /** Serve one request chain (§5.2.6); returns the bytes written into the driver's buffers. */
  #serve(c: Chain): number {
    // The header is device-readable and the status byte the last device-writable byte.
    if (c.readable < BLK_REQ_HDR || c.writable < 1 || c.write[0]) {
      throw new Error("malformed virtio-blk request");
    }
    const readable: Uint8Array[] = [], writable: Uint8Array[] = [];
    for (let i = 0; i < c.count; i++) (c.write[i] ? writable : readable).push(this.mem(c.addr[i], c.len[i]));
    const inBytes = concat(readable);
    const { type, sector } = readBlkHeader(inBytes);
    const out = inBytes.subarray(BLK_REQ_HDR);
    const dataOut = c.writable - 1;
    let status: number = BLK_S.OK, written = 1;
    const at = sector * SECTOR;
    const ro = (this.driverFeatures & BLK_F.RO) !== 0n;
    const inRange = (off: number, n: number) => off + n <= this.disk.length;
    let bytes = 0;
    switch (type) {
      case BLK_T.IN: {
        bytes = dataOut;
        if (dataOut % SECTOR || !inRange(at, dataOut)) status = BLK_S.IOERR;
        else {
          scatter(writable, this.disk.subarray(at, at + dataOut));
          written = dataOut + 1;
        }
        break;
      }
      case BLK_T.OUT:
        bytes = out.length;
        if (ro || out.length % SECTOR || !inRange(at, out.length)) status = BLK_S.IOERR;
        else {
          this.disk.set(out, at);
          if (!this.#cached) this.durable.set(out, at);
        }
        break;
      case BLK_T.FLUSH:
        this.durable.set(this.disk);
        break;
      case BLK_T.GET_ID: {
        const id = new Uint8Array(BLK_ID_BYTES);
        id.set(new TextEncoder().encode(this.#serial).subarray(0, BLK_ID_BYTES));
        scatter(writable, id.subarray(0, Math.min(BLK_ID_BYTES, dataOut)));
        written = Math.min(BLK_ID_BYTES, dataOut) + 1;
        break;
      }
      case BLK_T.DISCARD:
      case BLK_T.WRITE_ZEROES: {
        if (ro || out.length % BLK_DWZ_SEG || out.length === 0) {
          status = BLK_S.IOERR;
          break;
        }
        for (let o = 0; o < out.length; o += BLK_DWZ_SEG) {
          const s = readDwzSegment(out.subarray(o)), off = s.sector * SECTOR, n = s.sectors * SECTOR;
          if (!inRange(off, n)) {
            status = BLK_S.IOERR;
            break;
          }
          this.disk.fill(0, off, off + n);
          if (!this.#cached) this.durable.fill(0, off, off + n);
        }
        break;
      }
      default:
        status = BLK_S.UNSUPP;
    }
    const forced = this.statusFor?.(type);
    if (forced !== undefined) status = forced;
    const last = writable[writable.length - 1];
    if (!this.skipStatus) last[last.length - 1] = status;
    this.served.push({ type, sector, bytes, descriptors: c.count, status });
    return written;
  }

  /** Writes stay volatile until a flush (writeback cache on and FLUSH negotiated). */
  get #cached(): boolean {
    return (this.driverFeatures & BLK_F.FLUSH) !== 0n && this.deviceConfig.getUint8(CFG.WRITEBACK) !== 0;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, o), o += p.length;
  return out;
}

/** Copy `src` across the writable segments (the status byte, last, is left alone). */
function scatter(segs: Uint8Array[], src: Uint8Array): void {
  let o = 0;
  for (let i = 0; i < segs.length && o < src.length; i++) {
    const room = i === segs.length - 1 ? segs[i].length - 1 : segs[i].length;
    const n = Math.min(room, src.length - o);
    segs[i].set(src.subarray(o, o + n));
    o += n;
  }
}
