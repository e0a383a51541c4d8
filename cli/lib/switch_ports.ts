/**
 * The switch's port arguments, opened: `vhost-user:PATH` (pvdrv listens; QEMU connects with `reconnect=1`),
 * `vhost-user-client:PATH` (QEMU listens with `server=on`), `tap:NAME` and `udp:HOST:PORT,local=PORT`.
 * @module
 */
import { FdPort, NicPort, type SwitchPort } from "../../apps/switch.ts";
import { irqWaiter } from "../../ffi/irq.ts";
import { TapDevice } from "../../ffi/tap.ts";
import { UdpLink } from "../../ffi/udp_link.ts";
import { openVhostUser } from "../../system/vhost_port.ts";
import { UsageError } from "./common.ts";

/** The port syntax, for usage texts. */
export const PORT_USAGE = `  --port SPEC       a port (repeat for each):
                      vhost-user:PATH[,queues=N]          pvdrv listens at PATH; QEMU connects (reconnect=1)
                      vhost-user-client:PATH[,queues=N]   QEMU listens at PATH (server=on); pvdrv connects
                      tap:NAME                            a TAP interface made for the switch
                      udp:HOST:PORT,local=PORT            a UDP frame link (QEMU's -netdev dgram)`;

function options(spec: string, rest: string[], allowed: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const kv of rest) {
    const [k, v] = kv.split("=", 2);
    if (!allowed.includes(k) || v === undefined) {
      throw new UsageError(`port '${spec}': unknown option '${kv}'`);
    }
    m.set(k, v);
  }
  return m;
}

/** Open one port from its spec (the `i`th). */
export function openPort(spec: string, i: number): SwitchPort {
  const colon = spec.indexOf(":");
  const kind = colon < 0 ? spec : spec.slice(0, colon);
  const [target, ...rest] = spec.slice(colon + 1).split(",");
  if (colon < 0 || !target) throw new UsageError(`port '${spec}' needs KIND:TARGET`);
  switch (kind) {
    case "vhost-user":
    case "vhost-user-client": {
      const o = options(spec, rest, ["queues"]);
      const q = Number(o.get("queues") ?? "1");
      if (!Number.isInteger(q) || q < 1 || q > 64) {
        throw new UsageError(`port '${spec}': queues must be 1..64`);
      }
      const nic = openVhostUser(`${kind}:${target}`, {
        index: i,
        queues: q,
        log: (l) => console.error(`switch: ${l}`),
        trace: Deno.env.get("PVDRV_VHOST_TRACE") === "1",
      });
      return new NicPort(spec, nic);
    }
    case "tap": {
      options(spec, rest, []);
      const tap = TapDevice.create(target);
      return new FdPort(spec, tap, () => irqWaiter().waitReadable(tap.fd), () => {
        irqWaiter().remove(tap.fd, true);
        tap.fd = -1;
      });
    }
    case "udp": {
      const o = options(spec, rest, ["local"]);
      if (!o.has("local")) throw new UsageError(`port '${spec}' needs local=PORT`);
      const link = UdpLink.open(target, UdpLink.port(o.get("local")!));
      return new FdPort(spec, link, () => irqWaiter().waitReadable(link.fd), () => {
        irqWaiter().remove(link.fd, true);
        link.fd = -1;
      });
    }
  }
  throw new UsageError(`port '${spec}': unknown kind '${kind}' (vhost-user, vhost-user-client, tap, udp)`);
}
