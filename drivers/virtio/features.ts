/**
 * virtio device types, feature bits and status values (virtio 1.2 §2.1, §2.2, §5, §6): the transport's bits
 * and each device type's own, so every class decodes its features the same way.
 * @module
 */

/** virtio device type ids (virtio 1.2 §5). */
export const VIRTIO_ID = { NET: 1, BLOCK: 2 } as const;

/** Device status bits (virtio 1.2 §2.1). */
export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** A feature bit as a bigint mask. */
export const bit = (n: number): bigint => 1n << BigInt(n);

/** Names of the device-independent feature bits pvdrv uses. */
export type ReservedFeature =
  | "ANY_LAYOUT"
  | "RING_INDIRECT_DESC"
  | "RING_EVENT_IDX"
  | "VERSION_1"
  | "ACCESS_PLATFORM"
  | "RING_PACKED"
  | "IN_ORDER";
/** Names of the virtio-net feature bits pvdrv knows. */
export type NetFeature =
  | "CSUM"
  | "GUEST_CSUM"
  | "MTU"
  | "MAC"
  | "GUEST_TSO4"
  | "MRG_RXBUF"
  | "STATUS"
  | "CTRL_VQ"
  | "CTRL_RX"
  | "CTRL_VLAN"
  | "GUEST_ANNOUNCE"
  | "MQ"
  | "CTRL_MAC_ADDR";

/** Reserved (device-independent) feature bits (virtio 1.2 §6). */
export const F: Readonly<Record<ReservedFeature, bigint>> = {
  ANY_LAYOUT: bit(27), // legacy only
  RING_INDIRECT_DESC: bit(28),
  RING_EVENT_IDX: bit(29),
  VERSION_1: bit(32),
  ACCESS_PLATFORM: bit(33),
  RING_PACKED: bit(34),
  IN_ORDER: bit(35),
};

/** virtio-net feature bits (virtio 1.2 §5.1.3). */
export const NET_F: Readonly<Record<NetFeature, bigint>> = {
  CSUM: bit(0),
  GUEST_CSUM: bit(1),
  MTU: bit(3),
  MAC: bit(5),
  GUEST_TSO4: bit(7),
  MRG_RXBUF: bit(15),
  STATUS: bit(16),
  CTRL_VQ: bit(17),
  CTRL_RX: bit(18),
  CTRL_VLAN: bit(19),
  GUEST_ANNOUNCE: bit(21),
  MQ: bit(22),
  CTRL_MAC_ADDR: bit(23),
};

/** Names of the virtio-blk feature bits pvdrv knows. */
export type BlkFeature =
  | "SIZE_MAX"
  | "SEG_MAX"
  | "GEOMETRY"
  | "RO"
  | "BLK_SIZE"
  | "FLUSH"
  | "TOPOLOGY"
  | "CONFIG_WCE"
  | "MQ"
  | "DISCARD"
  | "WRITE_ZEROES"
  | "LIFETIME"
  | "SECURE_ERASE";

/** virtio-blk feature bits (virtio 1.2 §5.2.3). */
export const BLK_F: Readonly<Record<BlkFeature, bigint>> = {
  SIZE_MAX: bit(1),
  SEG_MAX: bit(2),
  GEOMETRY: bit(4),
  RO: bit(5),
  BLK_SIZE: bit(6),
  FLUSH: bit(9),
  TOPOLOGY: bit(10),
  CONFIG_WCE: bit(11),
  MQ: bit(12),
  DISCARD: bit(13),
  WRITE_ZEROES: bit(14),
  LIFETIME: bit(15),
  SECURE_ERASE: bit(16),
};

const pairs = (t: Readonly<Record<string, bigint>>): [bigint, string][] =>
  Object.entries(t).map(([k, v]) => [v, k]);
const RESERVED_NAMES = pairs(F);
/** Each device type's own bits (0..23), by type id; the reserved bits mean the same for all. */
const DEVICE_NAMES: Record<number, [bigint, string][]> = {
  [VIRTIO_ID.NET]: pairs(NET_F),
  [VIRTIO_ID.BLOCK]: pairs(BLK_F),
};

/**
 * Names of the known bits set in `f` for a device of type `deviceType` (logs, the probe); a device-specific bit
 * this table does not name shows as "bit N".
 */
export function featureNames(f: bigint, deviceType: number): string[] {
  const own = DEVICE_NAMES[deviceType] ?? [];
  const out: string[] = [];
  for (let n = 0; n < 24; n++) {
    const b = bit(n);
    if ((f & b) === 0n) continue;
    out.push(own.find(([v]) => v === b)?.[1] ?? `bit ${n}`);
  }
  for (const [b, name] of RESERVED_NAMES) if ((f & b) !== 0n) out.push(name);
  return out;
}
