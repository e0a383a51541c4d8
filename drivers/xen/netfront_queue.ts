/**
 * One netfront queue pair's resources (netif.h): two shared rings on granted pages, the granted pages under the
 * TX buffers and the RX pages the backend copies into, their pools, TX request ids and event channels; made and
 * released together, so a failed connect or a backend that goes away leaves nothing granted or bound.
 * @module
 */
import {
  type EventChannel,
  type EventChannels,
  type GrantedPages,
  type GrantTable,
  XEN_PAGE,
} from "../../hal/xen.ts";
import { emptyStats, type QueueStats } from "../net/nic.ts";
import { type PacketBuffer, PacketPool } from "../net/packet_pool.ts";
import { RX_ENTRY, TX_ENTRY } from "./netif.ts";
import { FrontRing } from "./ring.ts";
import { RequestIds } from "../core/request_ids.ts";

/** Slots of each netfront ring (one page of TX or RX entries). */
export const RING = 256;
const HALF_PAGE = 2048;
/** Frames of several RX slots are gathered into these (per queue). */
const RX_GATHER_BUFFERS = 32;

/** How TX buffers sit in granted pages for a given largest frame. */
export function txLayout(maxFrame: number): { buffers: number; bufferBytes: number; pages: number } {
  if (maxFrame <= HALF_PAGE) return { buffers: RING, bufferBytes: HALF_PAGE, pages: RING / 2 };
  const per = Math.ceil(maxFrame / XEN_PAGE);
  const buffers = Math.max(16, Math.min(RING, Math.floor(RING / per)));
  return { buffers, bufferBytes: per * XEN_PAGE, pages: buffers * per };
}

/** One queue pair of a {@link Netfront}: rings, granted pages, pools, TX id bookkeeping, event channels, counters. */
export interface NetfrontQueuePair {
  /** The TX shared ring. */
  tx: FrontRing;
  /** The RX shared ring. */
  rx: FrontRing;
  /** The two granted ring pages (TX, RX). */
  ringPages: GrantedPages;
  /** Granted pages under the TX buffers. */
  txPages: GrantedPages;
  /** Granted pages the backend copies received frames into. */
  rxPages: GrantedPages;
  /** Transmit buffers. */
  txPool: PacketPool;
  /** Receive pages. */
  rxPool: PacketPool;
  /** Multi-slot frames are gathered into these. */
  rxGather: PacketPool;
  /** Word views of the RX pages and the gather buffers (copies without per-packet views). */
  rx32: Uint32Array;
  /** Word view of the gather buffers. */
  gather32: Uint32Array;
  /** TX request ids, each in flight with its buffer's index. */
  txIds: RequestIds;
  /** Per TX buffer: slots not yet answered, and whether one failed. */
  txSlots: Uint8Array;
  /** Per TX buffer: whether a slot failed. */
  txFailed: Uint8Array;
  /** RX ring slot → the page posted there (the request id is the slot). */
  rxSlot: (PacketBuffer | null)[];
  /** The TX event channel (also RX without split channels). */
  evTx: EventChannel;
  /** The RX event channel. */
  evRx: EventChannel;
  /** The RX event channel (what waitRx awaits). */
  irq: EventChannel;
  /** Counters. */
  stats: QueueStats;
}

/**
 * Grant queue pair `i`'s two ring pages, TX buffer pages and RX pages to domain `dom`, bind its event channels
 * (two with split channels) and make its pools; on failure nothing stays granted.
 */
export function makeQueuePair(
  i: number,
  g: GrantTable,
  evtchns: EventChannels,
  dom: number,
  maxFrame: number,
  split: boolean,
): NetfrontQueuePair {
  const ringPages = g.grant(2, dom);
  const lay = txLayout(maxFrame), gather = (maxFrame + 3) & ~3;
  let txPages: GrantedPages | null = null, rxPages: GrantedPages | null = null;
  try {
    txPages = g.grant(lay.pages, dom);
    rxPages = g.grant(RING, dom);
    const evTx = evtchns.bindUnbound(dom);
    const evRx = split ? evtchns.bindUnbound(dom) : evTx;
    // If this process dies with the rings mapped, gntalloc kicks the backend (IOCTL_GNTALLOC_SET_UNMAP_NOTIFY).
    ringPages.notifyOnUnmap?.(evTx.port);
    const gatherMem = new Uint8Array(RX_GATHER_BUFFERS * gather);
    const q: NetfrontQueuePair = {
      tx: new FrontRing(ringPages.bytes.subarray(0, XEN_PAGE), TX_ENTRY, `vif tx ring ${i}`),
      rx: new FrontRing(ringPages.bytes.subarray(XEN_PAGE, 2 * XEN_PAGE), RX_ENTRY, `vif rx ring ${i}`),
      ringPages,
      txPages,
      rxPages,
      txPool: new PacketPool(`tx${i}`, txPages, lay.buffers, lay.bufferBytes, 0),
      rxPool: new PacketPool(`rx${i}`, rxPages, RING, XEN_PAGE, 0),
      rx32: new Uint32Array(rxPages.bytes.buffer, rxPages.bytes.byteOffset, rxPages.bytes.length >>> 2),
      gather32: new Uint32Array(gatherMem.buffer),
      rxGather: new PacketPool(
        `rx-gather${i}`,
        { bytes: gatherMem, free: () => {} },
        RX_GATHER_BUFFERS,
        gather,
        0,
      ),
      txIds: new RequestIds(RING),
      txSlots: new Uint8Array(lay.buffers),
      txFailed: new Uint8Array(lay.buffers),
      rxSlot: new Array(RING).fill(null),
      evTx,
      evRx,
      irq: evRx,
      stats: emptyStats(),
    };
    return q;
  } catch (e) {
    ringPages.free();
    txPages?.free();
    rxPages?.free();
    throw e;
  }
}

/** Stop using pair `q`: close its ports, end its ring grants and retire its pools. */
export function releaseQueuePair(q: NetfrontQueuePair): void {
  q.evTx.close();
  if (q.evRx !== q.evTx) q.evRx.close();
  q.ringPages.free();
  // The pools end their grants now, or when the application releases the last buffer it holds: until then
  // those pages stay mapped, so a held buffer never aliases a later connection's rings.
  q.txPool.retire();
  q.rxPool.retire();
  q.rxGather.retire();
}

/** Copy `len` bytes without allocating: in words when both ends are 4-byte aligned, then bytes. */
export function copy(
  d8: Uint8Array,
  d32: Uint32Array,
  dOff: number,
  s8: Uint8Array,
  s32: Uint32Array,
  sOff: number,
  len: number,
): void {
  let i = 0;
  if (((dOff | sOff) & 3) === 0) {
    const n = len >>> 2, dw = dOff >>> 2, sw = sOff >>> 2;
    for (let k = 0; k < n; k++) d32[dw + k] = s32[sw + k];
    i = n << 2;
  }
  for (; i < len; i++) d8[dOff + i] = s8[sOff + i];
}
