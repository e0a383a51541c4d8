/**
 * The VM lab: boots the guest under QEMU with pvdrv's NICs and runs one command in it, streaming its output and
 * returning its exit status. The project tree is shared read-only over 9p (a code change needs no rebuild); a
 * per-run folder is shared read-write as /out for the command script and results.
 *
 * Topology (fixed addresses, so tests and the demo know them):
 *  - 0000:00:04.0 modern virtio-net (iommu_platform, for VFIO)  ⇄  0000:00:05.0 virtio-net driven by the guest kernel
 *  - 0000:00:06.0 modern virtio-net (iommu_platform, for VFIO)  ⇄  a UDP socket on the host (the host peer)
 *  - 0000:00:07.0 transitional virtio-net (legacy I/O BAR, UIO) ⇄  0000:00:08.0 virtio-net driven by the guest kernel
 *  - 0000:00:09.0 modern virtio-net (iommu_platform, for VFIO)  ⇄  a second UDP port on the host (forwarding out)
 *  - 0000:00:0a.0 (with `multiQueueTap`) modern virtio-net, 4 queue pairs  ⇄  a multi-queue TAP device in a network
 *    namespace made for the run, where lab/mqpeer.c answers (lab/tapfds.c creates the TAP there and starts QEMU)
 * Every other link is `-netdev dgram` on 127.0.0.1; no other address is used, and the host's own network
 * namespace gets no device.
 * @module
 */
import { PvdrvError } from "../hal/errors.ts";
import { buildNative, isStale } from "../ffi/lib.ts";
import { buildGuest, ensureCompiler, ensureQemu, type GuestImage, VM_DIR } from "./guest_image.ts";
import { checkFrame, FrameCheck } from "../apps/frames.ts";
import { NetNs } from "./netns.ts";

/** The host peer's MAC (locally administered). */
export const HOST_MAC = new Uint8Array([0x02, 0, 0, 0, 0, 0xfe]);

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");

/** PCI addresses and MACs of the lab's NICs, as the guest sees them. */
export const LAB = {
  vfioKernelPeer: { pci: "0000:00:04.0", mac: "52:54:00:12:34:01" },
  kernelPeer: { pci: "0000:00:05.0", mac: "52:54:00:12:34:02" },
  vfioHostPeer: { pci: "0000:00:06.0", mac: "52:54:00:12:34:03" },
  uioKernelPeer: { pci: "0000:00:07.0", mac: "52:54:00:12:34:04" },
  uioPeer: { pci: "0000:00:08.0", mac: "52:54:00:12:34:05" },
  vfioForwardOut: { pci: "0000:00:09.0", mac: "52:54:00:12:34:06" },
  multiQueueTap: { pci: "0000:00:0a.0", mac: "52:54:00:12:34:07" },
} as const;

/** Queue pairs of the multi-queue TAP NIC (0000:00:0a.0). */
export const MQ_QUEUES = 4;
/** The TAP device's name inside the run's namespace. */
const MQ_TAP = "pvmq0";

/** Options for {@link runInGuest}. */
export interface LabOptions {
  /** Give up (and kill QEMU) after this many seconds. */
  timeoutSec?: number;
  /** Guest memory in MiB. */
  memoryMb?: number;
  /** Called with each line the command prints (default: echo to stdout). */
  onLine?: (line: string) => void;
  /** UDP port on 127.0.0.1 where the host peer listens (frames from 0000:00:06.0 go there). */
  hostPeerPort?: number;
  /** UDP port QEMU listens on for the host peer's frames (frames sent there arrive at 0000:00:06.0). */
  guestPortForHost?: number;
  /** UDP port on 127.0.0.1 where frames sent by 0000:00:09.0 go (the benchmark's forwarding sink). */
  forwardSinkPort?: number;
  /** Files to place in /out before boot (name → contents). */
  files?: Record<string, string | Uint8Array>;
  /** Told the run's /out folder before boot. */
  onOutDir?: (dir: string) => void;
  /**
   * Add 0000:00:0a.0 on a multi-queue TAP device in a network namespace made for the run, answered there by
   * lab/mqpeer.c (needs root, `unshare` and `ip`). Its counters come back in {@link LabRun.mqPeer}.
   */
  multiQueueTap?: boolean;
}

/** What lab/mqpeer.c counted on the multi-queue TAP link over the whole run. */
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

/** The result of one lab run. */
export interface LabRun {
  /** The command's exit status. */
  code: number;
  /** Everything the command printed. */
  output: string;
  /** The run's /out folder on the host (results written by the guest). */
  outDir: string;
  /** Host seconds from QEMU start to the command starting. */
  bootSeconds: number;
  /** Host seconds the command ran. */
  commandSeconds: number;
  /** The guest image used. */
  image: GuestImage;
  /** The multi-queue TAP peer's counters (with `multiQueueTap`). */
  mqPeer?: MqPeerCounts;
}

/** A lab failure that is not the command's own exit status (boot, modules, timeout). */
export class LabError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("lab", msg);
  }
}

/** A free UDP port on 127.0.0.1. */
export function freeUdpPort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

function dgram(id: string, local: number, remote: number): string[] {
  return [
    "-netdev",
    `dgram,id=${id},local.type=inet,local.host=127.0.0.1,local.port=${local},remote.type=inet,remote.host=127.0.0.1,remote.port=${remote}`,
  ];
}

/** Quote a word for sh. */
export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/** Build lab/pvpeer.c statically into build/pvpeer when missing or stale (the guest has no compiler). */
export function buildPeerTool(): string {
  return buildLabTool("pvpeer", true);
}

/** Build lab/<name>.c into build/<name> when missing or stale (`guest`: statically, for the guest). */
export function buildLabTool(name: string, guest = false): string {
  return compileC(`${ROOT}/lab/${name}.c`, `${ROOT}/build/${name}`, guest ? ["-static"] : [], [
    `${ROOT}/lab/test_frame.h`,
  ]);
}

/**
 * Compile the C file `src` into `out` with `flags` (warnings are errors) when `out` is missing or older than `src`
 * or one of `deps`; returns `out`.
 */
export function compileC(src: string, out: string, flags: string[], deps: string[] = []): string {
  if (![src, ...deps].some((d) => isStale(out, d))) return out;
  Deno.mkdirSync(out.slice(0, out.lastIndexOf("/")), { recursive: true });
  const r = new Deno.Command(Deno.env.get("CC") ?? "cc", {
    args: ["-O2", "-Wall", "-Wextra", "-Werror", ...flags, "-o", out, src],
    stderr: "piped",
  }).outputSync();
  if (!r.success) throw new LabError(`building ${out} failed:\n${new TextDecoder().decode(r.stderr)}`);
  return out;
}

/**
 * Run QEMU with `args` plus a serial console on stdio (no display, no monitor, no reboot), calling `onLine` for
 * each console line (without the serial \r), and SIGKILL it after `timeoutSec`. Returns its exit status and stderr.
 */
export async function runQemu(
  args: string[],
  timeoutSec: number,
  onLine: (line: string) => void,
  launcher: string[] = [],
): Promise<{ status: Deno.CommandStatus; stderr: string; timedOut: boolean }> {
  const serialConsole = ["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"];
  const [cmd, ...pre] = [...launcher, "qemu-system-x86_64"];
  const child = new Deno.Command(cmd, {
    args: [...pre, ...serialConsole, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, timeoutSec * 1000);
  const stderrP = new Response(child.stderr).text();
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of child.stdout) {
    buf += dec.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, i).replace(/\r$/, ""));
      buf = buf.slice(i + 1);
    }
  }
  if (buf) onLine(buf.replace(/\r$/, ""));
  const status = await child.status;
  clearTimeout(timer);
  return { status, stderr: (await stderrP).trim(), timedOut };
}

/** The run's network namespace, its multi-queue TAP peer and QEMU's launcher (lab/tapfds.c). */
async function startMqTap(): Promise<
  { launcher: string[]; args: string[]; finish(): Promise<MqPeerCounts> }
> {
  const ns = await NetNs.create();
  try {
    const tapfds = buildLabTool("tapfds");
    const peer = ns.command(buildLabTool("mqpeer"), [MQ_TAP], {
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
    const out = new Response(peer.stdout).text();
    const err = new Response(peer.stderr).text();
    return {
      launcher: [tapfds, String(ns.pid), MQ_TAP, String(MQ_QUEUES)],
      args: [
        "-netdev",
        "tap,id=mq,fds=@FDS@,vhost=off",
        "-device",
        `virtio-net-pci,netdev=mq,addr=a.0,mac=${LAB.multiQueueTap.mac},mq=on,vectors=${2 * MQ_QUEUES + 2},` +
        "disable-legacy=on,iommu_platform=on,romfile=",
      ],
      async finish() {
        try {
          await peer.stdin.close();
          const [{ code }, text, e] = await Promise.all([peer.status, out, err]);
          const last = text.trim().split("\n").at(-1) ?? "";
          if (code !== 0 || !last.startsWith("{")) throw new LabError(`mqpeer failed (${code}): ${e.trim()}`);
          return JSON.parse(last) as MqPeerCounts;
        } finally {
          await ns.close();
        }
      },
    };
  } catch (e) {
    await ns.close();
    throw e;
  }
}

/** Boot the lab, run `command` (a shell command line) in /pvdrv, power off. */
export async function runInGuest(command: string, opts: LabOptions = {}): Promise<LabRun> {
  await ensureCompiler();
  buildNative({ quiet: true });
  buildPeerTool();
  await ensureQemu();
  const image = await buildGuest();
  const runs = `${VM_DIR}/runs`;
  Deno.mkdirSync(runs, { recursive: true });
  const outDir = Deno.makeTempDirSync({ dir: runs, prefix: "run-" });
  Deno.writeTextFileSync(`${outDir}/cmd.sh`, command + "\n");
  opts.onOutDir?.(outDir);
  for (const [name, data] of Object.entries(opts.files ?? {})) {
    if (typeof data === "string") Deno.writeTextFileSync(`${outDir}/${name}`, data);
    else Deno.writeFileSync(`${outDir}/${name}`, data);
  }
  const [a, b, c, d, e] = [freeUdpPort(), freeUdpPort(), freeUdpPort(), freeUdpPort(), freeUdpPort()];
  const hostPeer = opts.hostPeerPort ?? freeUdpPort();
  const guestForHost = opts.guestPortForHost ?? freeUdpPort();
  const nic = (
    id: string,
    addr: number,
    mac: string,
    extra: string,
  ) => ["-device", `virtio-net-pci,netdev=${id},addr=${addr.toString(16)}.0,mac=${mac},romfile=${extra}`];
  const modern = ",disable-legacy=on,iommu_platform=on";
  const args = [
    "-machine",
    "q35",
    "-accel",
    Deno.env.get("PVDRV_ACCEL") ?? "tcg",
    "-cpu",
    "max",
    "-smp",
    "2",
    "-m",
    String(opts.memoryMb ?? 2048),
    "-kernel",
    image.kernel,
    "-initrd",
    image.initrd,
    "-append",
    "console=ttyS0 quiet loglevel=3 panic=-1 intel_iommu=on",
    "-device",
    "intel-iommu",
    "-virtfs",
    `local,path=${ROOT},mount_tag=pvdrv,security_model=none,readonly=on`,
    "-virtfs",
    `local,path=${outDir},mount_tag=out,security_model=none`,
    ...dgram("n0", a, b),
    ...nic("n0", 4, LAB.vfioKernelPeer.mac, modern),
    ...dgram("n1", b, a),
    ...nic("n1", 5, LAB.kernelPeer.mac, ""),
    ...dgram("n2", guestForHost, hostPeer),
    ...nic("n2", 6, LAB.vfioHostPeer.mac, modern),
    ...dgram("n3", c, d),
    ...nic("n3", 7, LAB.uioKernelPeer.mac, ",disable-legacy=off,disable-modern=off"),
    ...dgram("n4", d, c),
    ...nic("n4", 8, LAB.uioPeer.mac, ""),
    ...dgram("n5", e, opts.forwardSinkPort ?? freeUdpPort()),
    ...nic("n5", 9, LAB.vfioForwardOut.mac, modern),
  ]; // deno-fmt-ignore
  const mq = opts.multiQueueTap ? await startMqTap() : null;
  if (mq) args.push(...mq.args);
  const t0 = performance.now();
  const timeoutSec = opts.timeoutSec ?? 900;
  const onLine = opts.onLine ?? ((l: string) => console.log(l));
  const before: string[] = [];
  const output: string[] = [];
  const problems: string[] = [];
  let begun = false, code: number | null = null, tBegin = 0, tEnd = 0;
  const handle = (line: string) => {
    if (code !== null) return;
    const exit = line.match(/^PVDRV-EXIT=(\d+)/);
    if (begun && exit) {
      code = Number(exit[1]);
      tEnd = performance.now();
      return;
    }
    if (!begun && line.startsWith("PVDRV-BEGIN")) {
      begun = true;
      tBegin = performance.now();
      return;
    }
    if (/^PVDRV-(MODULE|MOUNT)-FAIL/.test(line)) problems.push(line.replace(/^PVDRV-/, ""));
    if (begun) {
      output.push(line);
      onLine(line);
    } else {
      before.push(line);
    }
  };
  let qemu: Awaited<ReturnType<typeof runQemu>>, mqPeer: MqPeerCounts | undefined;
  try {
    qemu = await runQemu(args, timeoutSec, handle, mq?.launcher);
  } finally {
    mqPeer = await mq?.finish();
  }
  const { status, stderr, timedOut } = qemu;
  const tail = (l: string[]) => l.slice(-40).join("\n");
  if (problems.length) {
    throw new LabError(`guest setup failed:\n  ${problems.join("\n  ")}\n--- console ---\n${tail(before)}`);
  }
  if (timedOut) {
    throw new LabError(
      `guest timed out after ${timeoutSec} s (${
        begun ? "while running the command" : "before the command started"
      })\n--- last output ---\n${tail(begun ? output : before)}`,
    );
  }
  if (code === null) {
    throw new LabError(
      `guest stopped without finishing the command (QEMU exit ${status.code})${
        stderr ? `\n--- qemu ---\n${stderr}` : ""
      }\n--- console ---\n${tail([...before, ...output])}`,
    );
  }
  return {
    code,
    output: output.join("\n"),
    outDir,
    bootSeconds: (tBegin - t0) / 1000,
    commandSeconds: (tEnd - tBegin) / 1000,
    image,
    mqPeer,
  };
}

/**
 * The host side of 0000:00:06.0's link: a UDP socket on 127.0.0.1 that receives every frame the guest NIC sends
 * and can send frames to it.
 */
export class HostPeer {
  /** The socket. */
  readonly socket: Deno.DatagramConn;
  /** Port the peer listens on (pass as `hostPeerPort`). */
  readonly port: number;
  /** Port QEMU listens on for this link (pass as `guestPortForHost`). */
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
      back.set(HOST_MAC, 6);
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
