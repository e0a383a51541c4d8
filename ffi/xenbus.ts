/**
 * The xenstore byte stream of a Linux guest: /dev/xen/xenbus (xenfs `/proc/xen/xenbus` as a fallback), read
 * through the shared irq waiter so a pending read never blocks Deno's event loop.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { check, native, NativeError, O_NONBLOCK, O_RDWR, openPath } from "./lib.ts";
import { irqWaiter } from "./irq.ts";
import type { XsTransport } from "../hal/xen.ts";

/** /dev/xen/xenbus as an {@link XsTransport}. */
export class XenbusDevice implements XsTransport {
  #fd = -1;
  readonly #buf = new Uint8Array(4096 + 16);

  /** Opens the first of `paths` that exists. */
  constructor(paths = ["/dev/xen/xenbus", "/proc/xen/xenbus"]) {
    for (const p of paths) {
      try {
        this.#fd = openPath(p, O_RDWR | O_NONBLOCK);
        return;
      } catch (e) {
        if (!(e instanceof NativeError && e.errno === 2)) throw e;
      }
    }
    throw new NativeError(
      `no xenstore device (${paths.join(", ")}): not a Xen guest, or xenfs/xen modules not loaded`,
      -2,
    );
  }

  write(msg: Uint8Array): void {
    if (this.#fd < 0) throw new PvdrvError("xen", "xenbus device closed");
    const n = check(
      "writing to xenbus",
      native().pvdrv_write(this.#fd, msg as Uint8Array<ArrayBuffer>, msg.length),
    );
    if (n !== msg.length) throw new PvdrvError("xen", `short write to xenbus (${n} of ${msg.length})`);
  }

  async read(): Promise<Uint8Array | null> {
    while (this.#fd >= 0) {
      const n = native().pvdrv_read(this.#fd, this.#buf, this.#buf.length);
      if (n > 0) return this.#buf.slice(0, n);
      if (n === 0) return null;
      if (n !== -11) check("reading xenbus", n);
      try {
        await irqWaiter().waitReadable(this.#fd);
      } catch {
        return null; // closed while waiting
      }
    }
    return null;
  }

  close(): void {
    if (this.#fd < 0) return;
    irqWaiter().remove(this.#fd, true);
    this.#fd = -1;
  }
}
