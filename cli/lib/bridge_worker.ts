/**
 * The TAP bridge's worker: opens the NIC, creates and configures the TAP interface (its MAC and MTU the NIC's, its
 * address static or leased by pvdrv's DHCP client, which keeps renewing), then runs {@link bridge} until the main
 * thread sets the stop flag. Its own thread, so the main thread's event loop (an HTTP server) never waits on it.
 * @module
 */
/// <reference lib="deno.worker" />
import { openNic } from "../../system/table.ts";
import { macToString, type Nic, settledStats } from "../../drivers/net/nic.ts";
import { TapDevice } from "../../ffi/tap.ts";
import { bridge } from "../../apps/bridge.ts";
import { NetHost } from "../../net/host.ts";
import { isDhcpReplyFrame } from "../../net/dhcp.ts";
import { ipText } from "../../net/ipv4.ts";
import type { BridgeConfig, BridgeMessage } from "./tap_bridge.ts";
import { pinNicTask } from "./nic_args.ts";

const post = (m: BridgeMessage) => self.postMessage(m);

async function ip(args: string[]): Promise<void> {
  const r = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  if (!r.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(r.stderr).trim()}`);
}

self.onmessage = async (e: MessageEvent<BridgeConfig>) => {
  const cfg = e.data, ctl = new Int32Array(cfg.control);
  let nic: Nic | null = null, tap: TapDevice | null = null, host: NetHost | null = null;
  try {
    const interrupts = cfg.irq !== "poll";
    nic = await openNic(cfg.nic, { irq: cfg.irq, mtu: cfg.mtu, ring: cfg.ring });
    pinNicTask(cfg.nic, cfg.cpu); // the whole task: this worker runs the bridge, the main thread serves
    tap = TapDevice.create(cfg.tap);
    const mac = macToString(nic.mac);
    await ip(["link", "set", "dev", tap.name, "address", mac, "mtu", String(nic.mtu), "up"]);
    let address = cfg.cidr, gateway = cfg.gateway;
    if (cfg.dhcp) {
      // pvdrv's DHCP client leases the address on the NIC itself, then keeps it renewed from inside the bridge.
      host = NetHost.start(nic, { interrupts, passive: true });
      const lease = await host.dhcp(30_000);
      await host.detach();
      address = `${ipText(lease.ip)}/${lease.prefix}`;
      gateway ??= lease.gateway ? ipText(lease.gateway) : undefined;
    }
    if (address) await ip(["addr", "add", address, "dev", tap.name]);
    if (gateway) await ip(["route", "replace", "default", "via", gateway, "dev", tap.name]);
    post({
      ready: { tap: tap.name, mac, nic: nic.name, address: address ?? null, gateway: gateway ?? null },
    });
    let current = host?.ip ?? 0, changing = false;
    const dhcp = host;
    const stats = await bridge(nic, tap, {
      stop: () => Atomics.load(ctl, 0) !== 0,
      interrupts,
      onReport: (s) => post({ report: { ...s } }),
      intercept: dhcp
        ? (b) => {
          if (isDhcpReplyFrame(b.data, b.length)) return dhcp.handle(b), true;
          if (b.length >= 14 && b.data[12] === 0x08 && b.data[13] === 0x06) dhcp.handle(b); // ARP: both see it
          return false;
        }
        : undefined,
      onRound: dhcp
        ? (now) => {
          dhcp.service(now);
          if (dhcp.ip !== current && dhcp.ip !== 0 && !changing) {
            // A new lease (after a NAK or expiry): move the TAP's address to it.
            changing = true;
            const next = `${ipText(dhcp.ip)}/${dhcp.prefix}`;
            ip(["addr", "flush", "dev", tap!.name]).then(() => ip(["addr", "add", next, "dev", tap!.name]))
              .then(() => post({ address: next }), (err) => post({ error: String(err?.message ?? err) }))
              .finally(() => (current = dhcp.ip, changing = false));
          }
        }
        : undefined,
    });
    post({ closed: { ...stats }, nicStats: settledStats(nic) });
  } catch (err) {
    post({ error: (err as Error)?.message ?? String(err) });
  } finally {
    await host?.close().catch(() => {});
    tap?.close();
    await nic?.close().catch(() => {});
    post({ exited: true });
  }
};
