/**
 * The VM lab's topology, declared once: every NIC the guest sees (PCI address, MAC, which virtio-net it is) and
 * what its wire leads to. The outer side (lab/outer/qemu.ts) turns it into QEMU arguments; the guest's programs and
 * tests read addresses and MACs from it.
 *
 *  - 0000:00:04.0 modern virtio-net (iommu_platform, for VFIO)  ⇄  0000:00:05.0 virtio-net driven by the guest kernel
 *  - 0000:00:06.0 modern virtio-net (iommu_platform, for VFIO)  ⇄  the wire peer: a UDP socket outside the VM
 *  - 0000:00:07.0 transitional virtio-net (legacy I/O BAR, UIO) ⇄  0000:00:08.0 virtio-net driven by the guest kernel
 *  - 0000:00:09.0 modern virtio-net (iommu_platform, for VFIO)  ⇄  the forwarding sink: a second UDP port outside
 *  - 0000:00:0a.0 (runs with `multiQueueTap`) modern virtio-net, 4 queue pairs  ⇄  a multi-queue TAP device in a
 *    network namespace made for the run, where lab/c/mqpeer.c answers (lab/c/tapfds.c creates the TAP there)
 *
 * Every wire but the TAP is `-netdev dgram` on 127.0.0.1; the outer machine's own network gets no device.
 * @module
 */

/** Which virtio-net a lab NIC is: for VFIO (modern, behind the vIOMMU), for UIO (transitional), or the kernel's. */
export type LabDevice = "modern" | "transitional" | "kernel";

/** Where a lab NIC's wire leads: another lab NIC (by name), the wire peer, the forwarding sink, or the TAP. */
export type LabLink = LabNicName | "wire-peer" | "forward-sink" | "mq-tap";

/** One NIC of the lab. */
export interface LabNic {
  /** PCI address in the guest. */
  readonly pci: string;
  /** MAC address. */
  readonly mac: string;
  /** Which virtio-net it is. */
  readonly device: LabDevice;
  /** What its wire leads to. */
  readonly link: LabLink;
}

/** The lab NICs' names. */
export type LabNicName =
  | "vfioKernelPeer"
  | "kernelPeer"
  | "vfioWirePeer"
  | "uioKernelPeer"
  | "uioPeer"
  | "vfioForwardOut"
  | "multiQueueTap";

/** Every NIC of the lab, as the guest sees it. */
export const LAB: Readonly<Record<LabNicName, LabNic>> = {
  vfioKernelPeer: { pci: "0000:00:04.0", mac: "52:54:00:12:34:01", device: "modern", link: "kernelPeer" },
  kernelPeer: { pci: "0000:00:05.0", mac: "52:54:00:12:34:02", device: "kernel", link: "vfioKernelPeer" },
  vfioWirePeer: { pci: "0000:00:06.0", mac: "52:54:00:12:34:03", device: "modern", link: "wire-peer" },
  uioKernelPeer: { pci: "0000:00:07.0", mac: "52:54:00:12:34:04", device: "transitional", link: "uioPeer" },
  uioPeer: { pci: "0000:00:08.0", mac: "52:54:00:12:34:05", device: "kernel", link: "uioKernelPeer" },
  vfioForwardOut: { pci: "0000:00:09.0", mac: "52:54:00:12:34:06", device: "modern", link: "forward-sink" },
  multiQueueTap: { pci: "0000:00:0a.0", mac: "52:54:00:12:34:07", device: "modern", link: "mq-tap" },
};

/** Queue pairs of the multi-queue TAP NIC (0000:00:0a.0). */
export const MQ_QUEUES = 4;

/** The wire peer's MAC (locally administered). */
export const WIRE_PEER_MAC = new Uint8Array([0x02, 0, 0, 0, 0, 0xfe]);

/** What lab/c/mqpeer.c counted on the multi-queue TAP link over the whole run. */
export interface MqPeerCounts {
  /** Flow frames from the guest with every byte right. */
  valid: number;
  /** Flow frames from the guest with a wrong length, checksum or byte. */
  corrupt: number;
  /** Other frames from the guest. */
  foreign: number;
  /** Bytes of the valid frames. */
  bytes: number;
  /** Frames sent back. */
  reflected: number;
  /** Frames blasted on request. */
  blasted: number;
  /** Frames the TAP device refused. */
  dropped: number;
  /** Flow frames the peer's socket lost (not read in time, or not read at all while listening is off). */
  socketDrops: number;
}

/** One virtio-blk disk of the lab, on a raw file in the run's folder (so the outer side reads what was written). */
export interface LabDisk {
  /** PCI address in the guest. */
  readonly pci: string;
  /** Which virtio-blk it is: for VFIO, for UIO, or left to the guest kernel's virtio_blk. */
  readonly device: LabDevice;
  /** Its backing file, in the run's /out folder. */
  readonly file: string;
  /** Size in MiB. */
  readonly mib: number;
  /** Request queues (num-queues). */
  readonly queues: number;
  /** The serial GET_ID answers. */
  readonly serial: string;
}

/** The lab's disks: the same size and shape, one per way of driving it. */
export const LAB_DISKS: Readonly<Record<"vfioDisk" | "uioDisk" | "kernelDisk", LabDisk>> = {
  vfioDisk: {
    pci: "0000:00:0b.0",
    device: "modern",
    file: "disk-vfio.img",
    mib: 64,
    queues: 2,
    serial: "pvdrv-vfio",
  },
  uioDisk: {
    pci: "0000:00:0c.0",
    device: "transitional",
    file: "disk-uio.img",
    mib: 64,
    queues: 1,
    serial: "pvdrv-uio",
  },
  kernelDisk: {
    pci: "0000:00:0d.0",
    device: "kernel",
    file: "disk-kernel.img",
    mib: 64,
    queues: 2,
    serial: "pvdrv-kernel",
  },
};

/** Where the lab guest has nbdkit's file plugin (nbdkit takes plugins by path; the guest has no plugin folder). */
export const NBDKIT_FILE_PLUGIN = "/lib/nbdkit/nbdkit-file-plugin.so";

/** One of the Xen lab's virtual disks, as the domU sees it. */
export interface XenVbd {
  /** The vbd number (xenstore device/vbd/N: 202 << 8 | 16 × disk index). */
  vbd: number;
  /** The name in the domU's config. */
  vdev: string;
  /** Size in MiB. */
  mib: number;
  /** The size dom0 grows it to (the resize disk only). */
  grownMib?: number;
}

/**
 * The Xen lab's disks, served by dom0's xen-blkback: pvdrv's and the kernel's identical disks (the benchmark and the
 * host's check of what pvdrv wrote); a read-only disk the host filled with {@link XEN_RO_SEED}'s pattern; and a
 * disk dom0 grows to `grownMib` when the domU asks (a loop device over a file in dom0).
 */
export const XEN_VBDS = {
  pvdrv: { vbd: 51712, vdev: "xvda", mib: 128 },
  kernel: { vbd: 51728, vdev: "xvdb", mib: 128 },
  readOnly: { vbd: 51744, vdev: "xvdc", mib: 16 },
  resize: { vbd: 51760, vdev: "xvdd", mib: 32, grownMib: 48 },
} as const satisfies Record<string, XenVbd>;
/** The pattern (apps/disk_verify.ts patternByte, write number) the host writes on the read-only disk. */
export const XEN_RO_SEED = 4242;

/** One NIC of the lab on `-netdev vhost-user`, served on the host by pvdrv's switch (`deno task switch`). */
export interface VhostLabNic {
  /** PCI address in the guest. */
  readonly pci: string;
  /** MAC address. */
  readonly mac: string;
  /** Driven by the guest kernel's virtio_net, or transitional (legacy I/O BAR) for pvdrv's UIO driver. */
  readonly device: "kernel" | "transitional";
}

/**
 * The vhost-user NICs (with `vhostSwitch`): two the guest kernel drives and one for pvdrv's own driver, all three
 * ports of one pvdrv switch on the host, so guest traffic crosses pvdrv's backend twice on its way between them.
 */
export const VHOST_LAB = {
  kernelA: { pci: "0000:00:0e.0", mac: "52:54:00:12:35:01", device: "kernel" },
  kernelB: { pci: "0000:00:0f.0", mac: "52:54:00:12:35:02", device: "kernel" },
  uio: { pci: "0000:00:10.0", mac: "52:54:00:12:35:03", device: "transitional" },
} as const satisfies Record<string, VhostLabNic>;

/** `bench --vhost`'s NIC on QEMU's own `-netdev dgram` backend, beside the vhost-user NIC (the third backend). */
export const VHOST_BENCH_DGRAM = { pci: "0000:00:11.0", mac: "52:54:00:12:35:11" } as const;
