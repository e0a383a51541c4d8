/**
 * TAP devices (Documentation/networking/tuntap.rst): a network interface of the kernel whose frames this process
 * reads and writes, whole Ethernet frames, no packet-information prefix. The interface lives while the file
 * descriptor is open: closing it (or the process ending) removes it, so nothing is left behind.
 * @module
 */
import { check, IoctlStruct, native, NativeError, O_NONBLOCK, O_RDWR, openPath } from "./lib.ts";
import { FrameFd } from "./frame_fd.ts";

/** TUNSETIFF = _IOW('T', 202, int) (linux/if_tun.h). */
const TUNSETIFF = 0x400454ca;
/** IFF_TAP | IFF_NO_PI (linux/if_tun.h): Ethernet frames without the 4-byte packet-information header. */
const IFF_TAP = 0x0002, IFF_NO_PI = 0x1000;
/** struct ifreq: 16 bytes of name, then the union (ifr_flags: a short) — 40 bytes in all. */
const IFREQ = 40, IFNAMSIZ = 16;

/** A TAP interface, opened non-blocking; closing it removes the interface. */
export class TapDevice extends FrameFd {
  private constructor(fd: number, name: string) {
    super(fd, name);
  }

  /** Create the TAP interface `name` (up to 15 characters; the kernel picks one for a name ending in %d). */
  static create(name: string): TapDevice {
    if (!/^[A-Za-z0-9_.%-]{1,15}$/.test(name)) {
      throw new RangeError(`'${name}' is not an interface name (1-15 letters, digits, '_', '-', '.')`);
    }
    const fd = openPath("/dev/net/tun", O_RDWR | O_NONBLOCK, {
      missing: "load the tun module (modprobe tun)",
      denied: "needs root (CAP_NET_ADMIN)",
    });
    const req = new IoctlStruct(IFREQ);
    req.bytes.set(new TextEncoder().encode(name), 0);
    req.u16(IFNAMSIZ, IFF_TAP | IFF_NO_PI);
    const r = req.call(fd, TUNSETIFF);
    if (r < 0) {
      native().pvdrv_close(fd);
      if (r === -16) throw new NativeError(`TAP interface ${name} exists and is busy`, r);
      check(`creating TAP interface ${name}`, r);
    }
    const end = req.bytes.indexOf(0);
    return new TapDevice(fd, new TextDecoder().decode(req.bytes.subarray(0, end < 0 ? IFNAMSIZ : end)));
  }
}
