/**
 * Attaching a kernel NBD device (/dev/nbdN) to an export this process serves, with the NBD ioctls (linux/nbd.h)
 * instead of nbd-client: connect a Unix socket to the export, negotiate (fixed newstyle, NBD_OPT_GO) on it, hand
 * it to the kernel with NBD_SET_SOCK, and run NBD_DO_IT on a pool thread until the device is disconnected. The
 * socket and the handshake go through the native shim because the kernel needs a file descriptor, which Deno's
 * sockets do not expose; the handshake's calls run off the JS thread, so this process's export can answer them.
 * @module
 */
import { check, cstr, native, O_RDWR, openPath } from "../../ffi/lib.ts";
import { PvdrvError } from "../../hal/errors.ts";
import {
  dv,
  GREETING_BYTES,
  NBD_FLAG_C,
  NBD_INFO,
  NBD_MAGIC,
  NBD_OPT,
  NBD_OPTS_MAGIC,
  NBD_REP,
  NBD_REP_MAGIC,
  OPTION_REPLY_HDR,
} from "../../apps/nbd/wire.ts";

/** linux/nbd.h ioctls: _IO(0xab, n). */
const NBD_IOCTL = {
  SET_SOCK: 0xab00,
  SET_BLKSIZE: 0xab01,
  DO_IT: 0xab03,
  CLEAR_SOCK: 0xab04,
  SET_SIZE_BLOCKS: 0xab07,
  DISCONNECT: 0xab08,
  SET_TIMEOUT: 0xab09,
  SET_FLAGS: 0xab0a,
} as const;

/** An attached device. */
export interface NbdAttachment {
  /** The device ("/dev/nbd0"). */
  readonly device: string;
  /** The export's size in bytes. */
  readonly size: number;
  /** Settles when the kernel lets go of the socket (disconnect, or the export ended). */
  readonly done: Promise<void>;
  /** Disconnect the device (it answers no more I/O) and release it. */
  detach(): Promise<void>;
}

async function readAll(fd: number, b: Uint8Array<ArrayBuffer>): Promise<void> {
  const n = native();
  for (let got = 0; got < b.length;) {
    const r = await n.pvdrv_read_async(fd, b.subarray(got), b.length - got);
    if (r === 0) throw new PvdrvError("usage", "the export closed the connection during the handshake");
    got += check("read from the export", r);
  }
}

async function writeAllFd(fd: number, b: Uint8Array<ArrayBuffer>): Promise<void> {
  const n = native();
  for (let off = 0; off < b.length;) {
    off += check("write to the export", await n.pvdrv_write_async(fd, b.subarray(off), b.length - off));
  }
}

/** The fixed newstyle handshake on `fd` for export `name`: its size, transmission flags and minimum block. */
async function handshake(fd: number, name: string): Promise<{ size: number; flags: number; block: number }> {
  const g = new Uint8Array(GREETING_BYTES);
  await readAll(fd, g);
  if (dv(g).getBigUint64(0) !== NBD_MAGIC || dv(g).getBigUint64(8) !== NBD_OPTS_MAGIC) {
    throw new PvdrvError("usage", "the export did not greet with NBDMAGIC IHAVEOPT");
  }
  const cf = new Uint8Array(4);
  dv(cf).setUint32(0, NBD_FLAG_C.FIXED_NEWSTYLE | NBD_FLAG_C.NO_ZEROES);
  await writeAllFd(fd, cf);
  const nm = new TextEncoder().encode(name);
  const opt = new Uint8Array(16 + 4 + nm.length + 2 + 2), v = dv(opt);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, NBD_OPT.GO);
  v.setUint32(12, opt.length - 16);
  v.setUint32(16, nm.length);
  opt.set(nm, 20);
  v.setUint16(20 + nm.length, 1);
  v.setUint16(22 + nm.length, NBD_INFO.BLOCK_SIZE);
  await writeAllFd(fd, opt);
  let size = -1, flags = 0, block = 512;
  while (true) {
    const h = new Uint8Array(OPTION_REPLY_HDR), hv = dv(h);
    await readAll(fd, h);
    if (hv.getBigUint64(0) !== NBD_REP_MAGIC) {
      throw new PvdrvError("usage", "bad option reply from the export");
    }
    const type = hv.getUint32(12), len = hv.getUint32(16);
    if (len > 4096) throw new PvdrvError("usage", `option reply of ${len} bytes`);
    const d = new Uint8Array(len), dd = dv(d);
    await readAll(fd, d);
    if (type === NBD_REP.ACK) break;
    if (type !== NBD_REP.INFO) {
      throw new PvdrvError("usage", `the export refused NBD_OPT_GO (reply 0x${type.toString(16)})`);
    }
    const info = len >= 2 ? dd.getUint16(0) : -1;
    if (info === NBD_INFO.EXPORT && len >= 12) {
      size = Number(dd.getBigUint64(2));
      flags = dd.getUint16(10);
    } else if (info === NBD_INFO.BLOCK_SIZE && len >= 14) block = dd.getUint32(2);
  }
  if (size < 0) throw new PvdrvError("usage", "the export sent no NBD_INFO_EXPORT");
  return { size, flags, block };
}

/** Attach `device` to the export `name` listening on Unix socket `path`. */
export async function attachNbd(device: string, path: string, name: string): Promise<NbdAttachment> {
  const n = native();
  const sock = check(`connecting to ${path}`, n.pvdrv_unix_connect(cstr(path)));
  let dev = -1, size = 0;
  try {
    const h = await handshake(sock, name), flags = h.flags, block = h.block;
    size = h.size;
    // The kernel's block size is a power of two from 512 to the page size; the export's minimum must be one.
    if (block < 512 || block > 4096 || (block & (block - 1))) {
      throw new PvdrvError("usage", `the export's block size ${block} cannot be a kernel block size`);
    }
    dev = openPath(device, O_RDWR);
    check(`${device}: NBD_SET_BLKSIZE`, n.pvdrv_ioctl_int(dev, NBD_IOCTL.SET_BLKSIZE, block));
    check(`${device}: NBD_SET_SIZE_BLOCKS`, n.pvdrv_ioctl_int(dev, NBD_IOCTL.SET_SIZE_BLOCKS, size / block));
    check(`${device}: NBD_SET_FLAGS`, n.pvdrv_ioctl_int(dev, NBD_IOCTL.SET_FLAGS, flags));
    check(`${device}: NBD_SET_TIMEOUT`, n.pvdrv_ioctl_int(dev, NBD_IOCTL.SET_TIMEOUT, 60));
    check(
      `${device}: NBD_SET_SOCK (is it already in use?)`,
      n.pvdrv_ioctl_int(dev, NBD_IOCTL.SET_SOCK, sock),
    );
  } catch (e) {
    if (dev >= 0) n.pvdrv_close(dev);
    n.pvdrv_close(sock);
    throw e;
  }
  const fd = dev;
  // NBD_DO_IT returns when the device is disconnected (or the socket dies); then the kernel's hold is cleared.
  const done = n.pvdrv_ioctl_int_async(fd, NBD_IOCTL.DO_IT, 0).then(() => {
    n.pvdrv_ioctl_int(fd, NBD_IOCTL.CLEAR_SOCK, 0);
    n.pvdrv_close(fd);
    n.pvdrv_close(sock);
  });
  let detaching: Promise<void> | null = null;
  return {
    device,
    size,
    done,
    detach() {
      detaching ??= (async () => {
        const ctl = openPath(device, O_RDWR);
        try {
          n.pvdrv_ioctl_int(ctl, NBD_IOCTL.DISCONNECT, 0);
        } finally {
          n.pvdrv_close(ctl);
        }
        await done;
      })();
      return detaching;
    },
  };
}
