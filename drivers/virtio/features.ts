/**
 * virtio feature bits and status values (virtio 1.2 §2.1, §2.2, §5.1.3, §6).
 * @module
 */

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

const NAMES: [bigint, string][] = [
  ...Object.entries(NET_F).map(([k, v]) => [v, k] as [bigint, string]),
  ...Object.entries(F).map(([k, v]) => [v, k] as [bigint, string]),
];

/** Names of the known bits set in `f`, for logs and the probe. */
export function featureNames(f: bigint): string[] {
  return NAMES.filter(([b]) => (f & b) !== 0n).map(([, n]) => n);
}
