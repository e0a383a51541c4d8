/**
 * In-process cost of the device side: pvdrv's vhost-user backend (VhostUserNet on DeviceQueue) taking 32 frames a
 * guest transmits, and putting 32 frames into a guest's receive buffers, in guest memory shared through a memfd
 * exactly as QEMU shares it. The guest's descriptors are static and each batch only publishes heads, so the work
 * measured is the device's: avail index and heads checked, descriptors walked and checked, data copied with the
 * header stripped or written, used entries and the EVENT_IDX decision. The baseline is C doing the same
 * device-side work (bench/ring_loop.c `ring_backend_*`), so the report reads as TS/C; the word copies alone
 * (drivers/core/copy.ts, as the backend copies each header and frame) are shown as the floor.
 * @module
 */
import { LINUX_FD_OPS } from "../ffi/unix.ts";
import { VhostUserNet } from "../drivers/virtio/vhost_net.ts";
import { F, NET_F } from "../drivers/virtio/features.ts";
import { DESC_F_WRITE } from "../drivers/virtio/split_ring.ts";
import { VHOST_USER, VHOST_USER_F_PROTOCOL_FEATURES } from "../drivers/virtio/vhost_user_wire.ts";
import type { PacketBuffer } from "../drivers/net/packet_pool.ts";
import { GUEST_BASE, OneShotAcceptor, VhostUserFrontend } from "../tests/models/vhost_user_frontend.ts";
import { HostileGuest, Q } from "../tests/models/vhost_guest.ts";
import { type BenchCase, ringLoopLibrary } from "./cases.ts";
import { copyBytes } from "../drivers/core/copy.ts";

const BATCH = 32, FRAME = 64, HDR = 12;

/** The device-side cases and what closes them. */
export function vhostDeviceCases(): { cases: BenchCase[]; close(): void } {
  let nic: VhostUserNet | null = null;
  const fe = new VhostUserFrontend(() => nic?.pumpControl(), 2, 2 << 20);
  nic = new VhostUserNet(new OneShotAcceptor(fe.backendEnd), LINUX_FD_OPS, {
    mac: new Uint8Array([2, 0, 0, 0, 0, 9]),
    irq: false,
  });
  const n = nic;
  n.pumpControl();
  fe.connect();
  fe.request(
    VHOST_USER.SET_FEATURES,
    VhostUserFrontend.u64(
      F.VERSION_1 | F.RING_EVENT_IDX | NET_F.MRG_RXBUF | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)),
    ),
  );
  if (!fe.setMemTable()) throw new Error("memory table refused");
  const g = new HostileGuest(fe);
  g.start();
  for (let h = 0; h < Q; h++) {
    g.tx.bytes(HostileGuest.buffer(Q + h), HDR).fill(0);
    g.tx.desc(h, HostileGuest.buffer(Q + h), HDR + FRAME, 0, 0);
    g.rx.desc(h, HostileGuest.buffer(h), 2048, DESC_F_WRITE, 0);
  }
  const out: PacketBuffer[] = new Array(BATCH), bufs: PacketBuffer[] = new Array(BATCH);
  let txHead = 0, rxHead = 0;
  const lib = ringLoopLibrary({
    ring_new: { parameters: [], result: "pointer" },
    ring_backend_setup: { parameters: ["pointer", "u32", "i32"], result: "void" },
    ring_backend_tx: { parameters: ["pointer", "i32", "u32"], result: "i32" },
    ring_backend_rx: { parameters: ["pointer", "i32", "u32"], result: "i32" },
  });
  const c = lib.symbols;
  const ctx = c.ring_new(), crx = c.ring_new();
  c.ring_backend_setup(ctx, FRAME, 0);
  c.ring_backend_setup(crx, FRAME, 1);
  // The floor under either direction: pvdrv's word copy (drivers/core/copy.ts) of each header and frame between
  // guest memory and a host pool, and nothing else.
  const guest = fe.mem.bytes,
    guest32 = new Uint32Array(guest.buffer, guest.byteOffset, guest.byteLength >> 2);
  const host = new Uint8Array(Q * 2048), host32 = new Uint32Array(host.buffer);
  let slot = 0;
  const copyFloor = (out: boolean) => {
    for (let i = 0; i < BATCH; i++, slot = (slot + 1) & (Q - 1)) {
      const g = HostileGuest.buffer(Q + slot) - GUEST_BASE, h = slot << 11;
      if (out) copyBytes(guest, guest32, g, host, host32, h, HDR + FRAME);
      else copyBytes(host, host32, h, guest, guest32, g, HDR + FRAME);
    }
  };
  const cases: BenchCase[] = [
    {
      name: "C device side: take 32 guest TX frames (checks, copy out, used)",
      group: "device tx",
      baseline: true,
      fn() {
        if (c.ring_backend_tx(ctx, BATCH, FRAME) !== BATCH) throw new Error("C device TX short");
      },
    },
    {
      name: "floor: 32 x 76-byte word copies out of guest memory",
      group: "device tx",
      fn: () => copyFloor(true),
    },
    {
      name: "pvdrv vhost-user: receiveBatch + release, 32 x 64-byte guest TX frames",
      group: "device tx",
      fn() {
        g.tx.publishRun(txHead, BATCH);
        txHead += BATCH;
        const k = n.receiveBatch(out, BATCH);
        n.release(out, k);
        if (k !== BATCH) throw new Error(`took ${k} of ${BATCH}`);
      },
    },
    {
      name: "C device side: put 32 frames into guest RX buffers (checks, header, copy in, used)",
      group: "device rx",
      baseline: true,
      fn() {
        if (c.ring_backend_rx(crx, BATCH, FRAME) !== BATCH) throw new Error("C device RX short");
      },
    },
    {
      name: "floor: 32 x 76-byte word copies into guest memory",
      group: "device rx",
      fn: () => copyFloor(false),
    },
    {
      name: "pvdrv vhost-user: allocTx + sendBatch, 32 x 64-byte frames into guest RX buffers",
      group: "device rx",
      fn() {
        g.rx.publishRun(rxHead, BATCH);
        rxHead += BATCH;
        const k = n.allocTx(bufs, BATCH);
        for (let i = 0; i < k; i++) bufs[i].length = FRAME;
        const sent = n.sendBatch(bufs, k);
        if (sent !== BATCH) throw new Error(`put ${sent} of ${BATCH}`);
      },
    },
  ];
  return {
    cases,
    close() {
      void n.close();
      fe.close();
      lib.close();
    },
  };
}
