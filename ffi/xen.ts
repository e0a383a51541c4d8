/**
 * Linux's Xen devices for a domU's userspace: /dev/xen/gntalloc (grant pages to another domain) and
 * /dev/xen/evtchn (event channels). Layouts and ioctl numbers from linux/xen/gntalloc.h and evtchn.h.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import {
  check,
  check64,
  IoctlStruct,
  MAP_SHARED,
  native,
  NativeError,
  O_NONBLOCK,
  O_RDWR,
  openPath,
  PROT_RW,
} from "./lib.ts";
import { irqWaiter, waitSyncOn } from "./irq.ts";
import {
  type EventChannel,
  type EventChannels,
  type GrantedPages,
  type GrantTable,
  XEN_PAGE,
} from "../hal/xen.ts";

const IOCTL_GNTALLOC_ALLOC_GREF = 0x184705, IOCTL_GNTALLOC_DEALLOC_GREF = 0x104706;
const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY = 0x104707, UNMAP_NOTIFY_SEND_EVENT = 2;
const GNTALLOC_FLAG_WRITABLE = 1;
const IOCTL_EVTCHN_BIND_UNBOUND_PORT = 0x44502, IOCTL_EVTCHN_NOTIFY = 0x44504, IOCTL_EVTCHN_UNBIND = 0x44503;
/** Linux's default gntalloc `limit` module parameter. */
export const GNTALLOC_DEFAULT_LIMIT = 1024;

function openDev(path: string, what: string): number {
  return openPath(path, O_RDWR | O_NONBLOCK, {
    missing: `load the ${what} module (xen-${what}) in this Xen guest`,
  });
}

/** Grants through /dev/xen/gntalloc. */
export class Gntalloc implements GrantTable {
  #fd: number;
  #used = 0;
  /** Grants this process may allocate (the module's `limit`, read from sysfs when possible). */
  readonly limit: number;

  /** Opens /dev/xen/gntalloc. */
  constructor() {
    this.#fd = openDev("/dev/xen/gntalloc", "gntalloc");
    let limit = GNTALLOC_DEFAULT_LIMIT;
    try {
      limit = Number(Deno.readTextFileSync("/sys/module/xen_gntalloc/parameters/limit").trim()) || limit;
    } catch { /* default */ }
    this.limit = limit;
  }

  get remaining(): number {
    return this.limit - this.#used;
  }

  grant(count: number, domid: number): GrantedPages {
    if (this.#fd < 0) throw new PvdrvError("xen", "gntalloc is closed");
    if (!(count >= 1 && count <= 65536)) throw new RangeError(`cannot grant ${count} pages`);
    // struct ioctl_gntalloc_alloc_gref { u16 domid, flags; u32 count; u64 index; u32 gref_ids[count]; }
    const b = new IoctlStruct(Math.max(24, 16 + 4 * count)).u16(0, domid).u16(2, GNTALLOC_FLAG_WRITABLE)
      .u32(4, count);
    const r = b.call(this.#fd, IOCTL_GNTALLOC_ALLOC_GREF);
    if (r === -28 || r === -12) {
      throw new NativeError(
        `gntalloc refused ${count} more grants (${this.#used} in use, limit ${this.limit}): raise it with ` +
          `'modprobe xen-gntalloc limit=N' or use fewer queues`,
        r,
      );
    }
    check("IOCTL_GNTALLOC_ALLOC_GREF", r);
    const index = b.getU64(8);
    const refs = new Uint32Array(count);
    for (let i = 0; i < count; i++) refs[i] = b.getU32(16 + 4 * i);
    const n = native(), len = BigInt(count * XEN_PAGE);
    const addr = n.pvdrv_mmap(len, PROT_RW, MAP_SHARED, this.#fd, index);
    if (addr < 0n) this.#dealloc(index, count);
    const ptr = n.pvdrv_ptr(check64("mmap of granted pages", addr))!;
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, count * XEN_PAGE));
    this.#used += count;
    let freed = false;
    return {
      refs,
      bytes,
      free: () => {
        if (freed) return;
        freed = true;
        n.pvdrv_munmap(ptr, len);
        this.#dealloc(index, count);
        this.#used -= count;
      },
      notifyOnUnmap: (port: number) => {
        // struct ioctl_gntalloc_unmap_notify { u64 index; u32 action; u32 event_channel_port; }
        new IoctlStruct(16).u64(0, index).u32(8, UNMAP_NOTIFY_SEND_EVENT).u32(12, port)
          .ioctl(this.#fd, IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY");
      },
    };
  }

  #dealloc(index: bigint, count: number): void {
    // struct ioctl_gntalloc_dealloc_gref { u64 index; u32 count; }
    new IoctlStruct(16).u64(0, index).u32(8, count).call(this.#fd, IOCTL_GNTALLOC_DEALLOC_GREF);
  }

  /** Close the device (grants still mapped stay until unmapped). */
  close(): void {
    if (this.#fd >= 0) native().pvdrv_close(this.#fd);
    this.#fd = -1;
  }
}

/** An event channel on its own /dev/xen/evtchn fd (events read as u32 ports; writing a port unmasks it). */
class EvtchnPort implements EventChannel {
  // Byte views made once: notify and poll run per batch and allocate nothing.
  readonly #buf = new Uint8Array(64);
  readonly #port = new Uint8Array(4);
  constructor(public fd: number, readonly port: number) {
    new DataView(this.#port.buffer).setUint32(0, port, true);
  }
  notify(): void {
    check("IOCTL_EVTCHN_NOTIFY", native().pvdrv_ioctl_ptr(this.fd, IOCTL_EVTCHN_NOTIFY, this.#port));
  }
  poll(): boolean {
    const r = native().pvdrv_read(this.fd, this.#buf, this.#buf.byteLength);
    if (r === -11) return false;
    check("reading /dev/xen/evtchn", r);
    // The port arrives masked: unmask (write it back) so the next event is delivered.
    native().pvdrv_write(this.fd, this.#port, 4);
    return r > 0;
  }
  async wait(): Promise<void> {
    while (!this.poll()) await irqWaiter().waitReadable(this.fd);
  }
  waitSync(timeoutMs: number, alsoFd?: number): boolean {
    return waitSyncOn(this, this.fd, timeoutMs, alsoFd);
  }
  close(): void {
    if (this.fd < 0) return;
    native().pvdrv_ioctl_ptr(this.fd, IOCTL_EVTCHN_UNBIND, this.#port);
    irqWaiter().remove(this.fd, true);
    this.fd = -1;
  }
}

/** Event channels through /dev/xen/evtchn. */
export class Evtchn implements EventChannels {
  bindUnbound(remoteDomid: number): EventChannel {
    const fd = openDev("/dev/xen/evtchn", "evtchn");
    // struct ioctl_evtchn_bind_unbound_port { u32 remote_domain; }
    const port = new IoctlStruct(4).u32(0, remoteDomid).call(fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT);
    if (port < 0) {
      native().pvdrv_close(fd);
      check(`IOCTL_EVTCHN_BIND_UNBOUND_PORT (remote domain ${remoteDomid})`, port);
    }
    return new EvtchnPort(fd, port);
  }
}
