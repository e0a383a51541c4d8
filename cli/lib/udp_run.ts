/**
 * The UDP runs of `deno task udp` (and of `send --udp` / `recv --udp`): an echo server, a sender of test datagrams
 * (with --echo, every reply checked), a receiver that checks them.
 * @module
 */
import { openNic } from "../../system/table.ts";
import { pinNicTask } from "./nic_args.ts";
import { type IrqMode, type Nic, settledStats } from "../../drivers/net/nic.ts";
import type { RingFormat } from "../../drivers/virtio/net.ts";
import { ipText } from "../../net/ipv4.ts";
import { checkDatagram, echoRun, recvRun, writeDatagram } from "../../apps/datagrams.ts";
import { frameSize } from "../../apps/traffic.ts";
import { tick } from "../../hal/event_loop.ts";
import { UsageError } from "./common.ts";
import { type HostArgs, startHost } from "./host_args.ts";

/** What a UDP run does. */
export type UdpMode = "echo" | "send" | "recv";

/** A UDP run, its arguments checked. */
export interface UdpRunOptions {
  /** The NIC. */
  name: string;
  /** What to do. */
  mode: UdpMode;
  /** send: the destination. */
  to: { ip: number; port: number } | null;
  /** Local port (0: ephemeral). */
  port: number;
  /** Datagrams (0: no limit for echo and recv). */
  count: number;
  /** Smallest payload. */
  min: number;
  /** Largest payload. */
  max: number;
  /** send: check each echo. */
  echo?: boolean;
  /** send without --echo: datagrams per second (0: as fast as the ring takes them). */
  rate?: number;
  /** send --echo: datagrams in flight. */
  window: number;
  /** send --echo: wait per window; recv: idle limit (ms). */
  timeoutMs: number;
  /** The host's address. */
  addr: HostArgs;
  /** Interrupt mode. */
  irq: IrqMode;
  /** Netfront MTU. */
  mtu?: number;
  /** virtio-net ring format. */
  ring?: RingFormat;
  /** Run the loop on this CPU, with the NIC's interrupts (--cpu). */
  cpu?: number;
  /** Print the summary as JSON. */
  json: boolean;
}

/** Run it; the exit code (0: everything sent, echoed or received intact). */
export async function runUdp(o: UdpRunOptions): Promise<number> {
  const { name, mode, to, port, count, min, max, window, timeoutMs, addr, irq } = o;
  const nic: Nic = await openNic(name, { irq, mtu: o.mtu, ring: o.ring });
  let stopping = false;
  try {
    if (mode === "send" && max > nic.mtu - 28) {
      throw new UsageError(`datagrams can be at most ${nic.mtu - 28} bytes (MTU ${nic.mtu})`);
    }
    pinNicTask(name, o.cpu);
    const host = await startHost(nic, addr, irq);
    // Ctrl-C or SIGTERM ends the run like --count would: the summary is printed, the NIC closed.
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => void (stopping = true));
    }
    const sock = host.udp(port);
    const stop = () => stopping || host.error !== null;
    let result: Record<string, unknown>, ok: boolean;
    if (mode === "echo") {
      let echoed = 0, bad = 0;
      let done: () => void = () => {};
      const finished = new Promise<void>((r) => done = r);
      sock.onDatagram = (d) => {
        if (checkDatagram(d.bytes, d.offset, d.length) < 0) bad++; // not a test datagram: echoed all the same
        if (sock.reply(d)) echoed++;
        if (count && echoed >= count) done();
      };
      console.error(`udp: echoing on ${host.address.split("/")[0]}:${port}`);
      // The host's health is checked too: a host whose NIC failed ends the run with that error.
      const t = setInterval(() => (stopping || host.error) && done(), 100);
      await finished;
      clearInterval(t);
      host.checkHealth();
      result = { mode, port, echoed, nonTest: bad };
      ok = true;
    } else if (mode === "send") {
      if (o.echo) {
        const r = await echoRun(host, sock, to!.ip, to!.port, { count, min, max, window, timeoutMs, stop });
        result = { mode, to: `${ipText(to!.ip)}:${to!.port}`, ...r };
        ok = r.echoed === count && r.corrupt === 0;
      } else {
        const buf = new Uint8Array(max), t0 = performance.now();
        let sent = 0;
        for (let seq = 0; seq < count && !stopping; seq++) {
          const size = frameSize(seq, min, max);
          writeDatagram(buf, seq, size);
          while (!sock.sendBytes(buf, 0, size, to!.ip, to!.port)) {
            await tick(); // ring full: completions free it
          }
          sent++;
          if (o.rate) {
            // Paced: sleep once at least 5 ms ahead of schedule (timers are clamped to 4 ms anyway).
            const ahead = t0 + (sent * 1000) / o.rate - performance.now();
            if (ahead >= 5) await new Promise((r) => setTimeout(r, ahead));
          }
          if (sent % 256 === 0) await tick();
        }
        const seconds = (performance.now() - t0) / 1000;
        result = { mode, to: `${ipText(to!.ip)}:${to!.port}`, sent, seconds, pps: sent / seconds };
        ok = sent === count;
      }
    } else {
      console.error(`udp: receiving on ${host.address.split("/")[0]}:${port}`);
      const r = await recvRun(sock, { count, idleMs: timeoutMs, stop });
      result = { mode, port, ...r };
      ok = r.corrupt === 0 && (count === 0 || r.received === count);
    }
    host.checkHealth(); // a run cut short by a failed host is that failure, not a summary
    result.host = { ...host.stats };
    result.nicStats = settledStats(nic);
    await host.close();
    if (o.json) console.log(JSON.stringify(result));
    else {console.log(
        Object.entries(result).filter(([k]) => k !== "host" && k !== "nicStats").map(([k, v]) => `${k} ${v}`)
          .join(
            ", ",
          ),
      );}
    return ok ? 0 : 1;
  } finally {
    await nic.close();
  }
}
