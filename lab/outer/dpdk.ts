/**
 * DPDK for the VM lab: Debian's `dpdk-testpmd` (package dpdk-dev) and the libraries it needs, fetched with
 * `apt-get download` and unpacked under build/vm/dpdk-<version>, which the guest sees over the project's 9p share.
 * The guest's initramfs is not touched: the guest runs testpmd with LD_LIBRARY_PATH pointing into that folder and
 * loads only the PMDs the lab needs (PCI bus, ring mempool, virtio) with `-d`.
 * @module
 */
import { aptUpdate, downloadAll, exists, run, VM_DIR } from "./guest_image.ts";

/** Where the prepared DPDK lives, on the host and as the guest sees it. */
export interface DpdkBuild {
  /** Debian version of dpdk-dev. */
  version: string;
  /** Host folder. */
  dir: string;
  /** The testpmd binary inside it. */
  testpmd: string;
  /** Folder of every shared library testpmd and the PMDs need (the guest's LD_LIBRARY_PATH). */
  libDir: string;
  /** Folder holding only the PMDs the lab loads (`-d`). */
  pmdDir: string;
}

/** PMDs the lab needs: the PCI bus, the ring mempool, virtio (in the guest) and vhost (on the host, bench --vhost). */
const PMDS = [
  "librte_bus_pci.so.23",
  "librte_mempool_ring.so.23",
  "librte_net_virtio.so.23",
  "librte_net_vhost.so.23",
];
/** Bumped when the layout changes (more PMDs), so a cached build is redone. */
const LAYOUT = 2;
/** coreutils' stdio-buffering preload (what `stdbuf` uses). */
const STDBUF = "/usr/libexec/coreutils/libstdbuf.so";
/** Libraries the guest already has (they come with Deno's): never copied, so one libc is loaded. */
const GUEST_HAS = /^(libc|libm|libdl|libpthread|librt|libgcc_s|ld-linux-x86-64)\.so/;

function log(msg: string): void {
  console.error(`lab: ${msg}`);
}

async function libDepends(pkgs: string[]): Promise<string[]> {
  const out = await run("apt-cache", ["depends", "--no-recommends", "--no-suggests", ...pkgs]);
  return [...new Set([...out.matchAll(/^\s+(?:Pre)?Depends: (lib[\w.+-]+)$/gm)].map((m) => m[1]))];
}

/** Fetch and lay out DPDK once (cached by version); returns where it is. */
export async function ensureDpdk(): Promise<DpdkBuild> {
  let policy = await run("apt-cache", ["policy", "dpdk-dev"]);
  let version = policy.match(/Candidate: (\S+)/)?.[1];
  if (!version || version === "(none)") {
    await aptUpdate();
    policy = await run("apt-cache", ["policy", "dpdk-dev"]);
    version = policy.match(/Candidate: (\S+)/)?.[1];
  }
  if (!version || version === "(none)") throw new Error("apt has no dpdk-dev package (Debian 12 has 22.11)");
  const dir = `${VM_DIR}/dpdk-${version.replaceAll(/[^\w.+-]/g, "_")}-${LAYOUT}`;
  const build: DpdkBuild = {
    version,
    dir,
    testpmd: `${dir}/dpdk-testpmd`,
    libDir: `${dir}/lib`,
    pmdDir: `${dir}/pmds`,
  };
  if (exists(`${dir}/.done`)) return build;
  log(`preparing DPDK ${version} for the guest in ${dir}`);
  // dpdk-dev's library dependencies, the virtio PMD (a package of its own), the verbs providers the mlx PMDs link,
  // and one more level of library dependencies (the guest has nothing but libc).
  const first = (await libDepends(["dpdk-dev"])).filter((p) => !/^lib(dpdk-dev|c6|gcc-s1)$/.test(p));
  const pkgs = new Set([
    "dpdk-dev",
    "librte-net-virtio23",
    "librte-net-vhost23",
    "ibverbs-providers",
    ...first,
  ]);
  for (const p of await libDepends([...pkgs].filter((p) => p.startsWith("lib")))) {
    if (!/^lib(dpdk-dev|c6|gcc-s1)$/.test(p)) pkgs.add(p);
  }
  const debs = `${VM_DIR}/debs/dpdk`;
  const x = `${dir}/extract`;
  if (exists(dir)) Deno.removeSync(dir, { recursive: true });
  Deno.mkdirSync(x, { recursive: true });
  for (const deb of (await downloadAll([...pkgs], debs)).values()) await run("dpkg-deb", ["-x", deb, x]);
  const libPath = [`${x}/usr/lib/x86_64-linux-gnu`, `${x}/lib/x86_64-linux-gnu`].join(":");
  Deno.mkdirSync(build.libDir);
  Deno.mkdirSync(build.pmdDir);
  Deno.copyFileSync(`${x}/usr/bin/dpdk-testpmd`, build.testpmd);
  Deno.chmodSync(build.testpmd, 0o755);
  const pmdSrc = `${x}/usr/lib/x86_64-linux-gnu`;
  const missing = new Set<string>();
  for (const bin of [build.testpmd, ...PMDS.map((p) => `${pmdSrc}/${p}`)]) {
    const out = await run("sh", ["-c", `LD_LIBRARY_PATH=${libPath} ldd ${bin}`]);
    for (const m of out.matchAll(/^\s*(\S+) => (\S+)/gm)) {
      const [, name, path] = m;
      if (path === "not") missing.add(name);
      else if (!GUEST_HAS.test(name) && !exists(`${build.libDir}/${name}`)) {
        Deno.copyFileSync(Deno.realPathSync(path), `${build.libDir}/${name}`);
      }
    }
  }
  if (missing.size) throw new Error(`DPDK libraries not found after download: ${[...missing].join(", ")}`);
  // EAL loads from a folder only names ending in ".so" (or ".so.<ABI>"); a PMD testpmd already links (through
  // the drivers it is built with) must not be loaded a second time from another path.
  for (const p of PMDS.filter((p) => !exists(`${build.libDir}/${p}`))) {
    Deno.copyFileSync(
      Deno.realPathSync(`${pmdSrc}/${p}`),
      `${build.pmdDir}/${p.replace(/\.so\..*$/, ".so")}`,
    );
  }
  // testpmd's printf output to a pipe is block-buffered while its prompt is written directly: coreutils' stdbuf
  // preload makes stdout line-buffered so a command's output comes before the next prompt.
  Deno.copyFileSync(STDBUF, `${build.libDir}/libstdbuf.so`);
  Deno.removeSync(x, { recursive: true });
  Deno.writeTextFileSync(`${dir}/.done`, new Date().toISOString());
  return build;
}

/** A host path under the project as the lab guest sees it (the project is mounted at /pvdrv). */
export function guestPath(hostPath: string): string {
  const root = new URL("../../", import.meta.url).pathname;
  if (!hostPath.startsWith(root)) throw new Error(`${hostPath} is not inside the project`);
  return `/pvdrv/${hostPath.slice(root.length)}`;
}
