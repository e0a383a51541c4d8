import assert from "assert";
import { deviceIrqs, parseCpuList, pinDriver, pinThread, pinThreads } from "../../ffi/cpu.ts";
import { NativeError } from "../../ffi/lib.ts";
import { makeSysfs } from "./sysfs_fixture.ts";
import { isPvdrvError } from "../../hal/errors.ts";

const PCI = "0000:00:04.0";

/** A sysfs tree with one NIC (its MSI-X vectors `msi`, its INTx `irq`) and CPUs `online`, and a procfs tree. */
function trees(o: { msi?: number[]; irq?: number; online?: string; managed?: number[] }) {
  const sysfs = makeSysfs([{
    address: PCI,
    vendor: 0x1af4,
    device: 0x1041,
    class: 0x020000,
    driver: "vfio-pci",
  }]);
  const dev = `${sysfs}/bus/pci/devices/${PCI}`;
  if (o.msi) {
    Deno.mkdirSync(`${dev}/msi_irqs`);
    for (const n of o.msi) Deno.writeTextFileSync(`${dev}/msi_irqs/${n}`, "msix\n");
  }
  Deno.writeTextFileSync(`${dev}/irq`, `${o.irq ?? 0}\n`);
  Deno.mkdirSync(`${sysfs}/devices/system/cpu`, { recursive: true });
  Deno.writeTextFileSync(`${sysfs}/devices/system/cpu/online`, `${o.online ?? "0-3"}\n`);
  const proc = Deno.makeTempDirSync({ prefix: "pvdrv-proc-" });
  for (const n of [...(o.msi ?? []), o.irq ?? 0]) {
    Deno.mkdirSync(`${proc}/irq/${n}`, { recursive: true });
    // A vector the kernel manages itself refuses the write (EIO there; here: the file is a directory).
    if (o.managed?.includes(n)) Deno.mkdirSync(`${proc}/irq/${n}/smp_affinity_list`);
    else Deno.writeTextFileSync(`${proc}/irq/${n}/smp_affinity_list`, "0-3\n");
  }
  const affinity = (n: number) => Deno.readTextFileSync(`${proc}/irq/${n}/smp_affinity_list`).trim();
  return { sysfs, proc, affinity };
}

Deno.test("cpu: CPU lists parse as the kernel writes them; anything else is refused", () => {
  assert.deepEqual(parseCpuList("0-3,6\n"), [0, 1, 2, 3, 6]);
  assert.deepEqual(parseCpuList("0"), [0]);
  for (const bad of ["", "a", "3-1", "0,,1", "1-"]) {
    assert.throws(() => parseCpuList(bad), (e) => isPvdrvError(e, "native"), bad);
  }
});

Deno.test("cpu: a device's interrupts are its MSI-X vectors while enabled, else its INTx line", () => {
  assert.deepEqual(deviceIrqs(PCI, trees({ msi: [41, 40, 42], irq: 11 }).sysfs), [40, 41, 42]);
  assert.deepEqual(deviceIrqs(PCI, trees({ irq: 11 }).sysfs), [11]);
  assert.deepEqual(deviceIrqs(PCI, trees({}).sysfs), []);
});

Deno.test("cpu: pinDriver steers every vector of the device to the CPU, and only those", () => {
  const t = trees({ msi: [40, 41], irq: 11 });
  const r = pinDriver(PCI, 2, { sysfs: t.sysfs, proc: t.proc, pinProcess: false });
  assert.deepEqual(r, { cpu: 2, irqs: [40, 41], refused: [] });
  assert.equal(t.affinity(40), "2");
  assert.equal(t.affinity(41), "2");
  assert.equal(t.affinity(11), "0-3"); // the INTx line is not the one in use
});

Deno.test("cpu: a vector the kernel will not move is reported, the rest still steered", () => {
  const t = trees({ msi: [40, 41], managed: [40] });
  const r = pinDriver(PCI, 1, { sysfs: t.sysfs, proc: t.proc, pinProcess: false });
  assert.deepEqual(r.irqs, [41]);
  assert.equal(r.refused.length, 1);
  assert.match(r.refused[0], /cannot steer IRQ 40 to CPU 1/);
  assert.equal(t.affinity(41), "1");
});

Deno.test("cpu: an offline CPU is refused before anything moves; no PCI function pins only the process", () => {
  const t = trees({ msi: [40], online: "0-1" });
  assert.throws(
    () => pinDriver(PCI, 3, { sysfs: t.sysfs, proc: t.proc, pinProcess: false }),
    /CPU 3 is not online \(online: 0,1\)/,
  );
  assert.equal(t.affinity(40), "0-3");
  assert.deepEqual(pinDriver(null, 1, { sysfs: t.sysfs, proc: t.proc, pinProcess: false }).irqs, []);
});

/** Run `body` (TypeScript, with pinThread and pinProcess in scope) in a child; the affinity of its threads. */
async function childAffinity(body: string): Promise<{ before: string; self: string; tasks: string[] }> {
  const code = `
    import { pinProcess, pinThread } from "${new URL("../../ffi/cpu.ts", import.meta.url).href}";
    const allowed = (path: string) => Deno.readTextFileSync(path).match(/Cpus_allowed_list:\\s*(\\S+)/)![1];
    const before = allowed("/proc/thread-self/status");
    ${body}
    const self = allowed("/proc/thread-self/status");
    const tasks = [...Deno.readDirSync("/proc/self/task")].map((t) => allowed(\`/proc/self/task/\${t.name}/status\`));
    console.log(JSON.stringify({ before, self, tasks }));`;
  const out = await new Deno.Command(Deno.execPath(), { args: ["eval", "--ext=ts", code], stdout: "piped" })
    .output();
  assert.equal(out.code, 0);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const ONLINE = parseCpuList(Deno.readTextFileSync("/sys/devices/system/cpu/online"));
const LAST = ONLINE[ONLINE.length - 1];

Deno.test("cpu: pinThread moves the calling thread only (checked in a child process)", async () => {
  assert.throws(() => pinThread(1024), RangeError);
  assert.throws(() => pinThread(1.5), RangeError);
  const r = await childAffinity(`pinThread(${LAST});`);
  assert.equal(r.self, String(LAST));
  if (ONLINE.length > 1) {
    assert.notEqual(r.before, r.self);
    assert.ok(r.tasks.some((t) => t === r.before), "the process's other threads keep every CPU");
  }
});

Deno.test("cpu: pinProcess moves every thread of the process, V8's and Deno's own", async () => {
  const r = await childAffinity(`pinProcess(${LAST});`);
  assert.ok(r.tasks.length > 1, `threads: ${r.tasks.length}`);
  assert.deepEqual(r.tasks, r.tasks.map(() => String(LAST)));
  if (ONLINE.length > 1) assert.notEqual(r.before, r.self);
});

Deno.test("cpu: a thread that ended while the process was pinned is skipped; any other failure is thrown", () => {
  const pinned: number[] = [];
  const pin = (cpu: number, tid: number) => {
    if (tid === 7) throw new NativeError(`sched_setaffinity(thread 7, CPU ${cpu})`, -3); // ESRCH: it ended
    if (tid === 9) throw new NativeError(`sched_setaffinity(thread 9, CPU ${cpu})`, -22); // EINVAL
    if (tid === 11) throw new RangeError("not a native failure");
    pinned.push(tid);
  };
  pinThreads(1, [5, 7, 6], pin);
  assert.deepEqual(pinned, [5, 6]);
  assert.throws(() => pinThreads(1, [5, 9, 6], pin), (e) => e instanceof NativeError && e.errno === 22);
  assert.throws(() => pinThreads(1, [11], pin), RangeError);
});
