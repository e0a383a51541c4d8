/**
 * The xenstore byte stream of a Linux guest: /dev/xen/xenbus (xenfs `/proc/xen/xenbus` as a fallback), read
 * through the shared irq waiter so a pending read never blocks Deno's event loop.
 * @module
 */
import { check, cstr, native, O_NONBLOCK, O_RDWR } from "./lib.ts";
import { irqWaiter } from "./irq.ts";
import type { XsTransport } from "../hal/xen.ts";

/** /dev/xen/xenbus as an {@link XsTransport}. */
export class XenbusDevice implements XsTransport {
  #fd: number;
  readonly #buf = new Uint8Array(4096 + 16);

  /** Opens the first of `paths` that exists. */
  constructor(paths = ["/dev/xen/xenbus", "/proc/xen/xenbus"]) {
    let r = -2;
    for (const p of paths) {
      r = native().pvdrv_open(cstr(p), O_RDWR | O_NONBLOCK, 0);
      if (r !== -2) break;
    }
    if (r === -2) {
      throw new Error(
        `no xenstore device (${paths.join(", ")}): not a Xen guest, or xenfs/xen modules not loaded`,
      );
    }
    this.#fd = check(`opening ${paths[0]}`, r);
  }

  write(msg: Uint8Array): void {
    if (this.#fd < 0) throw new Error("xenbus device closed");
    const n = check(
      "writing to xenbus",
      native().pvdrv_write(this.#fd, msg as Uint8Array<ArrayBuffer>, msg.length),
    );
    if (n !== msg.length) throw new Error(`short write to xenbus (${n} of ${msg.length})`);
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
