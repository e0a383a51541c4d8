/**
 * The host half of `deno task bench --vhost`: one boot, one guest NIC on `-netdev vhost-user` whose socket is
 * served in turn by pvdrv's backend (lab/outer/vhost_load.ts) and by DPDK's vhost PMD (`dpdk-testpmd --vdev
 * net_vhost0`, rxonly or txonly), and a second guest NIC on QEMU's own `-netdev dgram` backend fed or drained by a
 * UDP end here. QEMU reconnects (`reconnect=1`) each time the backend changes. The guest (lab/guest/
 * bench_vhost.ts) asks for each backend, counts frames on its interface, and marks its window so the backend's
 * CPU time is read from /proc over exactly that window.
 * @module
 */
import { runInGuest } from "./qemu.ts";
import { ensureDpdk } from "./dpdk.ts";
import { freeUdpPort } from "./wire_peer.ts";
import { readyOutput, sharedMemoryArgs } from "./vhost_switch.ts";
import { LabError } from "./lab_error.ts";
import { VHOST_BENCH_DGRAM, VHOST_LAB } from "../topology.ts";
import { statTicks } from "./thread_cpu.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** One measured cell. */
export interface VhostBenchRow {
  /** pvdrv, dpdk (testpmd's vhost PMD) or qemu (its dgram backend). */
  backend: string;
  /** Guest TX or RX. */
  dir: "tx" | "rx";
  /** Frame size. */
  size: number;
  /** Offered rate (0: as fast as it goes). */
  rate: number;
  /** Frames the guest's interface counted in the window. */
  frames: number;
  /** The window. */
  seconds: number;
  /** frames / seconds. */
  pps: number;
  /** The backend process's CPU seconds over the window (pvdrv, dpdk). */
  cpuSeconds?: number;
}

interface Backend {
  pid: number;
  stop(): Promise<void>;
}

function cpuOf(pid: number): number {
  return statTicks(Deno.readTextFileSync(`/proc/${pid}/stat`)).ticks / 100; // clock ticks of 1/100 s
}

/** Run the benchmark: `seconds` per cell. */
export async function runVhostBench(seconds = 4, onLine: (l: string) => void = console.log): Promise<{
  rows: VhostBenchRow[];
  dpdk: string;
}> {
  const dpdk = await ensureDpdk();
  const dir = Deno.makeTempDirSync({ prefix: "pvdrv-vb-" }), sock = `${dir}/vb.sock`;
  const guestPort = freeUdpPort(), hostPort = freeUdpPort();
  let cur: Backend | null = null, mark = 0;
  const spawn = async (
    cmd: string,
    args: string[],
    env: Record<string, string>,
    what: string,
    ready: RegExp,
  ) => {
    const child = new Deno.Command(cmd, { args, env, stdin: "piped", stdout: "piped", stderr: "inherit" })
      .spawn();
    await readyOutput(child, ready, what);
    return {
      pid: child.pid,
      async stop() {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
        const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await child.status;
        clearTimeout(t);
        try {
          await child.stdin.close();
        } catch { /* closed */ }
      },
    };
  };
  const load = (mode: string, target: string, size: number, mac: string) =>
    spawn(
      Deno.execPath(),
      ["run", "-A", `${ROOT}/lab/outer/vhost_load.ts`, mode, target, String(size), mac],
      {},
      "vhost_load",
      /ready/,
    );
  const testpmd = (mode: string, size: number, mac: string) =>
    spawn(
      dpdk.testpmd,
      [
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "-l",
        "0-1",
        "--file-prefix",
        `pvdrv-vb-${Deno.pid}`,
        "-d",
        dpdk.pmdDir,
        "--vdev",
        `net_vhost0,iface=${sock},queues=1`,
        "--",
        `--forward-mode=${mode === "sink" ? "rxonly" : "txonly"}`,
        `--txpkts=${size}`,
        `--eth-peer=0,${mac}`,
        "--total-num-mbufs=4096",
        "--auto-start",
      ],
      { LD_LIBRARY_PATH: dpdk.libDir },
      "dpdk-testpmd",
      /Press enter to exit|Start automatic packet forwarding/,
    ); // deno-fmt-ignore
  const requests = {
    "pvdrv-vhost-backend": async (a?: Record<string, unknown>) => {
      await cur?.stop();
      cur = null;
      const c = a as { backend: string; dir: string; size: number; mac: string };
      const mode = c.dir === "tx" ? "sink" : "source";
      if (c.backend === "pvdrv") cur = await load(mode, `vhost-user:${sock}`, c.size, c.mac);
      else if (c.backend === "dpdk") cur = await testpmd(mode, c.size, c.mac);
      else if (c.backend === "qemu") {
        cur = await load(mode, `udp:127.0.0.1:${guestPort},local=${hostPort}`, c.size, c.mac);
      }
      return {};
    },
    "pvdrv-vhost-mark": () => {
      const now = cur ? cpuOf(cur.pid) : 0, d = now - mark;
      mark = now;
      return Promise.resolve({ cpuSeconds: d });
    },
  };
  // QEMU needs its vhost-user backend at start: pvdrv's sink until the first cell picks one.
  cur = await load("sink", `vhost-user:${sock}`, 60, "ff:ff:ff:ff:ff:ff");
  const cells = [];
  for (const dirn of ["tx", "rx"]) {
    for (const size of [60, 1514]) {
      for (const backend of ["pvdrv", "dpdk", "qemu"]) cells.push({ backend, dir: dirn, size, rate: 0 });
    }
  }
  for (const rate of [10_000, 50_000]) {
    for (const backend of ["pvdrv", "dpdk"]) cells.push({ backend, dir: "tx", size: 60, rate });
  }
  const rows: VhostBenchRow[] = [];
  const [dev, fn] = VHOST_LAB.kernelA.pci.split(":")[2].split(".");
  const [ddev, dfn] = VHOST_BENCH_DGRAM.pci.split(":")[2].split(".");
  const slot = (d: string, f: string) => `${parseInt(d, 16).toString(16)}.${f}`;
  try {
    const r = await runInGuest(
      `deno run -A --no-check lab/guest/bench_vhost.ts ${seconds} '${JSON.stringify(cells)}'`,
      {
        timeoutSec: 1200,
        onLine: (l) => {
          const m = l.match(/^PVDRV-VHOST-BENCH (.*)$/);
          if (!m) return onLine(l);
          const x = JSON.parse(m[1]);
          const row: VhostBenchRow = {
            backend: x.backend,
            dir: x.dir,
            size: x.size,
            rate: x.rate,
            frames: x.frames,
            seconds: x.seconds,
            pps: x.pps,
            cpuSeconds: x.backend === "qemu" ? undefined : x.host.cpuSeconds,
          };
          rows.push(row);
          onLine(
            `${row.backend} ${row.dir} ${row.size} B${row.rate ? ` at ${row.rate}/s` : ""}: ${
              Math.round(row.pps)
            } frames/s${row.cpuSeconds !== undefined ? `, ${row.cpuSeconds.toFixed(2)} s CPU` : ""}`,
          );
        },
        extraArgs: [
          ...sharedMemoryArgs(2048),
          "-chardev",
          `socket,id=vb,path=${sock},reconnect=1`,
          "-netdev",
          "vhost-user,id=vb,chardev=vb",
          "-device",
          `virtio-net-pci,netdev=vb,addr=${slot(dev, fn)},mac=${VHOST_LAB.kernelA.mac},vectors=0,romfile=`,
          "-netdev",
          `dgram,id=vbd,local.type=inet,local.host=127.0.0.1,local.port=${guestPort},remote.type=inet,` +
          `remote.host=127.0.0.1,remote.port=${hostPort}`,
          "-device",
          `virtio-net-pci,netdev=vbd,addr=${slot(ddev, dfn)},mac=${VHOST_BENCH_DGRAM.mac},romfile=`,
        ], // deno-fmt-ignore
        requests,
      },
    );
    if (r.code !== 0) throw new LabError(`the guest's bench failed (exit ${r.code})`);
  } finally {
    await (cur as Backend | null)?.stop();
    Deno.removeSync(dir, { recursive: true });
  }
  return { rows, dpdk: dpdk.version };
}

/** The README's table: frames/s per cell for each backend, and host CPU per packet at the offered rates. */
export function vhostTable(rows: VhostBenchRow[]): string {
  const find = (b: string, dir: string, size: number, rate = 0) =>
    rows.find((r) => r.backend === b && r.dir === dir && r.size === size && r.rate === rate);
  const k = (x: number | undefined) =>
    x === undefined ? "–" : x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(1);
  const ratio = (a?: number, b?: number) => a !== undefined && b ? `${(a / b).toFixed(2)}×` : "–";
  const out = [
    "| what                                   | pvdrv | DPDK vhost PMD | QEMU dgram | pvdrv / DPDK |",
    "| -------------------------------------- | ----: | -------------: | ---------: | -----------: |",
  ];
  for (const dir of ["tx", "rx"]) {
    for (const size of [60, 1514]) {
      const [p, d, q] = ["pvdrv", "dpdk", "qemu"].map((b) => find(b, dir, size)?.pps);
      out.push(
        `| guest ${dir.toUpperCase()} ${size} B (frames/s)`.padEnd(41) +
          `| ${k(p)} | ${k(d)} | ${k(q)} | ${ratio(p, d)} |`,
      );
    }
  }
  for (const rate of [10_000, 50_000]) {
    const [p, d] = ["pvdrv", "dpdk"].map((b) => {
      const r = find(b, "tx", 60, rate);
      return r?.cpuSeconds !== undefined && r.frames ? (r.cpuSeconds / r.frames) * 1e6 : undefined;
    });
    out.push(
      `| host CPU per packet at ${rate / 1000}k/s (µs)`.padEnd(41) +
        `| ${k(p)} | ${k(d)} | – | ${ratio(p, d)} |`,
    );
  }
  return out.join("\n");
}
