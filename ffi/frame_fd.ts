/**
 * A non-blocking descriptor that carries one whole Ethernet frame per read and write: a TAP device, a UDP frame
 * link. What both do the same way is here; each adds how it is opened.
 * @module
 */
import { check, native } from "./lib.ts";

const EAGAIN = -11;

/** One frame per read and write, never blocking. */
export class FrameFd {
  /** The descriptor (readable when a frame waits); -1 once closed. */
  fd: number;
  /** Frames the other side had no room for (a write that failed). */
  writeErrors = 0;

  /** Wraps `fd` (owned from now on); `quiet` errnos read as "nothing waiting". */
  protected constructor(fd: number, readonly name: string, readonly quiet: readonly number[] = []) {
    this.fd = fd;
  }

  /** Read one frame into `buf` (at most `max` bytes); its length, or -1 when none is waiting. */
  read(buf: Uint8Array, max: number): number {
    const r = native().pvdrv_read(this.fd, buf, max);
    if (r >= 0) return r;
    if (r === EAGAIN || this.quiet.includes(r)) return -1;
    return check(`reading ${this.name}`, r);
  }

  /** Write one frame; false (counted) when it was dropped. */
  write(buf: Uint8Array, len: number): boolean {
    const r = native().pvdrv_write(this.fd, buf, len);
    if (r === len) return true;
    this.writeErrors++;
    return false;
  }

  /** Close the descriptor (idempotent). */
  close(): void {
    if (this.fd < 0) return;
    native().pvdrv_close(this.fd);
    this.fd = -1;
  }
}
