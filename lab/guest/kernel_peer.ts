/** The guest kernel as a peer: runs build/pvpeer (lab/c/pvpeer.c) on a kernel-driven NIC. */
import { generate, receive, type RecvResult, type SendResult, type Window } from "../../apps/traffic.ts";
import { parseMac } from "../../drivers/net/nic.ts";
import type { Nic } from "../../drivers/net/nic.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { deviceIrqs, steerIrq } from "../../ffi/cpu.ts";
import { bindDevice } from "../../system/bind.ts";
import { run } from "../netns.ts";

const PVPEER = new URL("../../build/pvpeer", import.meta.url).pathname;

/** Bring up the kernel interface of `pci`, wait for its carrier and return its name and MAC. */
export async function kernelInterface(pci: string): Promise<{ name: string; mac: string }> {
  const name = readDevice(pci).netInterfaces[0];
  if (!name) throw new Error(`${pci} has no kernel network interface (is virtio_net loaded?)`);
  const r = await new Deno.Command("ip", { args: ["link", "set", name, "up"] }).output();
  if (!r.success) throw new Error(`ip link set ${name} up failed`);
  // Wait for the carrier: right after `up`, a first-time interface may not pass frames yet (TCG is slow here).
  const operstate = () => Deno.readTextFileSync(`/sys/class/net/${name}/operstate`).trim();
  for (let i = 0; i < 100 && operstate() !== "up"; i++) await new Promise((r) => setTimeout(r, 50));
  if (operstate() !== "up") {
    throw new Error(`${name} (${pci}) is still ${operstate()} 5 s after ip link set up`);
  }
  const mac = Deno.readTextFileSync(`/sys/class/net/${name}/address`).trim();
  return { name, mac };
}

/** A running pvpeer. */
export class Peer {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  #progress = 0;
  #waiters: (() => void)[] = [];
  #result: Promise<Record<string, number>>;
  #readyResolve!: () => void;
  /** Resolves when the peer's socket is open. */
  readonly ready: Promise<void>;

  /** Start pvpeer with `args`. */
  constructor(args: string[]) {
    this.#child = new Deno.Command(PVPEER, { args, stdin: "piped", stdout: "piped", stderr: "inherit" })
      .spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.ready = new Promise((r) => this.#readyResolve = r);
    if (args[0] === "send" || args[0] === "txrate") this.#readyResolve();
    this.#result = this.#read();
  }

  async #read(): Promise<Record<string, number>> {
    let buf = "", json: Record<string, number> | null = null;
    const dec = new TextDecoder();
    for await (const chunk of this.#child.stdout) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === "ready") this.#readyResolve();
        else if (line.startsWith("progress ")) {
          this.#progress = Number(line.slice(9));
          for (const w of this.#waiters.splice(0)) w();
        } else if (line.startsWith("{")) json = JSON.parse(line);
      }
    }
    const st = await this.#child.status;
    for (const w of this.#waiters.splice(0)) w();
    if (!st.success || !json) {
      throw new Error(`pvpeer ${st.success ? "printed no result" : `exited ${st.code}`}`);
    }
    return json;
  }

  /** The count in the peer's latest "progress N" line. */
  get progress(): number {
    return this.#progress;
  }

  /** Flow control from the peer's "progress N" lines (a receiving peer). */
  window(size: number): Window {
    return {
      size,
      acked: () => this.#progress,
      changed: () => new Promise<void>((r) => this.#waiters.push(r)),
    };
  }

  /** Tell a sending peer how many frames arrived (it stays within its window of that). */
  ack(n: number): void {
    this.#writer.write(new TextEncoder().encode(`${n}\n`)).catch(() => {});
  }

  /** The peer's final JSON. */
  async result(): Promise<Record<string, number>> {
    try {
      await this.#writer.close();
    } catch { /* already closed */ }
    return await this.#result;
  }
}

/** Both directions of {@link exchangeWithKernel}, each with the other side's own count. */
export interface KernelExchange {
  /** pvdrv's sending. */
  tx: SendResult;
  /** What the kernel's AF_PACKET socket verified. */
  kernelReceived: Record<string, number>;
  /** What the kernel sent. */
  kernelSent: Record<string, number>;
  /** pvdrv's verified receiving. */
  rx: RecvResult;
}

/**
 * `count` frames of 60–1514 bytes from pvdrv to the kernel interface (verified there by pvpeer), then `count`
 * from the kernel to pvdrv (verified by pvdrv), each direction flow-controlled to `window` frames in flight.
 */
export async function exchangeWithKernel(
  nic: Nic,
  k: { name: string; mac: string },
  count: number,
  window: number,
): Promise<KernelExchange> {
  const kr = new Peer(["recv", k.name, String(count), "15000", "16"]);
  await kr.ready;
  const tx = await generate(nic, {
    count,
    minSize: 60,
    maxSize: 1514,
    dst: parseMac(k.mac),
    window: kr.window(window),
  });
  const kernelReceived = await kr.result();
  const mac = Array.from(nic.mac, (b) => b.toString(16).padStart(2, "0")).join(":");
  const ks = new Peer(["send", k.name, String(count), "60", "1514", mac, String(window)]);
  const rx = await receive(nic, {
    count,
    idleTimeoutMs: 15000,
    progressEvery: 16,
    onProgress: (ok) => ks.ack(ok),
  });
  const kernelSent = await ks.result();
  return { tx, kernelReceived, kernelSent, rx };
}

/** The kernel's counters of interface `name` (rx_packets, rx_dropped, …), for a failing test to show. */
export function interfaceCounters(name: string): Record<string, number> {
  const dir = `/sys/class/net/${name}/statistics`;
  const out: Record<string, number> = {};
  for (const e of Deno.readDirSync(dir)) {
    const v = Number(Deno.readTextFileSync(`${dir}/${e.name}`).trim());
    if (v) out[e.name] = v;
  }
  return out;
}

/**
 * Give the NIC at `pci` to the guest kernel (virtio_net) with address `cidr` on its interface, up; `release`
 * flushes the address and takes the interface down again, so pvdrv can take the NIC next.
 */
export async function kernelAddress(
  pci: string,
  cidr: string,
): Promise<{ dev: string; release(): Promise<void> }> {
  bindDevice(pci, "kernel"); // as booted: a no-op unless an earlier run left it on vfio-pci
  let dev = "";
  for (let i = 0; i < 100 && !dev; i++) {
    dev = readDevice(pci).netInterfaces[0] ?? "";
    if (!dev) await new Promise((r) => setTimeout(r, 50));
  }
  if (!dev) throw new Error(`${pci} has no kernel network interface 5 s after binding virtio_net`);
  await run("ip", ["addr", "add", cidr, "dev", dev]);
  await run("ip", ["link", "set", dev, "up"]);
  return {
    dev,
    async release() {
      await run("ip", ["addr", "flush", "dev", dev]);
      await run("ip", ["link", "set", dev, "down"]);
    },
  };
}

/**
 * The kernel's ping to `dst`: three of warm-up (and ARP), then `count` at `intervalMs`; the round trips (ms). With
 * `cpu`, ping runs on that CPU only (`taskset`).
 */
export async function kernelPing(
  dst: string,
  count: number,
  intervalMs = 10,
  cpu?: number,
): Promise<number[]> {
  const ping = (args: string[]) =>
    cpu === undefined ? run("ping", args) : run("taskset", ["-c", String(cpu), "ping", ...args]);
  await ping(["-c", "3", "-W", "5", dst]);
  const out = await ping(["-c", String(count), "-i", String(intervalMs / 1000), "-W", "5", dst]);
  return [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
}

/**
 * Deliver every interrupt of the PCI functions `pcis` (their MSI-X vectors, whichever driver holds them) to `cpu`
 * until the returned function puts each back where it was. In the lab the far end of a round trip shares the VM
 * with the driver under test, and under TCG a wake of an idle vCPU takes milliseconds: a round trip that crosses
 * vCPUs pays for it (docs/benchmarks.md, "Where ping's tail comes from").
 */
export function steerInterrupts(pcis: string[], cpu: number): () => void {
  const saved = pcis.flatMap((p) => deviceIrqs(p)).map((irq) => {
    const was = Deno.readTextFileSync(`/proc/irq/${irq}/smp_affinity_list`).trim();
    steerIrq(irq, cpu);
    return [irq, was] as const;
  });
  return () => {
    for (const [irq, was] of saved) Deno.writeTextFileSync(`/proc/irq/${irq}/smp_affinity_list`, `${was}\n`);
  };
}
