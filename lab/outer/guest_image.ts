/**
 * Builds the lab guest from Debian packages and the project itself: Debian's kernel, the modules pvdrv needs,
 * busybox-static and the running Deno binary with its libraries, packed into an initramfs. Everything is cached
 * under build/vm and rebuilt only when an input changes. Packages come from `apt-get download` only.
 * @module
 */
import { CpioWriter } from "./cpio.ts";
import { NBDKIT_FILE_PLUGIN } from "../topology.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
/** Where the lab keeps its builds. */
export const VM_DIR = `${ROOT}/build/vm`;
/** Bump when the image layout or /init changes. */
const FORMAT = 5;

/** Kernel modules loaded at boot, in dependency-respecting order (resolved from each module's `depends=`). */
export const GUEST_MODULES = [
  "virtio_pci",
  "virtio_net",
  "virtio_blk",
  "9pnet_virtio",
  "9p",
  "irqbypass",
  "vfio",
  "vfio_iommu_type1",
  "vfio_virqfd",
  "vfio-pci-core",
  "vfio-pci",
  "uio",
  "uio_pci_generic",
  "pktgen",
  "tun",
  "nbd",
  "ext4",
  // ext4 checksums its metadata with crc32c, which it asks the crypto API for at mount (no modprobe here).
  "crc32c_generic",
];

/** Programs of the outer machine the guest gets with their libraries (e2fsprogs: for the NBD + ext4 test). */
export const GUEST_TOOLS = ["mkfs.ext4", "e2fsck"];

/**
 * Debian packages the guest gets programs from, unpacked with `dpkg-deb -x` (never installed on this machine):
 * the NBD peers of the block bench and tests — nbdkit (with its file plugin) and nbd-client (with libnl).
 */
export const GUEST_PACKAGES = ["nbdkit", "nbd-client", "libnl-3-200", "libnl-genl-3-200"];
/** Files of those packages the guest gets: path in the unpacked tree → path in the guest. */
const PACKAGE_FILES = [
  { from: "usr/bin/nbdkit", to: "bin/nbdkit" },
  { from: "sbin/nbd-client", to: "bin/nbd-client" },
  {
    from: "usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-file-plugin.so",
    to: NBDKIT_FILE_PLUGIN.slice(1), // nbdkit takes a plugin by path
  },
];

/** Download and unpack GUEST_PACKAGES once; returns the tree. */
async function extractPackages(): Promise<string> {
  const x = `${VM_DIR}/extract-tools`;
  const stamp = GUEST_PACKAGES.join(" ");
  if (exists(`${x}/.done`) && Deno.readTextFileSync(`${x}/.done`) === stamp) return x;
  const debs = await downloadAll(GUEST_PACKAGES, `${VM_DIR}/debs`);
  if (exists(x)) Deno.removeSync(x, { recursive: true });
  Deno.mkdirSync(x, { recursive: true });
  for (const deb of debs.values()) await run("dpkg-deb", ["-x", deb, x]);
  Deno.writeTextFileSync(`${x}/.done`, stamp);
  return x;
}

/** The unpacked package files, each with its guest path; the libraries they link come from this machine. */
async function packageTools(): Promise<{ name: string; path: string; target: string; libPath: string }[]> {
  const x = await extractPackages();
  const libPath = `${x}/usr/lib/x86_64-linux-gnu:${x}/lib/x86_64-linux-gnu`;
  return PACKAGE_FILES.map((f) => {
    if (!exists(`${x}/${f.from}`)) {
      throw new Error(`${f.from} is not in the unpacked ${GUEST_PACKAGES.join(", ")}`);
    }
    return { name: f.to.slice(f.to.lastIndexOf("/") + 1), path: `${x}/${f.from}`, target: f.to, libPath };
  });
}

/** Where `name` is on the outer machine (the sbin folders too, which a user's PATH may lack). */
function toolPath(name: string): string | null {
  for (const d of ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
    if (exists(`${d}/${name}`)) return Deno.realPathSync(`${d}/${name}`);
  }
  return null;
}

/** The guest tools (mkfs.ext4, e2fsck), installing e2fsprogs when one is missing. */
export async function guestTools(): Promise<GuestTool[]> {
  if (GUEST_TOOLS.some((t) => !toolPath(t))) await ensureTool("mkfs.ext4", ["e2fsprogs"]);
  return GUEST_TOOLS.map((name) => {
    const path = toolPath(name);
    if (!path) throw new Error(`${name} is missing on this machine: install e2fsprogs`);
    return { name, path };
  });
}

/** A program (or library) the guest gets, with the libraries it links. */
export interface GuestTool {
  /** Its name. */
  name: string;
  /** Where it is on this machine. */
  path: string;
  /** Where it goes in the guest (default bin/<name>: argv[0] keeps its name, so mkfs.ext4 makes ext4). */
  target?: string;
  /** Extra folders `ldd` searches (unpacked packages). */
  libPath?: string;
}

/** Add each tool and the libraries it links. */
async function addTools(w: CpioWriter, tools: GuestTool[], have: Set<string>): Promise<void> {
  for (const t of tools) {
    w.add({ path: t.target ?? `bin/${t.name}`, type: "file", data: Deno.readFileSync(t.path), mode: 0o755 });
    for (const lib of await sharedLibs(t.path, t.libPath)) {
      const target = lib.startsWith("/lib64/")
        ? lib
        : `/lib/x86_64-linux-gnu/${lib.slice(lib.lastIndexOf("/") + 1)}`;
      if (have.has(target)) continue;
      have.add(target);
      w.add({ path: target, type: "file", data: Deno.readFileSync(Deno.realPathSync(lib)), mode: 0o755 });
    }
  }
}

/** The built guest. */
export interface GuestImage {
  /** Kernel image path. */
  kernel: string;
  /** Initramfs path. */
  initrd: string;
  /** Kernel version. */
  kernelVersion: string;
  /** True when this call built it (false: cache hit). */
  built: boolean;
  /** Seconds spent building (0 on a cache hit). */
  buildSeconds: number;
}

function log(msg: string): void {
  console.error(`lab: ${msg}`);
}

/** Run a command, returning stdout; a failure throws with its stderr. */
export async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; quiet?: boolean; env?: Record<string, string> } = {},
): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, {
      args,
      cwd: opts.cwd,
      env: opts.env,
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).output();
  } catch (e) {
    throw new Error(`cannot run ${cmd}: ${(e as Error).message}`);
  }
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (exit ${out.code}):\n${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  return text;
}

/** Whether a path exists. */
export function exists(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}

async function which(cmd: string): Promise<boolean> {
  try {
    await run("sh", ["-c", `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}

let aptUpdated = false;
/** apt-get update, once per process. */
export async function aptUpdate(): Promise<void> {
  if (aptUpdated) return;
  log("apt-get update");
  await run("apt-get", ["update", "-qq"]);
  aptUpdated = true;
}

/**
 * Make sure `command` is on the PATH: as root, install `packages` with apt-get when it is missing; otherwise say
 * what to install.
 */
export async function ensureTool(command: string, packages: string[], what = command): Promise<void> {
  if (await which(command)) return;
  const list = packages.join(" ");
  if (Deno.uid() !== 0) {
    throw new Error(`${what} is missing: install it (sudo apt-get install ${list}) or run as root`);
  }
  await aptUpdate();
  log(`installing ${list} with apt-get`);
  await run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...packages]);
}

/** QEMU for the lab (qemu-system-x86). */
export function ensureQemu(): Promise<void> {
  return ensureTool("qemu-system-x86_64", ["qemu-system-x86"]);
}

/** A C compiler for the native shim (gcc and libc6-dev; `CC` names another). */
export function ensureCompiler(): Promise<void> {
  return ensureTool(Deno.env.get("CC") ?? "cc", ["gcc", "libc6-dev"], "a C compiler for the native shim");
}

/** The kernel package linux-image-amd64 depends on (or PVDRV_KERNEL_PACKAGE). */
export async function kernelPackage(): Promise<string> {
  const override = Deno.env.get("PVDRV_KERNEL_PACKAGE");
  if (override) return override;
  const find = async () =>
    (await run("apt-cache", ["depends", "linux-image-amd64"])).match(/Depends: (linux-image-\d\S*-amd64)/)
      ?.[1];
  let pkg = await find().catch(() => undefined);
  if (!pkg) {
    await aptUpdate();
    pkg = await find();
  }
  if (!pkg) {
    throw new Error("cannot find the kernel package that linux-image-amd64 depends on (apt-cache depends)");
  }
  return pkg;
}

/** `apt-get download` a package into `dir` (cached); returns the .deb path. */
export async function download(pkg: string, dir: string): Promise<string> {
  return (await downloadAll([pkg], dir)).get(pkg)!;
}

/** `apt-get download` every package of `pkgs` not yet in `dir`, in one apt run; returns name → .deb path. */
export async function downloadAll(pkgs: string[], dir: string): Promise<Map<string, string>> {
  Deno.mkdirSync(dir, { recursive: true });
  const find = (pkg: string) =>
    [...Deno.readDirSync(dir)].find((e) => e.name.startsWith(pkg + "_") && e.name.endsWith(".deb"))?.name;
  const missing = pkgs.filter((p) => !find(p));
  if (missing.length) {
    const few = missing.length <= 4;
    log(
      `apt-get download ${
        few ? missing.join(" ") : `${missing.length} packages (${missing.slice(0, 4).join(", ")}, …)`
      }`,
    );
    try {
      await run("apt-get", ["download", "-qq", ...missing], { cwd: dir });
    } catch {
      await aptUpdate();
      await run("apt-get", ["download", "-qq", ...missing], { cwd: dir });
    }
  }
  const out = new Map<string, string>();
  for (const p of pkgs) {
    const name = find(p);
    if (!name) throw new Error(`apt-get download ${p} produced no .deb`);
    out.set(p, `${dir}/${name}`);
  }
  return out;
}

/** Resolve `wanted` modules and their dependencies to .ko paths, dependencies first. */
export function resolveModules(modRoot: string, wanted: string[]): { name: string; path: string }[] {
  const index = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.name.endsWith(".ko")) index.set(e.name.slice(0, -3).replaceAll("-", "_"), p);
    }
  };
  walk(`${modRoot}/kernel`);
  const order: { name: string; path: string }[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (raw: string, from: string) => {
    const name = raw.replaceAll("-", "_");
    if (state.get(name) === "done") return;
    if (state.get(name) === "visiting") throw new Error(`module dependency cycle at ${name}`);
    const path = index.get(name);
    if (!path) throw new Error(`kernel module ${raw} (needed by ${from}) is not in ${modRoot}`);
    state.set(name, "visiting");
    for (const dep of moduleDepends(path)) visit(dep, name);
    state.set(name, "done");
    order.push({ name, path });
  };
  for (const w of wanted) visit(w, "pvdrv");
  return order;
}

/** The `depends=` list of a module's .modinfo. */
export function moduleDepends(koPath: string): string[] {
  const bin = Deno.readFileSync(koPath);
  const needle = new TextEncoder().encode("depends=");
  outer: for (let i = 0; i + needle.length < bin.length; i++) {
    for (let j = 0; j < needle.length; j++) if (bin[i + j] !== needle[j]) continue outer;
    if (i > 0 && bin[i - 1] !== 0) continue;
    let end = i + needle.length;
    while (end < bin.length && bin[end] !== 0) end++;
    const v = new TextDecoder().decode(bin.subarray(i + needle.length, end));
    return v ? v.split(",") : [];
  }
  return [];
}

/** The guest's /init: mounts, modules, 9p shares, then runs /out/cmd.sh and powers off. */
function initScript(modules: string[]): string {
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root DENO_DIR=/tmp/deno-dir DENO_NO_UPDATE_CHECK=1 NO_COLOR=1 PVDRV_GUEST=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/hugepages && mount -t hugetlbfs none /dev/hugepages
exec </dev/null >/dev/console 2>&1
echo "PVDRV-BOOTED $(cut -d' ' -f1 /proc/uptime)"
for m in ${modules.join(" ")}; do
  insmod /lib/modules/$m.ko 2>/tmp/insmod.err || { grep -q 'File exists' /tmp/insmod.err || echo "PVDRV-MODULE-FAIL $m: $(cat /tmp/insmod.err)"; }
done
echo 64 > /proc/sys/vm/nr_hugepages
# The kernel's test sockets are Deno programs that TCG can stall for a quarter second: 208 KiB (about 50 queued
# datagrams of 1472 bytes) overflowed once in CI (RcvbufErrors). 4 MiB holds a whole paced test's burst.
echo 4194304 > /proc/sys/net/core/rmem_default
echo 4194304 > /proc/sys/net/core/rmem_max
ip link set lo up
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 pvdrv /pvdrv || echo "PVDRV-MOUNT-FAIL pvdrv"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /out || echo "PVDRV-MOUNT-FAIL out"
cd /pvdrv
echo "PVDRV-BEGIN $(cut -d' ' -f1 /proc/uptime)"
sh /out/cmd.sh
echo "PVDRV-EXIT=$? $(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
`;
}

async function hashOf(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].slice(0, 8).map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Libraries `ldd` names for `binary` (also searching `libPath`); one it cannot find is an error. */
export async function sharedLibs(binary: string, libPath?: string): Promise<string[]> {
  const out = await run("ldd", [binary], { env: libPath ? { LD_LIBRARY_PATH: libPath } : undefined });
  const missing = out.split("\n").filter((l) => l.includes("not found")).map((l) => l.trim().split(" ")[0]);
  if (missing.length) throw new Error(`${binary} needs ${missing.join(", ")}, which this machine lacks`);
  return out.split("\n").map((l) => l.match(/(\/\S+) \(0x/)?.[1]).filter((p): p is string => !!p);
}

/**
 * Start an initramfs with what every pvdrv guest has: the usual folders, /dev/console and /dev/null, `init`,
 * busybox-static (from the unpacked packages in `extract`), /etc/passwd, the kernel modules in
 * /lib/modules/<name>.ko, and Deno with its libraries. The caller adds its own files and closes the writer.
 */
export async function busyboxInitramfs(
  path: string,
  o: {
    extract: string;
    init: string;
    modules: { name: string; path: string }[];
    deno: string;
    dirs?: string[];
    tools?: GuestTool[];
  },
): Promise<CpioWriter> {
  const w = new CpioWriter(path);
  const base = [
    "bin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "root",
    "etc",
    "lib",
    "lib/modules",
    "lib64",
    "usr",
    "usr/lib",
  ];
  for (const d of [...base, "lib/x86_64-linux-gnu", ...(o.dirs ?? [])]) w.add({ path: d, type: "dir" });
  w.add({ path: "dev/console", type: "char", major: 5, minor: 1 });
  w.add({ path: "dev/null", type: "char", major: 1, minor: 3, mode: 0o666 });
  const text = (t: string) => new TextEncoder().encode(t);
  w.add({ path: "init", type: "file", data: text(o.init), mode: 0o755 });
  w.add({
    path: "bin/busybox",
    type: "file",
    data: Deno.readFileSync(`${o.extract}/bin/busybox`),
    mode: 0o755,
  });
  w.add({ path: "etc/passwd", type: "file", data: text("root:x:0:0:root:/root:/bin/sh\n") });
  w.add({ path: "etc/group", type: "file", data: text("root:x:0:\n") });
  for (const m of o.modules) {
    w.add({ path: `lib/modules/${m.name}.ko`, type: "file", data: Deno.readFileSync(m.path) });
  }
  const have = await addDenoRuntime(w, o.deno);
  if (o.tools) await addTools(w, o.tools, have);
  return w;
}

/** Add the Deno binary as /bin/deno and the libraries it links, where its loader looks for them; returns them. */
export async function addDenoRuntime(w: CpioWriter, deno: string): Promise<Set<string>> {
  w.add({ path: "bin/deno", type: "file", data: Deno.readFileSync(deno), mode: 0o755 });
  const have = new Set<string>();
  for (const lib of await sharedLibs(deno)) {
    const real = Deno.realPathSync(lib);
    const target = lib.startsWith("/lib64/")
      ? lib
      : `/lib/x86_64-linux-gnu/${lib.slice(lib.lastIndexOf("/") + 1)}`;
    have.add(target);
    w.add({ path: target, type: "file", data: Deno.readFileSync(real), mode: 0o755 });
  }
  return have;
}

/** Download and unpack the kernel package (and busybox-static) once; returns the folder. */
export async function extractKernel(pkg: string): Promise<string> {
  const kernelVersion = pkg.replace(/^linux-image-/, "");
  const x = `${VM_DIR}/extract-${kernelVersion}`;
  if (exists(`${x}/.done`)) return x;
  const kdeb = await download(pkg, `${VM_DIR}/debs`);
  const bdeb = await download("busybox-static", `${VM_DIR}/debs`);
  if (exists(x)) Deno.removeSync(x, { recursive: true });
  Deno.mkdirSync(x, { recursive: true });
  await run("dpkg-deb", ["-x", kdeb, x]);
  await run("dpkg-deb", ["-x", bdeb, x]);
  Deno.writeTextFileSync(`${x}/.done`, "");
  return x;
}

/** Build (or reuse) the guest image. */
export async function buildGuest(opts: { force?: boolean } = {}): Promise<GuestImage> {
  const t0 = performance.now();
  const pkg = await kernelPackage();
  const deno = Deno.env.get("PVDRV_GUEST_DENO") ?? Deno.execPath();
  const denoStat = Deno.statSync(deno);
  const modules = GUEST_MODULES;
  const tools: GuestTool[] = [...await guestTools(), ...await packageTools()];
  const key = await hashOf(
    JSON.stringify({
      FORMAT,
      pkg,
      deno,
      size: denoStat.size,
      m: denoStat.mtime?.getTime(),
      tools: tools.map((t) => [t.name, t.path, t.target, Deno.statSync(t.path).size]),
      modules,
      init: initScript(modules),
    }),
  );
  const dir = `${VM_DIR}/guest-${key}`;
  const kernelVersion = pkg.replace(/^linux-image-/, "");
  const image = { kernel: `${dir}/vmlinuz`, initrd: `${dir}/initrd.cpio`, kernelVersion };
  if (!opts.force && exists(`${dir}/done`)) return { ...image, built: false, buildSeconds: 0 };

  log(`building guest image (${pkg}, deno ${Deno.version.deno}) in ${dir}`);
  const x = await extractKernel(pkg);
  Deno.mkdirSync(dir, { recursive: true });
  Deno.copyFileSync(`${x}/boot/vmlinuz-${kernelVersion}`, image.kernel);
  const mods = resolveModules(`${x}/lib/modules/${kernelVersion}`, modules);

  const w = await busyboxInitramfs(image.initrd + ".tmp", {
    extract: x,
    init: initScript(mods.map((m) => m.name)),
    modules: mods,
    deno,
    dirs: ["pvdrv", "out", "lib/nbdkit"],
    tools,
  });
  w.close();
  Deno.renameSync(image.initrd + ".tmp", image.initrd);
  Deno.writeTextFileSync(`${dir}/done`, new Date().toISOString());
  // Older images are dead weight: keep only this one.
  for (const e of Deno.readDirSync(VM_DIR)) {
    if (e.name.startsWith("guest-") && `${VM_DIR}/${e.name}` !== dir) {
      Deno.removeSync(`${VM_DIR}/${e.name}`, { recursive: true });
    }
  }
  const buildSeconds = (performance.now() - t0) / 1000;
  log(`guest image ready in ${buildSeconds.toFixed(1)} s`);
  return { ...image, built: true, buildSeconds };
}
