/**
 * virtio-net's configuration and control queue (virtio 1.2 §5.1.4, §5.1.6.5): reading virtio_net_config with
 * every negotiated field checked to lie inside what the device described, and sending control commands.
 * @module
 */
import type { DmaRegion } from "../../hal/dma.ts";
import { NET_F } from "./features.ts";
import { CTRL, NET_CONFIG } from "./net_wire.ts";
import { readConfig, VirtioError, type VirtioTransport } from "./transport.ts";
import type { Virtqueue } from "./queue.ts";

/** Bytes of DMA memory a control queue's commands use (command at 0, ack at 2048). */
export const CONTROL_MEM = 4096;

/** virtio_net_config as read at bring-up. */
export interface NetConfig {
  mac: Uint8Array;
  maxPairs: number;
  mtu: number;
}

/** Read and check virtio_net_config for features `f` (the MAC made up when the device has none). */
export function readNetConfig(t: VirtioTransport, f: bigint, name: string): NetConfig {
  // §5.1.4: each negotiated feature's field must lie inside the device-config structure the device described.
  const size = t.deviceConfig.size;
  for (
    const [bit, field, end] of [
      [NET_F.MAC, "MAC", NET_CONFIG.MAC + 6],
      [NET_F.STATUS, "STATUS", NET_CONFIG.STATUS + 2],
      [NET_F.MQ, "MQ", NET_CONFIG.MAX_PAIRS + 2],
      [NET_F.MTU, "MTU", NET_CONFIG.MTU + 2],
    ] as const
  ) {
    if (f & bit && size < end) {
      throw new VirtioError(
        `${name}: device config is ${size} bytes, too short for VIRTIO_NET_F_${field} (needs ${end})`,
      );
    }
  }
  const cfg = readConfig(t, (dc) => {
    const mac = new Uint8Array(6);
    if (f & NET_F.MAC) { for (let i = 0; i < 6; i++) mac[i] = dc.read8(NET_CONFIG.MAC + i); }
    return {
      mac,
      maxPairs: f & NET_F.MQ ? dc.read16(NET_CONFIG.MAX_PAIRS) : 1,
      mtu: f & NET_F.MTU ? dc.read16(NET_CONFIG.MTU) : 1500,
    };
  });
  if (!(f & NET_F.MAC)) {
    crypto.getRandomValues(cfg.mac);
    cfg.mac[0] = (cfg.mac[0] & 0xfe) | 0x02; // locally administered unicast
  }
  // §5.1.4: 1..0x8000 pairs; the control queue follows them (index 2 * pairs), and queue indices are 16 bits.
  if (cfg.maxPairs < 1 || cfg.maxPairs > 0x8000 || 2 * cfg.maxPairs > 0xfffe) {
    throw new VirtioError(
      `device reports max_virtqueue_pairs ${cfg.maxPairs}: its queues (and the control queue after them) ` +
        `cannot be addressed with 16-bit queue indices`,
    );
  }
  if (cfg.mtu < 68) throw new VirtioError(`device reports MTU ${cfg.mtu}`);
  return cfg;
}

/** The control virtqueue and the DMA memory its commands go through. */
export class ControlQueue {
  /** Over queue `vq` (its interrupts are disabled: commands are polled) and `mem` ({@link CONTROL_MEM} bytes). */
  constructor(readonly vq: Virtqueue, readonly mem: DmaRegion, readonly name: string) {
    vq.disableInterrupts();
  }

  /** Send a control command and wait for the device's answer. */
  command(cls: number, cmd: number, data: Uint8Array): void {
    const vq = this.vq, mem = this.mem;
    if (data.length > 2000) throw new RangeError("control command too long");
    // Layout: class u8, command u8, data (device-readable); ack u8 (device-writable) at 2048.
    mem.bytes[0] = cls;
    mem.bytes[1] = cmd;
    mem.bytes.set(data, 2);
    mem.bytes[2048] = 0xff;
    const a = mem.deviceAddress;
    const head = vq.addChain([
      { addr: a, len: 2 + data.length, write: false },
      { addr: a + 2048, len: 1, write: true },
    ]);
    if (head < 0) throw new VirtioError("control queue full");
    vq.kick();
    const deadline = performance.now() + 2000;
    while (vq.pending() === 0) {
      if (performance.now() > deadline) {
        throw new VirtioError(`${this.name}: control command ${cls}/${cmd} timed out`);
      }
    }
    vq.popUsed();
    const ack = mem.bytes[2048];
    if (ack !== CTRL.OK) {
      throw new VirtioError(`${this.name}: device rejected control command ${cls}/${cmd} (ack ${ack})`);
    }
  }
}
