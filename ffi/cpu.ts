/**
 * Where a driver runs: the process pinned to one CPU, and a PCI function's interrupts steered to it.
 *
 * A driver loop that sleeps on its interrupt is woken by the CPU that took it. When that is another CPU, every
 * wake is a cross-CPU wake (an IPI to a CPU that may be idle); on the same CPU it is a local one. DPDK and SPDK pin
 * their loops for the same reason; the kernel's NAPI runs where the interrupt landed.
 * @module
 */
import { check, native, NativeError } from "./lib.ts";
import { devicePath, listDir, readText, SYSFS } from "./sysfs.ts";
import { PvdrvError } from "../hal/errors.ts";

/** procfs root. */
export const PROCFS = "/proc";
const ESRCH = 3;

/** The CPUs this machine has online, from `/sys/devices/system/cpu/online` ("0-3,6"). */
export function onlineCpus(root = SYSFS): number[] {
  const text = readText(`${root}/devices/system/cpu/online`);
  if (text === null) throw new PvdrvError("native", `cannot read ${root}/devices/system/cpu/online`);
  return parseCpuList(text);
}

/** A kernel CPU list ("0-3,6") as numbers; throws on anything else. */
export function parseCpuList(text: string): number[] {
  const out: number[] = [];
  for (const part of text.trim().split(",")) {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part);
    if (!m) throw new PvdrvError("native", `not a CPU list: '${text.trim()}'`);
    const a = Number(m[1]), b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new PvdrvError("native", `not a CPU list: '${text.trim()}'`);
    for (let c = a; c <= b; c++) out.push(c);
  }
  return out;
}

/** Run thread `tid` (default 0: the calling one) on `cpu` only. */
export function pinThread(cpu: number, tid = 0): void {
  if (!Number.isInteger(cpu) || cpu < 0 || cpu > 1023) throw new RangeError(`CPU ${cpu} is not 0..1023`);
  check(`sched_setaffinity(thread ${tid || "self"}, CPU ${cpu})`, native().pvdrv_pin_thread(tid, cpu));
}

/**
 * Run this whole process on `cpu`: every thread it has (the loop's, V8's collector and compiler threads, Deno's
 * own), as `taskset` would; threads started later inherit the mask from the thread that starts them. A thread
 * that ended meanwhile is skipped.
 */
export function pinProcess(cpu: number, proc = PROCFS): void {
  pinThread(cpu); // the caller first: what it starts from now on stays on `cpu`
  pinThreads(cpu, listDir(`${proc}/self/task`).map(Number), pinThread);
}

/** Pin each of `tids` with `pin`; a thread that has ended (ESRCH) is skipped, any other failure thrown. */
export function pinThreads(cpu: number, tids: number[], pin: (cpu: number, tid: number) => void): void {
  for (const tid of tids) {
    try {
      pin(cpu, tid);
    } catch (e) {
      if (!(e instanceof NativeError && e.errno === ESRCH)) throw e;
    }
  }
}

/**
 * The interrupts of PCI function `pci`: its MSI or MSI-X vectors while the driver has them enabled (`msi_irqs/`),
 * else its INTx line (`irq`; 0 when it has none). Whichever driver holds it (vfio-pci, uio_pci_generic).
 */
export function deviceIrqs(pci: string, root = SYSFS): number[] {
  const dir = devicePath(pci, root);
  const msi = listDir(`${dir}/msi_irqs`).filter((n) => /^\d+$/.test(n)).map(Number).sort((a, b) => a - b);
  if (msi.length) return msi;
  const line = Number(readText(`${dir}/irq`)?.trim() ?? "0");
  return Number.isInteger(line) && line > 0 ? [line] : [];
}

/** Deliver interrupt `irq` to `cpu` (`/proc/irq/N/smp_affinity_list`; needs root). */
export function steerIrq(irq: number, cpu: number, proc = PROCFS): void {
  try {
    Deno.writeTextFileSync(`${proc}/irq/${irq}/smp_affinity_list`, `${cpu}\n`);
  } catch (e) {
    throw new PvdrvError("native", `cannot steer IRQ ${irq} to CPU ${cpu}: ${(e as Error).message}`);
  }
}

/** What {@link pinDriver} did. */
export interface Pinned {
  /** The CPU the driver's process now runs on. */
  cpu: number;
  /** The device's interrupts now delivered to that CPU. */
  irqs: number[];
  /** Interrupts that could not be moved (the kernel manages some itself), with why. */
  refused: string[];
}

/** Where {@link pinDriver} reads and writes (tests use fixture trees). */
export interface PinRoots {
  /** sysfs root. */
  sysfs?: string;
  /** procfs root. */
  proc?: string;
  /** Pin the process (default true; tests on fixture trees leave it). */
  pinProcess?: boolean;
}

/**
 * Run the driver's process on `cpu` and deliver PCI function `pci`'s interrupts there (`pci` null: a NIC with no
 * PCI function, such as a Xen vif or a vhost-user port — only the process is pinned). `cpu` must be online.
 */
export function pinDriver(pci: string | null, cpu: number, roots: PinRoots = {}): Pinned {
  const online = onlineCpus(roots.sysfs);
  if (!online.includes(cpu)) {
    throw new PvdrvError("native", `CPU ${cpu} is not online (online: ${online.join(",")})`);
  }
  if (roots.pinProcess ?? true) pinProcess(cpu);
  const irqs: number[] = [], refused: string[] = [];
  for (const irq of pci ? deviceIrqs(pci, roots.sysfs) : []) {
    try {
      steerIrq(irq, cpu, roots.proc);
      irqs.push(irq);
    } catch (e) {
      refused.push((e as Error).message);
    }
  }
  return { cpu, irqs, refused };
}
