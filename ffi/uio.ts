/**
 * UIO (uio_pci_generic): BARs through sysfs `resourceN` files (mmap for memory BARs, pread/pwrite for I/O-port
 * BARs), config space through sysfs `config`, and INTx through `/dev/uioN`.
 * @module
 */
import { check, check64, MAP_SHARED, native, O_NONBLOCK, O_RDWR, openPath, PROT_RW } from "./lib.ts";
import { MappedRegion, PioRegion } from "./mmio.ts";
import { irqWaiter, waitSyncOn } from "./irq.ts";
import type { MmioRegion } from "../hal/mmio.ts";
import { CMD_INTX_DISABLE } from "../hal/pci.ts";
import type { IrqSource } from "../hal/irq.ts";

/** Map a memory BAR's sysfs resource file. */
export function mapResource(path: string, size: number, name: string): MmioRegion {
  const fd = openPath(path);
  const n = native();
  try {
    const addr = check64(`mmap ${path}`, n.pvdrv_mmap(BigInt(size), PROT_RW, MAP_SHARED, fd, 0n));
    const ptr = n.pvdrv_ptr(addr)!;
    return new MappedRegion(name, ptr, size, () => n.pvdrv_munmap(ptr, BigInt(size)));
  } finally {
    n.pvdrv_close(fd);
  }
}

/** An I/O-port BAR (or config space) through pread/pwrite of a sysfs file. */
export function fileRegion(path: string, size: number, name: string): MmioRegion {
  return new PioRegion(name, openPath(path), 0, size, true);
}

/**
 * INTx through /dev/uioN: each read returns the interrupt count. uio_pci_generic masks the line by setting
 * INTx-disable in the command register when it fires (it has no irqcontrol), so re-enabling clears that bit
 * through config space.
 */
export class UioIrq implements IrqSource {
  #fd: number;
  readonly #buf = new Uint32Array(1);
  /** Last interrupt count the kernel reported. */
  count = 0;

  /** Opens /dev/<name> (e.g. uio0); `config` is the function's config space. */
  constructor(readonly name: string, readonly config: MmioRegion) {
    this.#fd = openPath(`/dev/${name}`, O_RDWR | O_NONBLOCK);
  }

  /** Unmask INTx. */
  enable(): void {
    this.config.write16(4, this.config.read16(4) & ~CMD_INTX_DISABLE);
  }

  poll(): boolean {
    const r = native().pvdrv_read(this.#fd, this.#buf, 4);
    if (r === -11) return false;
    check(`${this.name}: read`, r);
    this.count = this.#buf[0];
    return true;
  }

  async wait(): Promise<void> {
    while (!this.poll()) await irqWaiter().waitReadable(this.#fd);
  }

  waitSync(timeoutMs: number, alsoFd?: number): boolean {
    return waitSyncOn(this, this.#fd, timeoutMs, alsoFd);
  }

  close(): void {
    if (this.#fd < 0) return;
    irqWaiter().remove(this.#fd, true);
    this.#fd = -1;
  }
}
