/**
 * The Xen seams: pages granted to another domain (Xen public/grant_table.h), the event channel between the two
 * (event_channel.h), and the byte stream under a xenstore client (xs_wire.h). Linux implementations are in
 * ffi/xen.ts and ffi/xenbus.ts; models in tests/models.
 * @module
 */
import type { IrqSource } from "./irq.ts";

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

/** The byte stream under a xenstore client: /dev/xen/xenbus, or an in-process server in tests. */
export interface XsTransport {
  /** Send one whole message. */
  write(msg: Uint8Array): void;
  /** The next chunk of bytes from the server (any framing); null at end of stream. */
  read(): Promise<Uint8Array | null>;
  /** Close the stream (a pending read resolves null). */
  close(): void;
}
