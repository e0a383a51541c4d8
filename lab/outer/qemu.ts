/**
 * The VM lab: boots the guest under QEMU with pvdrv's NICs (lab/topology.ts) and runs one command in it, streaming
 * its output and returning its exit status. The project tree is shared read-only over 9p (a code change needs no
 * rebuild); a per-run folder is shared read-write as /out for the command script and results.
 * @module
 */
import { buildNative } from "../../ffi/lib.ts";
import { LAB, LAB_DISKS, type LabDevice, type LabNicName, type MqPeerCounts } from "../topology.ts";
import { buildPeerTool } from "./build_c.ts";
import { buildGuest, ensureCompiler, ensureQemu, type GuestImage, VM_DIR } from "./guest_image.ts";
import { LabError } from "./lab_error.ts";
import { startMqTap } from "./mq_tap.ts";
import { type LocalRequests, serveQmpRequests } from "./qmp.ts";
import { startVhostSwitch, type SwitchReport } from "./vhost_switch.ts";
import { freeUdpPort } from "./wire_peer.ts";

export { LabError } from "./lab_error.ts";
export { WirePeer } from "./wire_peer.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** Options for {@link runInGuest}. */
export interface LabOptions {
  /** Give up (and kill QEMU) after this many seconds. */
  timeoutSec?: number;
  /** Guest memory in MiB. */
  memoryMb?: number;
  /** Called with each line the command prints (default: echo to stdout). */
  onLine?: (line: string) => void;
  /** UDP port on 127.0.0.1 where the wire peer listens (frames from 0000:00:06.0 go there). */
  wirePeerPort?: number;
  /** UDP port QEMU listens on for the wire peer's frames (frames sent there arrive at 0000:00:06.0). */
  guestPortForWire?: number;
  /** UDP port on 127.0.0.1 where frames sent by 0000:00:09.0 go (the benchmark's forwarding sink). */
  forwardSinkPort?: number;
  /** Files to place in /out before boot (name → contents). */
  files?: Record<string, string | Uint8Array>;
  /** Told the run's /out folder before boot. */
  onOutDir?: (dir: string) => void;
  /**
   * Add 0000:00:0a.0 on a multi-queue TAP device in a network namespace made for the run, answered there by
   * lab/c/mqpeer.c (needs root, `unshare` and `ip`). Its counters come back in {@link LabRun.mqPeer}.
   */
  multiQueueTap?: boolean;
  /**
   * Add the vhost-user NICs of lab/topology.ts VHOST_LAB, served by pvdrv's switch on the host (started first; the
   * guest may ask for `pvdrv-switch-restart`, a SIGKILL and restart). Its counters come back in
   * {@link LabRun.vhostSwitch}.
   */
  vhostSwitch?: boolean;
  /** More QEMU arguments (a benchmark's own NICs). */
  extraArgs?: string[];
  /** Requests from the guest the outer side answers itself (lab/outer/qmp.ts), beside QMP's. */
  requests?: LocalRequests;
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
  /** The vhost-user switch's counters (with `vhostSwitch`). */
  vhostSwitch?: SwitchReport | null;
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

/** QEMU's device properties for each kind of lab NIC. */
const DEVICE_PROPS: Record<LabDevice, string> = {
  modern: ",disable-legacy=on,iommu_platform=on",
  transitional: ",disable-legacy=off,disable-modern=off",
  kernel: "",
};

/**
 * The lab's NICs as QEMU arguments, from lab/topology.ts: each wire a `-netdev dgram` between two UDP ports on
 * 127.0.0.1 (two lab NICs linked to each other use each other's ports), each NIC a virtio-net-pci at its slot.
 * The multi-queue TAP NIC is added by lab/outer/mq_tap.ts when a run asks for it.
 */
export function labNetArgs(ports: { wirePeer: number; guestForWire: number; forwardSink: number }): string[] {
  const names = Object.keys(LAB) as LabNicName[];
  const local = new Map<string, number>(names.map((n) => [n, freeUdpPort()]));
  const args: string[] = [];
  for (const name of names) {
    const n = LAB[name];
    if (n.link === "mq-tap") continue;
    const here = n.link === "wire-peer" ? ports.guestForWire : local.get(name)!;
    const there = n.link === "wire-peer"
      ? ports.wirePeer
      : n.link === "forward-sink"
      ? ports.forwardSink
      : local.get(n.link)!;
    const [dev, fn] = n.pci.split(":")[2].split(".");
    const slot = `${parseInt(dev, 16).toString(16)}.${fn}`;
    args.push(
      ...dgram(name, here, there),
      "-device",
      `virtio-net-pci,netdev=${name},addr=${slot},mac=${n.mac},romfile=${DEVICE_PROPS[n.device]}` +
        // Modern NICs offer packed rings too (virtio 1.2 §2.8): each driver picks its format.
        (n.device === "modern" ? ",packed=on" : ""),
    );
  }
  return args;
}

/**
 * The lab's disks as QEMU arguments, from lab/topology.ts: a sparse raw file of each disk's size in `outDir`
 * (created here) behind a virtio-blk-pci at its slot, so the outer side reads afterwards what was written.
 */
export function labDiskArgs(outDir: string): string[] {
  const args: string[] = [];
  for (const [name, d] of Object.entries(LAB_DISKS)) {
    const file = `${outDir}/${d.file}`;
    using f = Deno.openSync(file, { create: true, write: true });
    f.truncateSync(d.mib << 20);
    const [dev, fn] = d.pci.split(":")[2].split(".");
    args.push(
      "-drive",
      `file=${file},if=none,id=${name},format=raw,cache=writeback`,
      "-device",
      `virtio-blk-pci,drive=${name},addr=${parseInt(dev, 16).toString(16)}.${fn},num-queues=${d.queues},` +
        `serial=${d.serial}${DEVICE_PROPS[d.device]}`,
    );
  }
  return args;
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
  // QMP on a short path (a Unix socket path has at most 107 bytes): tests ask for it through /out.
  const qmpDir = Deno.makeTempDirSync({ prefix: "pvdrv-qmp-" }), qmpSock = `${qmpDir}/qmp.sock`;
  const ports = {
    wirePeer: opts.wirePeerPort ?? freeUdpPort(),
    guestForWire: opts.guestPortForWire ?? freeUdpPort(),
    forwardSink: opts.forwardSinkPort ?? freeUdpPort(),
  };
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
    ...labNetArgs(ports),
    ...labDiskArgs(outDir),
    "-qmp",
    `unix:${qmpSock},server=on,wait=off`,
  ]; // deno-fmt-ignore
  const mq = opts.multiQueueTap ? await startMqTap() : null;
  if (mq) args.push(...mq.args);
  const vu = opts.vhostSwitch ? await startVhostSwitch() : null;
  if (vu) args.push(...vu.args(opts.memoryMb ?? 2048));
  args.push(...opts.extraArgs ?? []);
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
  let vhostSwitch: SwitchReport | null | undefined;
  try {
    const own: LocalRequests = { ...opts.requests };
    if (vu) {
      own["pvdrv-switch-restart"] = () => vu.restart();
      own["pvdrv-switch-counters"] = () => vu.counters();
    }
    const requests = serveQmpRequests(outDir, qmpSock, own);
    try {
      qemu = await runQemu(args, timeoutSec, handle, mq?.launcher);
    } finally {
      await requests.stop();
      Deno.removeSync(qmpDir, { recursive: true });
    }
  } finally {
    try {
      mqPeer = await mq?.finish();
    } finally {
      vhostSwitch = await vu?.finish();
    }
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
    vhostSwitch,
  };
}
