/**
 * The wire peer: the outer end of 0000:00:06.0's wire (lab/topology.ts), a UDP socket on 127.0.0.1 outside the VM
 * that sees every frame the guest NIC sends and can send frames to it, so a test checks what left QEMU.
 * @module
 */
import { checkFrame, FrameCheck } from "../../apps/frames.ts";
import { WIRE_PEER_MAC } from "../topology.ts";

/** A free UDP port on 127.0.0.1. */
export function freeUdpPort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

/**
 * The host side of 0000:00:06.0's link: a UDP socket on 127.0.0.1 that receives every frame the guest NIC sends
 * and can send frames to it.
 */
export class WirePeer {
  /** The socket. */
  readonly socket: Deno.DatagramConn;
  /** Port the peer listens on (pass as `wirePeerPort`). */
  readonly port: number;
  /** Port QEMU listens on for this link (pass as `guestPortForWire`). */
  readonly guestPort: number;

  /** Binds a socket on a free port. */
  constructor() {
    this.socket = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    this.port = (this.socket.addr as Deno.NetAddr).port;
    this.guestPort = freeUdpPort();
  }

  /** Send one Ethernet frame to the guest NIC. */
  send(frame: Uint8Array): Promise<number> {
    return this.socket.send(frame, { transport: "udp", hostname: "127.0.0.1", port: this.guestPort });
  }

  /** Receive frames until the socket closes; `onFrame` sees each one. */
  async receive(onFrame: (frame: Uint8Array) => void): Promise<void> {
    try {
      for await (const [data] of this.socket) onFrame(data);
    } catch (e) {
      if (!(e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted)) throw e;
    }
  }

  /**
   * Reflect every pvdrv test frame back to the guest with the MACs swapped, verifying each on the way.
   * Runs until the socket closes; counters are in {@link reflected}.
   */
  async reflect(): Promise<void> {
    const seq = new Uint32Array(1);
    await this.receive((f) => {
      const c = checkFrame(f, f.length, seq);
      if (c === FrameCheck.Foreign) {
        this.reflected.foreign++;
        return;
      }
      if (c === FrameCheck.Corrupt) {
        this.reflected.corrupt++;
        return;
      }
      this.reflected.valid++;
      const back = new Uint8Array(f);
      back.set(f.subarray(6, 12), 0);
      back.set(WIRE_PEER_MAC, 6);
      this.send(back).catch(() => this.reflected.sendErrors++);
    });
  }

  /** What {@link reflect} saw. */
  readonly reflected = { valid: 0, corrupt: 0, foreign: 0, sendErrors: 0 };

  /** Close the socket. */
  close(): void {
    try {
      this.socket.close();
    } catch { /* closed */ }
  }
}
