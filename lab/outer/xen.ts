/**
 * The nested Xen lab (see docs/xen.md): Xen 4.17 under QEMU TCG (`-cpu qemu64`), a PV dom0 from a
 * debootstrapped Debian with xen-utils, and a PV domU running Deno + pvdrv's netfront against dom0's real
 * xen-netback. dom0's /init runs the whole scenario and prints markers the host collects:
 *  - domU (console streamed through dom0): pvdrv's Xen tests (tests/xen/guest: blkfront against dom0's
 *    xen-blkback on a virtio disk of dom0's — the host checks the disk's file afterwards — and netfront; then
 *    tests/xen/net against dom0's stack) → PVDRV-DOMU-EXIT=n; the
 *    benchmark (tests/xen/guest/bench.ts: pvdrv, then the kernel's xen-netfront on the same vif) → PVDRV-BENCH
 *    lines; then the guest agent, left running for dom0's `xl shutdown`.
 *  - dom0: pvpeer on vif1.0 verifies every frame from the domU → DOM0-RECV {json}, sends frames to it
 *    (DOM0-SEND), the same with jumbo frames at MTU 9000 (DOM0-RECV-JUMBO, DOM0-SEND-JUMBO), serves the benchmark
 *    steps the domU asks for through xenstore (DOM0-BENCH name {json}), and finally shuts the domU down with
 *    `xl shutdown -w` (DOM0-SHUTDOWN rc=n).
 * Everything comes from Debian's packages (apt-get download, debootstrap) and this repository; cached in build/xen.
 * @module
 */
import { addTree, CpioWriter } from "./cpio.ts";
import {
  busyboxInitramfs,
  download,
  ensureCompiler,
  ensureTool,
  exists,
  extractKernel,
  guestTools,
  kernelPackage,
  resolveModules,
  run,
  VM_DIR,
} from "./guest_image.ts";
import { buildBlkload, buildPeerTool } from "./build_c.ts";
import { LabError, runQemu } from "./qemu.ts";
import { cpuShares, findProcess, type ThreadTicks, threadTicks } from "./thread_cpu.ts";
import { buildNative } from "../../ffi/lib.ts";
import { summarize } from "../bench_stats.ts";
import {
  backingFileCheck,
  BLOCK_HOTPLUG,
  BLOCK_SCRIPT,
  DISK_HELPER,
  DISK_HELPER_PATH,
  DOM0_DISK_SETUP,
  domUDiskConfig,
  freshDisks,
  readOnlyFileCheck,
  xenDiskBenchSummary,
} from "./xen_disks.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
/** The project folders the domU gets (everything its tasks and tests import). */
export const CODE_DIRS = ["ffi", "hal", "drivers", "system", "net", "apps", "cli", "lab"];
/** Where the Xen lab keeps its builds. */
export const XEN_DIR = `${ROOT}/build/xen`;
const DOM0_PACKAGES = ["xen-utils-4.17", "xenstore-utils", "iproute2", "bridge-utils", "kmod", "busybox"];
const DOM0_MODULES = [
  "xen-evtchn",
  "xen-gntdev",
  "xen-gntalloc",
  "xen-privcmd",
  "xenfs",
  "xen-netback",
  "bridge",
  // The disks the outer QEMU gives dom0 (virtio-blk on raw files), served to the domU by xen-blkback.
  "virtio_pci",
  "virtio_blk",
  "xen-blkback",
  "loop",
];
// nbd, ext4 and crc32c: the kernel's ext4 on pvdrv's NBD export of a vbd.
const DOMU_MODULES = [
  "xen-evtchn",
  "xen-gntalloc",
  "xen-gntdev",
  "xenfs",
  "tun",
  "nbd",
  "ext4",
  "crc32c_generic",
];
/** The domU's MAC (set in its vif config). */
export const DOMU_MAC = "00:16:3e:12:34:56";
/** Frames each way at MTU 1500 (60..1514 bytes), then at MTU 9000 (60..9014 bytes). */
export const XEN_FRAMES = 10_000;
export const XEN_JUMBO_FRAMES = 2_000;
const RATE = 1000, JUMBO_RATE = 200; // netback drops what a slow receiver leaves queued (XSA-392)
/** Seconds per benchmark step (default). */
export const XEN_BENCH_SECONDS = 4;

function log(m: string): void {
  console.error(`xen-lab: ${m}`);
}

function mirror(): string {
  try {
    const src = Deno.readTextFileSync("/etc/apt/sources.list.d/debian.sources");
    const m = src.match(/URIs:\s*(\S+\/debian)\s/);
    if (m) return m[1];
  } catch { /* fall through */ }
  return "http://deb.debian.org/debian";
}

async function dom0Root(): Promise<string> {
  const dir = `${XEN_DIR}/dom0root`;
  if (exists(`${dir}/.pvdrv-done`)) return dir;
  await ensureTool("debootstrap", ["debootstrap"]);
  if (exists(dir)) Deno.removeSync(dir, { recursive: true });
  log("debootstrap of dom0's root (about a minute)");
  await run("debootstrap", [
    "--variant=minbase",
    `--include=${DOM0_PACKAGES.join(",")}`,
    "bookworm",
    dir,
    mirror(),
  ]);
  Deno.writeTextFileSync(`${dir}/.pvdrv-done`, "");
  return dir;
}

/** Extract the raw ELF vmlinux from a bzImage (xl loads it without decompressing under TCG). */
async function vmlinux(vmlinuz: string, out: string): Promise<void> {
  const d = Deno.readFileSync(vmlinuz);
  const magic = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
  let at = -1;
  for (let i = 0; i < d.length - 6 && at < 0; i++) if (magic.every((b, k) => d[i + k] === b)) at = i;
  if (at < 0) throw new LabError(`${vmlinuz} is not an xz-compressed bzImage`);
  Deno.writeFileSync(`${out}.xz`, d.subarray(at));
  await run("sh", ["-c", `xz -dc --single-stream '${out}.xz' > '${out}'`]);
  Deno.removeSync(`${out}.xz`);
}

function domUInit(modules: string[], netfront: string[], blkfront: string[], bench: XenBench): string {
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root DENO_DIR=/tmp/deno-dir DENO_NO_UPDATE_CHECK=1 NO_COLOR=1 PVDRV_XEN_GUEST=1
export PVDRV_JUMBO_FRAMES=${XEN_JUMBO_FRAMES} PVDRV_BENCH_SECONDS=${bench.seconds}
export PVDRV_KERNEL_NETFRONT="${netfront.join(" ")}" PVDRV_KERNEL_BLKFRONT="${blkfront.join(" ")}"
export PVDRV_BLK_BENCH_JOBS=${bench.diskJobs} PVDRV_BENCH_ROUNDS=${bench.rounds ?? 1}
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev; mount -t tmpfs tmpfs /tmp
exec </dev/null >/dev/console 2>&1
for m in ${
    modules.join(" ")
  }; do insmod /lib/modules/$m.ko 2>/dev/null || echo "PVDRV-MODULE-FAIL domU $m"; done
echo "PVDRV-DOMU-BOOTED $(cut -d' ' -f1 /proc/uptime)"
cd /pvdrv && deno test -A --no-check tests/xen/guest/; t=$?
# The network host on netfront (ping, UDP echo, HTTP both ways) against dom0's stack, in steps dom0 acknowledges.
deno test -A --no-check tests/xen/net/; n=$?
echo "PVDRV-DOMU-EXIT=$((t | n))"
# The disks first: the network benchmark ends with the step that lets dom0 shut the domain down.
deno run -A --no-check tests/xen/guest/bench_blk.ts
echo "PVDRV-DOMU-BLKBENCH-EXIT=$?"
deno run -A --no-check tests/xen/guest/bench.ts
echo "PVDRV-DOMU-BENCH-EXIT=$?"
# dom0 ends the run with 'xl shutdown': the agent must power the domain off (busybox's poweroff would not: PID 1
# here is this script, not an init that handles the signal).
deno run -A --no-check cli/xen_agent.ts --once --poweroff "poweroff -f"
echo "PVDRV-DOMU-AGENT-EXIT=$?"
`;
}

/**
 * dom0's shell helpers for its send and RX-bench reports: `netbackDrops` reads how many frames xen-netback dropped
 * on their way to the domU because its queue was full (XSA-392); `withDrops N` adds the count since N to a JSON
 * report line. `vifIrqs` lists dom0's interrupt counts of the domU's vif event channels (dom0 has one vCPU: one
 * count a line), and `withIrqs LIST` adds those taken since LIST ("netbackIrqs"), line by line: a line that
 * appeared since counts from 0 (as does one whose number a new connection reused), one that went (a frontend's
 * old connection, unbound after the step began) not at all. `rxThread` finds netback's guest-RX kthread of the
 * newest connection ("vif1.0-q0-guest-rx": Linux 6.1 shows a kthread's whole name in comm, older ones its first
 * 15 bytes), `sleeps DIR` how often it blocked so far (each block ends a batch of frames it copied into the
 * domU), and `withSleeps DIR N` adds those since N ("netbackRxSleeps"; null when the thread went away).
 * `floodSched FEATURE` sets one of the dom0 scheduler's features (debugfs), `wakeupPreemption` says whether
 * wake-up preemption is on (1, 0, or null when the kernel does not say), and `withSched V` adds that as
 * "dom0WakeupPreemption".
 */
export const DOM0_COUNTER_HELPERS = `netbackDrops() { cat /sys/class/net/vif1.0/statistics/tx_dropped; }
floodSched() { echo "$1" > /sys/kernel/debug/sched/features 2>/dev/null; }
wakeupPreemption() {
  case " $(cat /sys/kernel/debug/sched/features 2>/dev/null) " in
    *" NO_WAKEUP_PREEMPTION "*) echo 0;; *" WAKEUP_PREEMPTION "*) echo 1;; *) echo null;;
  esac
}
withSched() { sed "s/}$/,\\"dom0WakeupPreemption\\":$1}/"; }
withDrops() { sed "s/}$/,\\"netbackDropped\\":$(($(netbackDrops) - $1))}/"; }
vifIrqs() { awk '/vif1\\.0/ { printf "%s%s ", $1, $2 }' /proc/interrupts; }
rxThread() {
  grep -lxE 'vif1\\.0-q0-guest(-rx)?' /proc/[0-9]*/comm 2>/dev/null | sed 's|/comm$||' |
    awk -F/ '$NF + 0 > m { m = $NF + 0; b = $0 } END { print b }'
}
sleeps() { awk '/^voluntary_ctxt_switches/ { print $2 }' "$1/status" 2>/dev/null; }
withSleeps() {
  n=$(sleeps "$1"); v=null; [ -n "$n" ] && [ -n "$2" ] && v=$((n - $2))
  sed "s/}$/,\\"netbackRxSleeps\\":$v}/"
}
withIrqs() {
  n=$(awk -v was="$1" 'BEGIN { k = split(was, w, " "); for (i = 1; i <= k; i++) { split(w[i], p, ":"); c[p[1]] = p[2] } }
    /vif1\\.0/ { sub(":", "", $1); d = $2 - c[$1]; t += d < 0 ? $2 : d } END { print t + 0 }' /proc/interrupts)
  sed "s/}$/,\\"netbackIrqs\\":$n}/"
}`;

function dom0Init(modules: string[], benchSeconds: number, dom0Preempt: boolean): string {
  const flood = dom0Preempt ? "WAKEUP_PREEMPTION" : "NO_WAKEUP_PREEMPTION";
  return `#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run; mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
exec </dev/null >/dev/console 2>&1
echo "PVDRV-DOM0-BOOTED $(cut -d' ' -f1 /proc/uptime)"
for m in ${
    modules.join(" ")
  }; do insmod /lib/modules/pvdrv/$m.ko 2>/tmp/e || grep -q exists /tmp/e || echo "PVDRV-MODULE-FAIL dom0 $m $(cat /tmp/e)"; done
mount -t xenfs xenfs /proc/xen
mkdir -p /run/lock /var/run/xen /var/run/xenstored /var/lib/xen /var/log/xen /var/lib/xenstored /run/xen
xenstored --pid-file /var/run/xenstored.pid
xen-init-dom0 >/dev/null
xenconsoled --pid-file=/var/run/xenconsoled.pid
ip link add xenbr0 type bridge && ip link set xenbr0 up
( /usr/local/bin/pvpeer recv vif1.0 ${XEN_FRAMES} 240000 > /tmp/recv.json 2>&1 ) &
${DOM0_DISK_SETUP}
xl create /etc/xen/domU.cfg >/tmp/xl.log 2>&1 || { echo "PVDRV-XL-FAIL $(cat /tmp/xl.log)"; echo o > /proc/sysrq-trigger; }
${DISK_HELPER_PATH} "$(xl domid pvdrv-domU)" &
xl console pvdrv-domU &
# The receiver above started before vif1.0 existed: restart it once the backend made the interface.
i=0; while [ ! -e /sys/class/net/vif1.0 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
# Out of the bridge: its rx_handler would consume frames before pvpeer's ETH_P_88B5 socket sees them.
ip link set vif1.0 nomaster; ip link set vif1.0 up && echo "DOM0-VIF-UP $(cut -d' ' -f1 /proc/uptime)"
kill %1 2>/dev/null
P=/usr/local/bin/pvpeer D=$(xl domid pvdrv-domU)
${DOM0_COUNTER_HELPERS}
$P recv vif1.0 ${XEN_FRAMES} 240000 > /tmp/recv.json 2>&1
echo "DOM0-RECV $(tail -n 1 /tmp/recv.json)"
# The frontend connected with feature-sg, so netback allows a jumbo MTU; the jumbo receiver starts before our
# frames go out (the domU reconnects at MTU 9000 and sends as soon as it has them all).
ip link set vif1.0 mtu 9000 || echo "DOM0-MTU-FAIL"
( $P recv vif1.0 ${XEN_JUMBO_FRAMES} 240000 > /tmp/recvj.json 2>&1 ) & RJ=$!
d=$(netbackDrops); $P send vif1.0 ${XEN_FRAMES} 60 1514 ${DOMU_MAC} 0 ${RATE} > /tmp/send.json 2>&1
echo "DOM0-SEND $(tail -n 1 /tmp/send.json | withDrops $d)"
wait $RJ
echo "DOM0-RECV-JUMBO $(tail -n 1 /tmp/recvj.json)"
d=$(netbackDrops); $P send vif1.0 ${XEN_JUMBO_FRAMES} 60 9014 ${DOMU_MAC} 0 ${JUMBO_RATE} > /tmp/sendj.json 2>&1
echo "DOM0-SEND-JUMBO $(tail -n 1 /tmp/sendj.json | withDrops $d)"
# Benchmark steps: the domU names one in data/pvdrv-bench; tx-* we count (pvpeer ifrate), rx-* we flood.
mount -t debugfs debugfs /sys/kernel/debug # the scheduler features the flood sets (floodSched)
B=/local/domain/$D/data; last=""; i=0
while [ $i -lt 9000 ] && xl list pvdrv-domU >/dev/null 2>&1; do
  s=$(xenstore-read $B/pvdrv-bench 2>/dev/null)
  if [ -n "$s" ] && [ "$s" != "$last" ]; then
    last=$s
    case $s in
      done) break;;
      # The network tests: dom0's stack at 10.0.1.1 on vif1.0 (busybox httpd, pvpeer's UDP echo, ping, wget).
      net-up) ip link set vif1.0 mtu 1500; ip addr add 10.0.1.1/24 dev vif1.0
              mkdir -p /tmp/www; head -c 1048576 /dev/urandom > /tmp/www/blob
              xenstore-write $B/pvdrv-net-blob "$(sha256sum /tmp/www/blob | cut -d' ' -f1)"
              busybox httpd -p 10.0.1.1:80 -h /tmp/www
              ( $P udpecho 10.0.1.1 7 120000 > /tmp/echo.json 2>&1 ) &
              xenstore-write $B/pvdrv-bench-ack "$s";;
      net-ping) r=$(busybox ping -c 200 -i 0.01 -W 30 -q 10.0.1.2 2>&1 | grep transmitted)
              xenstore-write $B/pvdrv-net-result "$r"; xenstore-write $B/pvdrv-bench-ack "$s";;
      net-wget) r=$(busybox wget -q -O /tmp/got http://10.0.1.2:8080/blob 2>&1; sha256sum /tmp/got | cut -d' ' -f1)
              xenstore-write $B/pvdrv-net-result "$r"; xenstore-write $B/pvdrv-bench-ack "$s";;
      # Counted on the vif (what netback took off the ring), with no socket: a counting socket shares dom0's one
      # vCPU with netback and, its buffer full, counts less the faster the frontend sends (receive livelock).
      tx-*) rm -f /tmp/b.json; $P ifrate vif1.0 ${benchSeconds} > /tmp/b.json 2>&1 & p=$!
            k=0; while ! grep -q ready /tmp/b.json 2>/dev/null && [ $k -lt 200 ]; do sleep 0.05; k=$((k+1)); done
            q=$(vifIrqs); xenstore-write $B/pvdrv-bench-ack "$s"; wait $p
            echo "DOM0-BENCH $s $(tail -n 1 /tmp/b.json | withIrqs "$q")";;
      # The counters are read before the ack: the domU starts its window at the ack, the flood right after.
      # dom0's one vCPU runs both the flood and netback's RX thread. With wake-up preemption (Linux's default)
      # each frame queued wakes the thread, which takes the CPU at the sender's next cond_resched: netback then
      # copies one or two frames a wake-up and dom0's scheduling, not the receiver, sets the rate. The flood
      # runs without it (unless the bench asks to compare), as netback runs when the sender is on another CPU or
      # host: it copies a queue's worth.
      rx-*) d=$(netbackDrops); q=$(vifIrqs); t=$(rxThread); z=$(sleeps "$t")
            floodSched ${flood}; w=$(wakeupPreemption)
            xenstore-write $B/pvdrv-bench-ack "$s"
            $P txrate vif1.0 ${benchSeconds} 60 ${DOMU_MAC} > /tmp/b.json 2>&1
            floodSched WAKEUP_PREEMPTION
            echo "DOM0-BENCH $s $(tail -n 1 /tmp/b.json | withDrops $d | withIrqs "$q" | withSleeps "$t" "$z" |
              withSched $w)"
            xenstore-write $B/pvdrv-bench-done "$s";;
    esac
  fi
  sleep 0.1; i=$((i+1))
done
# The guest agent announces itself; then the toolstack asks for a clean shutdown and waits for it.
i=0; while [ "$(xenstore-read $B/pvdrv-agent 2>/dev/null)" != running ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
timeout 120 xl shutdown -w pvdrv-domU >/tmp/shut.log 2>&1; echo "DOM0-SHUTDOWN rc=$? $(tail -n 1 /tmp/shut.log)"
i=0; while xl list pvdrv-domU >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "PVDRV-XEN-DONE"
echo o > /proc/sysrq-trigger
`;
}

/** The Xen lab's boot files. */
export interface XenImage {
  /** Xen (multiboot ELF). */
  xen: string;
  /** dom0's kernel. */
  dom0Kernel: string;
  /** dom0's initramfs (with the domU inside). */
  dom0Initrd: string;
}

/** What the domU's benchmarks run: seconds per step, and how many of the disk jobs (lab/guest/blk_jobs.ts). */
export interface XenBench {
  seconds: number;
  diskJobs: number;
  /** Paired rounds of the network benchmark (pvdrv, kernel, pvdrv, kernel, …); 1 unless given. */
  rounds?: number;
  /**
   * Keep dom0's wake-up preemption while it floods the RX steps (the lab's way before bd8536d), to compare; by
   * default the flood runs without it (see the rx-* step in dom0's init).
   */
  dom0Preempt?: boolean;
}

/**
 * Fetch what the Xen lab downloads (dom0's debootstrapped root, the hypervisor package) ahead of
 * {@link buildXenLab}, which then finds them cached. Shares no files with the VM lab's image or DPDK, so it may
 * run beside them.
 */
export async function prefetchXenLab(): Promise<void> {
  await dom0Root();
  await download("xen-hypervisor-4.17-amd64", `${VM_DIR}/debs`);
}

/** Build (or reuse) the Xen lab with the benchmark `bench` (by default: 4 s steps, the first disk job only). */
export async function buildXenLab(
  bench: XenBench = { seconds: XEN_BENCH_SECONDS, diskJobs: 1 },
): Promise<XenImage> {
  await ensureCompiler();
  buildNative({ quiet: true });
  const peer = buildPeerTool(), blkload = buildBlkload();
  const pkg = await kernelPackage();
  const kver = pkg.replace(/^linux-image-/, "");
  const x = await extractKernel(pkg);
  Deno.mkdirSync(XEN_DIR, { recursive: true });
  const xenDeb = await download("xen-hypervisor-4.17-amd64", `${VM_DIR}/debs`);
  const xen = `${XEN_DIR}/xen-4.17.elf`;
  if (!exists(xen)) {
    const t = `${XEN_DIR}/xen-deb`;
    await run("dpkg-deb", ["-x", xenDeb, t]);
    await run("sh", ["-c", `gunzip -c ${t}/boot/xen-4.17-amd64.gz > ${xen}`]);
  }
  const root = await dom0Root();
  const dom0Mods = resolveModules(`${x}/lib/modules/${kver}`, DOM0_MODULES);
  // domU: raw vmlinux + initramfs with busybox, Deno, the Xen modules and pvdrv's sources.
  const domU = `${XEN_DIR}/domU`;
  Deno.mkdirSync(domU, { recursive: true });
  if (!exists(`${domU}/vmlinux`)) await vmlinux(`${x}/boot/vmlinuz-${kver}`, `${domU}/vmlinux`);
  log("packing the domU and dom0 initramfs images");
  const mlist = resolveModules(`${x}/lib/modules/${kver}`, DOMU_MODULES);
  // The kernel's own xen-netfront and xen-blkfront: in the image, loaded only by the benchmarks (they would take
  // vif-0 and the vbds at boot).
  const kernelFront = (m: string) =>
    resolveModules(`${x}/lib/modules/${kver}`, [m]).filter((k) => !mlist.some((b) => b.name === k.name));
  const nlist = kernelFront("xen-netfront"), blist = kernelFront("xen-blkfront");
  const w = await busyboxInitramfs(`${domU}/initrd.cpio`, {
    extract: x,
    init: domUInit(mlist.map((m) => m.name), nlist.map((m) => m.name), blist.map((m) => m.name), bench),
    modules: [...mlist, ...nlist, ...blist],
    deno: Deno.execPath(),
    dirs: ["pvdrv", "pvdrv/build"],
    tools: await guestTools(),
  });
  for (const d of [...CODE_DIRS, "tests", "tests/xen", "tests/xen/guest", "tests/xen/net"]) {
    w.add({ path: `pvdrv/${d}`, type: "dir" });
  }
  for (const d of [...CODE_DIRS, "tests/xen/guest", "tests/xen/net"]) {
    addTree(w, `${ROOT}/${d}`, `pvdrv/${d}`);
  }
  for (const f of ["deno.json", "mod.ts", "drivers.ts", "build/libpvdrv.so"]) {
    w.add({ path: `pvdrv/${f}`, type: "file", data: Deno.readFileSync(`${ROOT}/${f}`), mode: 0o755 });
  }
  w.add({ path: "bin/pvpeer", type: "file", data: Deno.readFileSync(peer), mode: 0o755 });
  w.add({ path: "bin/blkload", type: "file", data: Deno.readFileSync(blkload), mode: 0o755 });
  w.close();
  // dom0: the debootstrapped root plus /init, pvpeer, the domU and its config.
  const d0 = new CpioWriter(`${XEN_DIR}/dom0.cpio`);
  // Leave out apt's cache and docs: dom0 unpacks all of this into its 1 GiB.
  addTree(d0, root, "", (p) => !/^(var\/cache\/apt|usr\/share\/(doc|locale|man))\//.test(p));
  d0.add({ path: "usr/lib/modules", type: "dir" });
  d0.add({ path: "usr/lib/modules/pvdrv", type: "dir" });
  for (const m of dom0Mods) {
    d0.add({ path: `usr/lib/modules/pvdrv/${m.name}.ko`, type: "file", data: Deno.readFileSync(m.path) });
  }
  d0.add({
    path: "init",
    type: "file",
    data: new TextEncoder().encode(
      dom0Init(dom0Mods.map((m) => m.name), bench.seconds, bench.dom0Preempt ?? false),
    ),
    mode: 0o755,
  });
  d0.add({ path: "usr/local/bin/pvpeer", type: "file", data: Deno.readFileSync(peer), mode: 0o755 });
  for (const [path, text] of [[BLOCK_SCRIPT, BLOCK_HOTPLUG], [DISK_HELPER_PATH, DISK_HELPER]]) {
    d0.add({ path: path.slice(1), type: "file", data: new TextEncoder().encode(text), mode: 0o755 });
  }
  d0.add({ path: "boot/domU-vmlinux", type: "file", data: Deno.readFileSync(`${domU}/vmlinux`) });
  d0.add({ path: "boot/domU-initrd.cpio", type: "file", data: Deno.readFileSync(`${domU}/initrd.cpio`) });
  d0.add({
    path: "etc/xen/domU.cfg",
    type: "file",
    data: new TextEncoder().encode(
      `name = "pvdrv-domU"\ntype = "pv"\nkernel = "/boot/domU-vmlinux"\nramdisk = "/boot/domU-initrd.cpio"\n` +
        `extra = "console=hvc0 quiet"\nmemory = 1024\nvcpus = 1\ncpus = "1"\nvif = [ 'mac=${DOMU_MAC},bridge=xenbr0' ]\n` +
        `${domUDiskConfig()}\n` +
        `on_poweroff = "destroy"\non_crash = "destroy"\n`,
    ),
  });
  d0.close();
  return { xen, dom0Kernel: `${x}/boot/vmlinuz-${kver}`, dom0Initrd: `${XEN_DIR}/dom0.cpio` };
}

/** Whether a console line of a Xen lab run is worth showing (markers, test results), not boot noise. */
export function isReportLine(l: string): boolean {
  return /^( {2}|PVDRV-DOMU|PVDRV-BENCH|PVDRV-XEN-BLK|DOM0-|ok \||FAILED|error|netfront|blkfront|running|xen-agent)/
    .test(l);
}

type Json = Record<string, number>;

/** What a Xen lab run produced. */
export interface XenRun {
  /** Every console line. */
  lines: string[];
  /** The domU test run's exit status (null if it never finished). */
  domUExit: number | null;
  /** dom0's reports by marker: RECV, SEND, RECV-JUMBO, SEND-JUMBO, and "BENCH <step>". */
  dom0: Record<string, Json>;
  /** The domU's benchmark reports by step (PVDRV-BENCH <step> {json}). */
  bench: Record<string, Json>;
  /** Exit status of dom0's `xl shutdown -w` of the domU (null if it never ran). */
  shutdownRc: number | null;
  /** Seconds from QEMU start to the end. */
  seconds: number;
  /** The folder of this run's disk files (backing dom0's virtio disks). */
  diskDir: string;
  /** What pvdrv's blkfront wrote on xvda, as the domU reported it (PVDRV-XEN-BLK-EXPECT), or null. */
  blkExpect: { mib: number; block: number; seed: number } | null;
  /**
   * Per network benchmark step, the share of one host core (%) each of QEMU's vCPU threads ("CPU 0/TCG": dom0,
   * "CPU 1/TCG": the domU) and its other threads got from the step's start to its report.
   */
  hostCpu: Record<string, Record<string, number>>;
}

/** One verdict of a Xen lab run. */
export interface XenCheck {
  name: string;
  ok: boolean;
  detail: string;
}

/** The run's verdicts beyond the domU's own tests: the disks' backing files, what dom0 saw, and the shutdown. */
export function checkXenRun(r: XenRun): XenCheck[] {
  const agent = r.lines.find((l) => /^xen-agent: poweroff requested/.test(l));
  return [
    backingFileCheck(r.diskDir, r.blkExpect),
    readOnlyFileCheck(r.diskDir),
    ...dom0FrameChecks(r.dom0),
    {
      name: "xl shutdown of the domU handled by pvdrv's agent",
      ok: r.shutdownRc === 0 && agent !== undefined,
      detail: `xl shutdown -w exit ${r.shutdownRc ?? "never ran"}; agent ${
        agent ? `said '${agent}'` : "silent"
      }`,
    },
  ];
}

/** dom0's reports checked: every frame from the domU verified, every frame to it sent and none dropped by netback. */
export function dom0FrameChecks(dom0: Record<string, Json>): XenCheck[] {
  const got = (k: string) => dom0[k] ?? {};
  const frames = (k: string, n: number, what: string): XenCheck => {
    const v = got(k);
    return {
      name: `dom0 verified ${what} from the domU`,
      ok: v.received === n && v.corrupt === 0,
      detail: `${v.received ?? 0} of ${n}, ${v.corrupt ?? "?"} corrupt`,
    };
  };
  // netback's own drops (its queue to a slow domU full) would be lost frames the domU cannot explain.
  const sent = (k: string, n: number, what: string): XenCheck => ({
    name: `dom0 sent ${what} to the domU`,
    ok: got(k).sent === n && got(k).netbackDropped === 0,
    detail: `${got(k).sent ?? 0} of ${n}, ${got(k).netbackDropped ?? "?"} dropped by xen-netback`,
  });
  return [
    frames("RECV", XEN_FRAMES, "MTU-1500 frames"),
    sent("SEND", XEN_FRAMES, "MTU-1500 frames"),
    frames("RECV-JUMBO", XEN_JUMBO_FRAMES, "jumbo frames"),
    sent("SEND-JUMBO", XEN_JUMBO_FRAMES, "jumbo frames"),
  ];
}

/**
 * The name of benchmark step `step` in round `round` (tests/xen/guest/bench.ts names its steps the same way):
 * round 1 keeps the plain name, later rounds add "-r<round>".
 */
export function xenBenchStep(step: string, round: number): string {
  return round === 1 ? step : `${step}-r${round}`;
}

/**
 * Benchmark ratios (pvdrv over the kernel's xen-netfront) from a run, when it got that far: per row, the median of
 * the paired rounds' ratios (each round's pvdrv over the same round's kernel) with their spread.
 */
export function xenBenchSummary(r: XenRun): string[] {
  const pps = (v: Json | undefined) => v?.pps ?? 0;
  const rounds: number[] = [];
  for (let n = 1; r.bench[xenBenchStep("rx-kernel", n)]; n++) rounds.push(n);
  const at = xenBenchStep;
  const rows: [string, (n: number) => number, (n: number) => number][] = [
    [
      "TX (pps xen-netback took, counted on dom0's vif)",
      (n) => pps(r.dom0[`BENCH ${at("tx-pvdrv", n)}`]),
      (n) => pps(r.dom0[`BENCH ${at("tx-kernel", n)}`]),
    ],
    [
      "RX, pvdrv polling (pps counted in the domU)",
      (n) => pps(r.bench[at("rx-pvdrv", n)]),
      (n) => pps(r.bench[at("rx-kernel", n)]),
    ],
    [
      "RX, pvdrv on its event channel",
      (n) => pps(r.bench[at("rx-pvdrv-irq", n)]),
      (n) => pps(r.bench[at("rx-kernel", n)]),
    ],
  ];
  if (!rounds.length) rounds.push(1); // an incomplete run: say what there is
  return [
    ...rows.map(([what, p, k]) => {
      const ratios = rounds.filter((n) => k(n) && p(n)).map((n) => p(n) / k(n));
      const s = summarize(ratios);
      const each = rounds.map((n) => `${p(n).toFixed(0)}/${k(n).toFixed(0)}`).join(", ");
      if (rounds.length === 1) {
        return `${what}: pvdrv netfront ${p(1).toFixed(0)}, kernel xen-netfront ${k(1).toFixed(0)}, ratio ${
          ratios.length ? s.median.toFixed(2) : "n/a"
        }x`;
      }
      return `${what}: pvdrv/kernel ${
        ratios.length ? s.median.toFixed(2) : "n/a"
      }x (median of ${ratios.length} ` +
        `paired rounds, ${s.min.toFixed(2)}–${s.max.toFixed(2)}; pps pvdrv/kernel by round ${each})`;
    }),
    ...txDeliverySummary(r, rounds),
    ...rxDeliverySummary(r, rounds),
    ...xenDiskBenchSummary(r.bench),
    ...hostCpuSummary(r.hostCpu),
  ];
}

/**
 * One line per TX step: what xen-netback took off the ring (dom0's count) beside what the domU's sender says it
 * queued, how often pvdrv's sender found the ring full (the backend setting the pace), and the vif interrupts the
 * frontend's pushes cost dom0 (whose one vCPU runs netback).
 */
export function txDeliverySummary(r: Pick<XenRun, "dom0" | "bench">, rounds: number[]): string[] {
  const lines: string[] = [];
  for (const n of rounds) {
    for (const step of ["tx-pvdrv", "tx-kernel"]) {
      const k = xenBenchStep(step, n), v = r.dom0[`BENCH ${k}`], domU = r.bench[k];
      if (!v?.received || !v.seconds) continue;
      const irqs = v.netbackIrqs, full = domU?.fullPolls, batches = domU?.batches;
      lines.push(
        `domU → dom0 during ${k}: xen-netback took ${v.pps.toFixed(0)} pps` +
          (domU?.pps ? `, the domU queued ${domU.pps.toFixed(0)} pps` : "") +
          (typeof full === "number" && typeof batches === "number" && full + batches > 0
            ? `, ${(100 * full / (full + batches)).toFixed(1)} % of its polls found the ring full`
            : "") +
          (typeof irqs === "number"
            ? `, dom0 took ${irqs} vif interrupts (${(1000 * irqs / v.received).toFixed(1)} per 1000 frames)`
            : ""),
      );
    }
  }
  return lines;
}

/**
 * One line per RX step: what dom0 sent, what xen-netback dropped of it (its queue to the domU full), what the
 * domU counted, and what dom0 spent on the way that differs by receiver: interrupts from the frontend's request
 * pushes and wake-ups of netback's RX thread (its batches), and whether dom0's scheduler let each wake-up
 * preempt the sender. dom0's one vCPU sends and runs netback, so its rate toward two drivers is comparable only
 * beside these.
 */
export function rxDeliverySummary(r: Pick<XenRun, "dom0" | "bench">, rounds: number[]): string[] {
  const lines: string[] = [];
  for (const n of rounds) {
    for (const step of ["rx-pvdrv", "rx-pvdrv-irq", "rx-kernel"]) {
      const k = xenBenchStep(step, n), sent = r.dom0[`BENCH ${k}`], got = r.bench[k];
      if (!sent?.sent || !sent.seconds) continue;
      const dropped = sent.netbackDropped, irqs = sent.netbackIrqs, sleeps = sent.netbackRxSleeps;
      const counted = got?.pps ?? 0, pps = sent.sent / sent.seconds;
      lines.push(
        `dom0 → domU during ${k}: sent ${pps.toFixed(0)} pps, xen-netback dropped ${
          typeof dropped === "number" ? `${dropped} (${(100 * dropped / sent.sent).toFixed(1)} %)` : "?"
        }, the domU counted ${counted.toFixed(0)} pps (${(100 * counted / pps).toFixed(1)} %)` +
          (typeof irqs === "number"
            ? `, dom0 took ${irqs} vif interrupts (${(1000 * irqs / sent.sent).toFixed(1)} per 1000 frames)`
            : "") +
          (typeof sleeps === "number" && sleeps > 0
            ? `, netback's RX thread slept ${sleeps} times (${
              (sent.sent / sleeps).toFixed(1)
            } frames a wake-up)`
            : "") +
          (typeof sent.dom0WakeupPreemption === "number"
            ? `, dom0 ${sent.dom0WakeupPreemption ? "with" : "without"} wake-up preemption`
            : ""),
      );
    }
  }
  return lines;
}

/** One line per network step: what QEMU's vCPU threads (and the rest of QEMU) got of the host's cores. */
export function hostCpuSummary(hostCpu: Record<string, Record<string, number>>): string[] {
  return Object.entries(hostCpu).map(([step, shares]) =>
    `host CPU during ${step} (% of one core): ${
      Object.entries(shares).sort(([a], [b]) => a.localeCompare(b)).map(([t, p]) => `${t} ${p}`).join(", ")
    }`
  );
}

/** Boot the Xen lab and run the scenario. */
export async function runXenLab(
  opts: { timeoutSec?: number; onLine?: (l: string) => void; bench?: XenBench } = {},
): Promise<XenRun> {
  const img = await buildXenLab(opts.bench);
  const diskDir = `${XEN_DIR}/run`, drives = freshDisks(diskDir);
  const args = [
    ...drives,
    // Threads named by role ("CPU 0/TCG", …), so the host's view of each vCPU can be read per step.
    "-name",
    "pvdrv-xen,debug-threads=on",
    "-accel",
    "tcg",
    "-cpu",
    "qemu64",
    "-smp",
    "2",
    "-m",
    "3072",
    "-kernel",
    img.xen,
    "-append",
    // One physical CPU each: dom0 (netback, the peer) on CPU 0, the domU on CPU 1, so a polling driver in the
    // domU does not take CPU time from the backend it is measured against.
    "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M bootscrub=0 dom0_max_vcpus=1 dom0_vcpus_pin",
    "-initrd",
    `${img.dom0Kernel} console=hvc0 earlyprintk=xen rdinit=/init rootfstype=ramfs quiet,${img.dom0Initrd}`,
  ]; // deno-fmt-ignore
  const t0 = performance.now();
  const run: XenRun = {
    lines: [],
    domUExit: null,
    dom0: {},
    bench: {},
    shutdownRc: null,
    seconds: 0,
    diskDir,
    blkExpect: null,
    hostCpu: {},
  };
  // QEMU's threads are sampled at each benchmark line of the domU: a step runs from the line before its report.
  let qemuPid: number | null = null, sample: { at: number; ticks: Map<number, ThreadTicks> } | null = null;
  const sampleHost = (l: string) => {
    const step = l.match(/^PVDRV-BENCH ((?:tx|rx)-[\w-]+) /)?.[1];
    if (!step && !l.startsWith("bench: ")) return;
    qemuPid ??= findProcess(["qemu-system-x86_64", img.xen]);
    if (qemuPid === null) return;
    const now = { at: performance.now(), ticks: threadTicks(qemuPid) };
    if (step && sample) {
      run.hostCpu[step] = cpuShares(
        sample.ticks,
        now.ticks,
        (now.at - sample.at) / 1000,
        (n) => /TCG$/.test(n),
      );
    }
    sample = now;
  };
  const handle = (l: string) => {
    run.lines.push(l);
    opts.onLine?.(l);
    sampleHost(l);
    const exit = l.match(/PVDRV-DOMU-EXIT=(\d+)/);
    if (exit) run.domUExit = Number(exit[1]);
    // dom0's markers can land mid-line, after console output of the domU.
    const blk = l.match(/PVDRV-XEN-BLK-EXPECT (\{.*\})/);
    if (blk) {
      try {
        run.blkExpect = JSON.parse(blk[1]);
      } catch { /* reported as missing */ }
    }
    const shut = l.match(/DOM0-SHUTDOWN rc=(\d+)/);
    if (shut) run.shutdownRc = Number(shut[1]);
    const j = l.match(/(DOM0-|PVDRV-BENCH )([\w-]+(?: [\w-]+)?) (\{.*\})\s*$/);
    if (j) {
      try {
        (j[1] === "DOM0-" ? run.dom0 : run.bench)[j[2]] = JSON.parse(j[3]);
      } catch { /* reported as missing */ }
    }
  };
  const { stderr: err, timedOut } = await runQemu(args, opts.timeoutSec ?? 600, handle);
  run.seconds = (performance.now() - t0) / 1000;
  const fails = run.lines.filter((l) => /PVDRV-(MODULE|XL)-FAIL/.test(l));
  if (fails.length) throw new LabError(`Xen lab setup failed:\n  ${fails.join("\n  ")}`);
  if (timedOut) {
    throw new LabError(`Xen lab timed out\n--- last output ---\n${run.lines.slice(-40).join("\n")}`);
  }
  if (!run.lines.some((l) => l.includes("PVDRV-XEN-DONE"))) {
    throw new LabError(
      `Xen lab stopped early${err ? `\n--- qemu ---\n${err}` : ""}\n--- last output ---\n${
        run.lines.slice(-40).join("\n")
      }`,
    );
  }
  return run;
}
