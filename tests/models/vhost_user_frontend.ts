/**
 * A vhost-user front end in-process, playing QEMU 7.2's part (vhost-user.rst, and the start order QEMU was seen to
 * use): guest memory in a memfd, a socket pair to the backend, eventfds for kicks and calls, the messages in
 * QEMU's order — and, through {@link VhostUserFrontend.bus}, a {@link VirtioBus} that pvdrv's own `VirtioNet`
 * drives, so the driver and the backend meet on one ring. {@link VhostUserFrontend.request} sends any message (a
 * hostile front end's), and `pump` runs the backend in between (it shares this thread).
 * @module
 */
import { EventFd, EventFdIrq } from "../../ffi/irq.ts";
import { closeFd, FdMapping, FdSocket, memfd } from "../../ffi/unix.ts";
import { type DmaAllocator, type DmaRegion, PAGE, roundUp } from "../../hal/dma.ts";
import type { FdAcceptor, FdChannel } from "../../hal/fds.ts";
import { ModelRegion } from "../../hal/mmio.ts";
import { F, NET_F, STATUS, VIRTIO_ID } from "../../drivers/virtio/features.ts";
import { NET_CONFIG, NET_S_LINK_UP } from "../../drivers/virtio/net_wire.ts";
import type { QueueAddresses, VirtioBus, VirtioTransport } from "../../drivers/virtio/transport.ts";
import {
  readHeader,
  readU64,
  readVringState,
  VHOST_USER,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_FLAG,
  VHOST_USER_HEADER,
  VHOST_USER_PROTOCOL_F,
  writeHeader,
  writeMemTable,
  writeU64,
  writeVringAddr,
  writeVringState,
} from "../../drivers/virtio/vhost_user_wire.ts";

/** Guest physical address of the memory, and its offset in QEMU's (pretend) address space. */
export const GUEST_BASE = 0x4000_0000, USER_DELTA = 0x7f00_0000_0000;

/** An acceptor that hands out one channel (the backend's end of a socket pair). */
export class OneShotAcceptor implements FdAcceptor {
  constructor(public ch: FdChannel | null) {}
  accept(): FdChannel | null {
    const c = this.ch;
    this.ch = null;
    return c;
  }
  readable(): Promise<void> {
    return new Promise(() => {}); // the test calls pumpControl; nothing to wait for
  }
  close(): void {
    this.ch?.close();
    this.ch = null;
  }
}

/** The in-process front end. */
export class VhostUserFrontend {
  readonly sock: FdSocket;
  readonly backendEnd: FdSocket;
  readonly memFd: number;
  readonly mem: FdMapping;
  readonly kicks: EventFd[] = [];
  readonly calls: EventFdIrq;
  readonly errs: EventFd[] = [];
  backendFeatures = 0n;
  queueNum = 0;
  #next = 0;
  #status = 0;
  #driverFeatures = 0n;
  readonly #queues = new Map<number, { size: number; addr: QueueAddresses }>();
  readonly #buf = new Uint8Array(VHOST_USER_HEADER + 4096);
  readonly config: ModelRegion;

  /**
   * `size` bytes of guest memory; `pump` lets the backend run (it shares this thread). With `sock` (connected to a
   * listening backend) the front end uses it; else a socket pair, whose other end is {@link backendEnd}.
   */
  constructor(readonly pump: () => void, readonly vrings = 2, readonly size = 8 << 20, sock?: FdSocket) {
    [this.sock, this.backendEnd] = sock ? [sock, sock] : FdSocket.pair();
    this.memFd = memfd("guest", size);
    this.mem = new FdMapping(this.memFd, size);
    for (let i = 0; i < vrings; i++) this.kicks.push(new EventFd()), this.errs.push(new EventFd());
    this.calls = new EventFdIrq();
    this.config = new ModelRegion("vhost-user frontend config", 0x100);
    const v = this.config.view;
    [0x52, 0x54, 0, 0x12, 0x34, 0x57].forEach((b, i) => v.setUint8(NET_CONFIG.MAC + i, b));
    v.setUint16(NET_CONFIG.STATUS, NET_S_LINK_UP, true);
    v.setUint16(NET_CONFIG.MAX_PAIRS, vrings / 2, true);
  }

  /** Send request `req` with `payload` and `fds`; with `reply`, pump the backend and read its answer. */
  request(req: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], flags = 0): void {
    const b = this.#buf;
    writeHeader(b, { request: req, flags: VHOST_USER_FLAG.VERSION | flags, size: payload.length });
    b.set(payload, VHOST_USER_HEADER);
    this.sock.send(b.subarray(0, VHOST_USER_HEADER + payload.length), fds);
    this.pump();
  }

  /** Read one reply (pumping first): its request and payload. */
  reply(): { request: number; payload: Uint8Array } {
    this.pump();
    if (!this.sock.readableWithin(0)) throw new Error("the backend did not answer");
    const h = new Uint8Array(VHOST_USER_HEADER), fds: number[] = [];
    this.sock.recv(h, fds, 0);
    const hd = readHeader(h);
    if (!(hd.flags & VHOST_USER_FLAG.REPLY)) throw new Error("answer without REPLY");
    const p = new Uint8Array(hd.size);
    if (hd.size) this.sock.recv(p, fds, 0);
    return { request: hd.request, payload: p };
  }

  /** A GET request's u64 answer. */
  getU64(req: number): bigint {
    this.request(req);
    return readU64(this.reply().payload);
  }

  /** The u64 payload of KICK/CALL/ERR or features. */
  static u64(x: bigint | number): Uint8Array {
    const p = new Uint8Array(8);
    writeU64(p, BigInt(x));
    return p;
  }

  /** A vring state payload. */
  static state(index: number, num: number): Uint8Array {
    const p = new Uint8Array(8);
    writeVringState(p, { index, num });
    return p;
  }

  /** QEMU's connect sequence: features, protocol features, queue count, owner, call and error eventfds. */
  connect(): void {
    this.backendFeatures = this.getU64(VHOST_USER.GET_FEATURES);
    const pf = this.getU64(VHOST_USER.GET_PROTOCOL_FEATURES);
    const want = (1n << BigInt(VHOST_USER_PROTOCOL_F.MQ)) | (1n << BigInt(VHOST_USER_PROTOCOL_F.REPLY_ACK));
    this.request(VHOST_USER.SET_PROTOCOL_FEATURES, VhostUserFrontend.u64(pf & want));
    this.queueNum = Number(this.getU64(VHOST_USER.GET_QUEUE_NUM));
    this.request(VHOST_USER.SET_OWNER);
    for (let i = 0; i < this.vrings; i++) {
      this.request(VHOST_USER.SET_VRING_CALL, VhostUserFrontend.u64(i), [this.calls.efd.fd]);
      this.request(VHOST_USER.SET_VRING_ERR, VhostUserFrontend.u64(i), [this.errs[i].fd]);
    }
  }

  /** SET_MEM_TABLE for the whole memfd, with REPLY_ACK; true when acknowledged. */
  setMemTable(): boolean {
    const p = new Uint8Array(8 + 32);
    const n = writeMemTable(p, [{
      guestAddr: BigInt(GUEST_BASE),
      size: BigInt(this.size),
      userAddr: BigInt(GUEST_BASE + USER_DELTA),
      mmapOffset: 0n,
    }]);
    this.request(VHOST_USER.SET_MEM_TABLE, p.subarray(0, n), [this.memFd], VHOST_USER_FLAG.NEED_REPLY);
    return readU64(this.reply().payload) === 0n;
  }

  /** Start vring `i` of `size` at guest addresses `a` from avail index `base`, as QEMU does at DRIVER_OK. */
  startRing(i: number, size: number, a: QueueAddresses, base = 0): void {
    this.request(VHOST_USER.SET_VRING_NUM, VhostUserFrontend.state(i, size));
    this.request(VHOST_USER.SET_VRING_BASE, VhostUserFrontend.state(i, base));
    const p = new Uint8Array(40);
    writeVringAddr(p, {
      index: i,
      flags: 0,
      desc: BigInt(a.desc + USER_DELTA),
      used: BigInt(a.device + USER_DELTA),
      avail: BigInt(a.driver + USER_DELTA),
      log: 0n,
    });
    this.request(VHOST_USER.SET_VRING_ADDR, p);
    this.request(VHOST_USER.SET_VRING_KICK, VhostUserFrontend.u64(i), [this.kicks[i].fd]);
    this.request(VHOST_USER.SET_VRING_CALL, VhostUserFrontend.u64(i), [this.calls.efd.fd]);
    this.request(VHOST_USER.SET_VRING_ENABLE, VhostUserFrontend.state(i, 1));
  }

  /** GET_VRING_BASE: stop vring `i`; the index the backend would take next. */
  stopRing(i: number): number {
    this.request(VHOST_USER.GET_VRING_BASE, VhostUserFrontend.state(i, 0));
    return readVringState(this.reply().payload).num;
  }

  /** Guest memory, bump-allocated: the DMA pvdrv's driver posts buffers in. */
  readonly dma: DmaAllocator = {
    kind: "vhost-user guest memory",
    alloc: (size: number): DmaRegion => {
      const len = roundUp(Math.max(size, 1), PAGE);
      if (this.#next + len > this.size) throw new Error("guest memory exhausted");
      const off = this.#next;
      this.#next += len;
      return {
        bytes: this.mem.bytes.subarray(off, off + len) as Uint8Array<ArrayBuffer>,
        deviceAddress: GUEST_BASE + off,
        size: len,
        free() {},
      };
    },
    close() {},
  };

  /** A {@link VirtioBus} whose device is the backend: the transport turns the driver's steps into messages. */
  bus(): VirtioBus {
    const transport: VirtioTransport = {
      kind: "modern",
      legacy: false,
      deviceConfig: this.config,
      reset: () => {
        for (const i of this.#queues.keys()) this.stopRing(i);
        this.#queues.clear();
        this.#status = 0;
      },
      status: () => this.#status,
      setStatus: (s: number) => {
        const was = this.#status;
        this.#status = s;
        if ((s & STATUS.DRIVER_OK) && !(was & STATUS.DRIVER_OK)) this.#start();
      },
      // QEMU answers MAC and STATUS itself; the ring and net features are the backend's.
      deviceFeatures: () =>
        (this.backendFeatures & ~(1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))) | NET_F.MAC | NET_F.STATUS,
      setDriverFeatures: (f: bigint) => this.#driverFeatures = f,
      numQueues: () => this.vrings,
      queueMaxSize: () => 256,
      setupQueue: (q: number, size: number, addr: QueueAddresses) => this.#queues.set(q, { size, addr }),
      notifier: (q: number) => () => this.kicks[q].signal(),
      setConfigVector: () => 0xffff,
      readIsr: () => 1,
      configGeneration: () => 0,
      close: () => {},
    };
    return {
      name: "vhost-user frontend",
      deviceType: VIRTIO_ID.NET,
      transport,
      dma: this.dma,
      iommu: false,
      irqs: (mode) => mode === "poll" ? [] : [this.calls],
      ackIntx: () => {},
      enableBusMaster: () => {},
      disableIrqs: () => {},
      close: () => {},
    };
  }

  #start(): void {
    const own = NET_F.MAC | NET_F.STATUS;
    const f = (this.#driverFeatures & ~own) | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES));
    this.request(VHOST_USER.SET_FEATURES, VhostUserFrontend.u64(f & (this.backendFeatures | F.VERSION_1)));
    if (!this.setMemTable()) throw new Error("the backend refused the memory table");
    for (const [i, q] of this.#queues) this.startRing(i, q.size, q.addr);
  }

  /** Close the front end's ends (the backend sees the peer leave). */
  close(): void {
    this.sock.close();
    for (const e of [...this.kicks, ...this.errs]) e.close();
    this.calls.close();
    this.mem.unmap();
    closeFd(this.memFd);
  }
}
