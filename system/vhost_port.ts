/**
 * vhost-user ports by name, for {@link openNic} and the switch: `vhost-user:PATH` (pvdrv listens at PATH, QEMU
 * connects with `reconnect=1`) or `vhost-user-client:PATH` (QEMU listens with `server=on`; pvdrv connects).
 * @module
 */
import { VhostUserNet } from "../drivers/virtio/vhost_net.ts";
import { FdConnector, FdListener, LINUX_FD_OPS } from "../ffi/unix.ts";

/** The two forms of a vhost-user port name. */
export const VHOST_USER_NAME: RegExp = /^(vhost-user|vhost-user-client):(.+)$/;

/** How a vhost-user port is opened. */
export interface VhostPortOptions {
  /** Sleep on the guest's kicks (default) or poll. */
  irq?: boolean;
  /** Queue pairs offered (default 1). */
  queues?: number;
  /** The host side's MAC (default a locally administered one from `index`). */
  mac?: Uint8Array;
  /** Tells the default MAC apart from other ports'. */
  index?: number;
  /** Hears sessions, refusals and quarantines. */
  log?: (line: string) => void;
  /** Log every message too. */
  trace?: boolean;
}

/**
 * Open the vhost-user port `name` ("vhost-user:PATH" or "vhost-user-client:PATH"). A listening port removes a
 * socket a killed process left at PATH (only a socket: any other file there is an error).
 */
export function openVhostUser(name: string, o: VhostPortOptions = {}): VhostUserNet {
  const m = name.match(VHOST_USER_NAME);
  if (!m) throw new RangeError(`'${name}' is not vhost-user:PATH or vhost-user-client:PATH`);
  const [, kind, path] = m;
  if (kind === "vhost-user") {
    try {
      if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
    } catch { /* not there */ }
  }
  const acceptor = kind === "vhost-user" ? FdListener.listen(path) : new FdConnector(path);
  try {
    return new VhostUserNet(acceptor, LINUX_FD_OPS, {
      name,
      mac: o.mac ?? new Uint8Array([0x02, 0x70, 0x76, 0x68, 0x75, (o.index ?? 0) & 0xff]),
      pairs: o.queues ?? 1,
      irq: o.irq ?? true,
      log: o.log,
      trace: o.trace,
    });
  } catch (e) {
    acceptor.close();
    throw e;
  }
}
