/**
 * virtio-net wire formats (virtio 1.2 §5.1): the device configuration, the `virtio_net_hdr` in front of every frame,
 * and control-queue commands. Header accessors work on a pool's u16 view at a buffer's slot, so the hot path makes
 * no views.
 * @module
 */

/** virtio_net_config offsets (virtio 1.2 §5.1.4): mac[6], status u16, max_virtqueue_pairs u16, mtu u16. */
export const NET_CONFIG = { MAC: 0, STATUS: 6, MAX_PAIRS: 8, MTU: 10 } as const;
/** virtio_net_config.status bit: link up. */
export const NET_S_LINK_UP = 1;

/** virtio_net_hdr length: 12 with VERSION_1 or MRG_RXBUF (num_buffers present), else 10 (§5.1.6). */
export function netHdrLen(version1OrMergeable: boolean): number {
  return version1OrMergeable ? 12 : 10;
}

/** virtio_net_hdr.flags: the driver asks the device to checksum (§5.1.6.2). */
export const HDR_F_NEEDS_CSUM = 1;
/** virtio_net_hdr flags an application sees on receive: NEEDS_CSUM (1) and DATA_VALID (2), §5.1.6.4. */
export const HDR_RX_FLAGS = 3;

/**
 * The bits of a TX header's third word that are not the header's, for {@link writeTxHeader}: none with a 12-byte
 * header; with a 10-byte one (§5.1.6: legacy without MRG_RXBUF) the word's upper half is the frame's first two
 * bytes, which the header write keeps.
 */
export function txHeaderTail(hdrLen: number): number {
  return hdrLen === 12 ? 0 : 0xffff0000;
}

/**
 * Write the header of a frame to send at u32 index `w` (the slot start / 4; slots are 4-byte aligned): flags and
 * gso_type, hdr_len, gso_size, csum_start, csum_offset[, num_buffers] (§5.1.6), little-endian as the host, asking
 * the device to checksum from `csumStart` into `csumStart + csumOffset`. `tail`: {@link txHeaderTail}.
 */
export function writeTxHeader(
  u32: Uint32Array,
  w: number,
  tail: number,
  csumStart: number,
  csumOffset: number,
): void {
  u32[w] = HDR_F_NEEDS_CSUM; // flags u8, gso_type u8 (GSO_NONE), hdr_len u16 0
  u32[w + 1] = csumStart << 16; // gso_size u16 0, csum_start u16
  u32[w + 2] = (u32[w + 2] & tail) | csumOffset; // csum_offset u16, then num_buffers u16 0 (12-byte header)
}

/**
 * The header of a frame that asks for no offload: every field 0 (no flags, GSO_NONE), as {@link writeTxHeader}
 * lays it out. Three word stores and no branch: it is in every frame's path.
 */
export function writePlainTxHeader(u32: Uint32Array, w: number, tail: number): void {
  u32[w] = 0;
  u32[w + 1] = 0;
  u32[w + 2] &= tail;
}

/**
 * The header a device writes in front of a received frame at byte `at` (4-byte aligned when `hdrLen` is 12): no
 * flags, GSO_NONE, no checksum fields, and num_buffers = `numBuffers` in a 12-byte header (§5.1.6.4); `u32` and
 * `u8` view the same memory from its first byte.
 */
export function writeRxHeader(
  u32: Uint32Array,
  u8: Uint8Array,
  at: number,
  hdrLen: number,
  numBuffers: number,
): void {
  if (hdrLen === 12) {
    const w = at >> 2;
    u32[w] = 0, u32[w + 1] = 0, u32[w + 2] = numBuffers << 16;
  } else u8.fill(0, at, at + hdrLen);
}

/** num_buffers of a received header at u16 index `h` (§5.1.6.4; only with MRG_RXBUF or VERSION_1). */
export function rxNumBuffers(u16: Uint16Array, h: number): number {
  return u16[h + 5];
}

/** Control-queue classes and commands (§5.1.6.5). */
export const CTRL = {
  RX: 0,
  RX_PROMISC: 0,
  RX_ALLMULTI: 1,
  MAC: 1,
  MAC_TABLE_SET: 0,
  MAC_ADDR_SET: 1,
  MQ: 4,
  MQ_VQ_PAIRS_SET: 0,
  /** The device's answer: done. */
  OK: 0,
} as const;

/** Data of VIRTIO_NET_CTRL_MAC_TABLE_SET: two tables, each a le32 count then 6-byte entries (§5.1.6.5.2). */
export function macTableData(unicast: Uint8Array[], multicast: Uint8Array[]): Uint8Array {
  const data = new Uint8Array(8 + 6 * (unicast.length + multicast.length));
  const dv = new DataView(data.buffer);
  let o = 0;
  for (const t of [unicast, multicast]) {
    dv.setUint32(o, t.length, true);
    o += 4;
    for (const m of t) {
      if (m.length !== 6) throw new RangeError("MAC addresses are 6 bytes");
      data.set(m, o);
      o += 6;
    }
  }
  return data;
}
