/**
 * The grant and event-channel seams of Xen drivers (Xen public/grant_table.h, event_channel.h): pages shared with
 * another domain, and the doorbell between the two. Real implementations are in ffi/xen.ts; models in tests.
 * @module
 */
import type { IrqSource } from "../../ffi/irq.ts";

/** Xen pages are 4 KiB. */
export const XEN_PAGE = 4096;

/** Pages granted to a domain. */
export interface GrantedPages {
  /** One grant reference per page. */
  readonly refs: Uint32Array;
  /** The pages, contiguous in this process. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** End the grants and unmap (idempotent). */
  free(): void;
  /** Signal event channel `port` when these pages are unmapped, even by this process dying (gntalloc only). */
  notifyOnUnmap?(port: number): void;
}

/** Allocates granted pages. */
export interface GrantTable {
  /** Grant `count` zeroed pages to `domid`, writable by it. */
  grant(count: number, domid: number): GrantedPages;
  /** Grants this table may still hand out (gntalloc's module limit), or Infinity when unknown. */
  readonly remaining: number;
}

/** One event channel: a port bound to a remote domain. */
export interface EventChannel extends IrqSource {
  /** The local port (what xenstore's event-channel key carries). */
  readonly port: number;
  /** Signal the remote end. */
  notify(): void;
}

/** Creates event channels. */
export interface EventChannels {
  /** Allocate a port that `remoteDomid` may bind to. */
  bindUnbound(remoteDomid: number): EventChannel;
}
