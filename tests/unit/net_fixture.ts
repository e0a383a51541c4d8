/** Shared by the network host's tests: two hosts on virtio-net models joined by a wire, and frame builders. */
import assert from "assert";
import { VirtioNet } from "../../drivers/virtio/net.ts";
import { F, NET_F } from "../../drivers/virtio/features.ts";
import { VirtioNetModel } from "../models/virtio_net_device.ts";
import { Wire } from "../models/wire.ts";
import { type HostOptions, NetHost } from "../../net/host.ts";
import { DhcpClient, type DhcpSend } from "../../net/dhcp.ts";
import { finish, pseudoSum, sum16 } from "../../net/checksum.ts";
import { writeU16, writeU32 } from "../../net/ipv4.ts";

/** Host a's and host b's addresses. */
export const A_IP = "10.0.0.2/24", B_IP = "10.0.0.1/24";
/** The features both models offer (checksum offload added by {@link pair} unless turned off). */
export const ALL = F.VERSION_1 | F.ACCESS_PLATFORM | F.RING_EVENT_IDX | NET_F.MAC | NET_F.STATUS |
  NET_F.MRG_RXBUF |
  NET_F.CTRL_VQ | NET_F.CTRL_RX | NET_F.MTU;

/** Two started hosts, a and b, on models joined by a wire pumped every millisecond. */
export interface Pair {
  a: NetHost;
  b: NetHost;
  wire: Wire;
  ma: VirtioNetModel;
  close(): Promise<void>;
}

/** Make a {@link Pair}: `a` gets `aOpts` too (its address `aIp`, none with null). */
export function pair(
  o: { offload?: boolean; aIp?: string | null; arp?: HostOptions["arp"]; aOpts?: HostOptions } = {},
): Pair {
  const features = o.offload === false ? ALL : ALL | NET_F.CSUM | NET_F.GUEST_CSUM;
  const ma = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xa], features });
  const mb = new VirtioNetModel({ mac: [2, 0, 0, 0, 0, 0xb], features });
  const na = VirtioNet.openPci(ma.pci()), nb = VirtioNet.openPci(mb.pci());
  assert.equal(na.txChecksum, o.offload !== false);
  const wire = new Wire(ma, mb).start();
  const a = NetHost.start(na, { ip: o.aIp === null ? undefined : o.aIp ?? A_IP, arp: o.arp, ...o.aOpts });
  const b = NetHost.start(nb, { ip: B_IP, arp: o.arp });
  return {
    a,
    b,
    wire,
    ma,
    async close() {
      await a.close();
      await b.close();
      wire.stop();
      await na.close();
      await nb.close();
    },
  };
}

/** Poll `cond` until true (or fail after 3 s). */
export async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A well-formed IPv4/UDP frame from b to a, to be broken by the caller. */
export function udpFrame(p: Pair, payload = 16): Uint8Array {
  const f = new Uint8Array(42 + payload);
  f.set(p.a.nic.mac, 0);
  f.set(p.b.nic.mac, 6);
  writeU16(f, 12, 0x0800);
  f[14] = 0x45;
  writeU16(f, 16, 28 + payload);
  f[22] = 64;
  f[23] = 17;
  writeU32(f, 26, p.b.ip);
  writeU32(f, 30, p.a.ip);
  writeU16(f, 24, finish(sum16(f, 14, 20)));
  writeU16(f, 34, 5000);
  writeU16(f, 36, 9);
  writeU16(f, 38, 8 + payload);
  writeU16(f, 40, finish(sum16(f, 34, 8 + payload, pseudoSum(p.b.ip, p.a.ip, 17, 8 + payload))));
  return f;
}

/** Make the IPv4 header checksum of `f` right again after an edit. */
export function refreshIpSum(f: Uint8Array): Uint8Array {
  const ihl = (f[14] & 15) * 4;
  writeU16(f, 24, 0);
  writeU16(f, 24, finish(sum16(f, 14, Math.min(ihl, f.length - 14))));
  return f;
}

/** An ARP request from b for `target`, in a link broadcast. */
export function arpFrame(p: Pair, target: number): Uint8Array {
  const f = new Uint8Array(42);
  f.fill(0xff, 0, 6);
  f.set(p.b.nic.mac, 6);
  writeU16(f, 12, 0x0806);
  writeU16(f, 14, 1);
  writeU16(f, 16, 0x0800);
  f[18] = 6, f[19] = 4;
  writeU16(f, 20, 1);
  f.set(p.b.nic.mac, 22);
  writeU32(f, 28, p.b.ip);
  writeU32(f, 38, target);
  return f;
}

export { dhcpReply, dhcpType } from "../models/dhcp_server.ts";

/** The /24 mask as a DHCP option. */
export const MASK_24: [number, number[]] = [1, [255, 255, 255, 0]];

/** A DHCP client started at 0 whose DISCOVER is in its buffer (`out` says where it goes). */
export function discovering(): { c: DhcpClient; out: DhcpSend } {
  const c = new DhcpClient(0x02000000000a), out: DhcpSend = { length: 0, dst: 0, src: 0 };
  c.start(0);
  assert.ok(c.poll(0, out), "the DISCOVER goes out at once");
  return { c, out };
}
