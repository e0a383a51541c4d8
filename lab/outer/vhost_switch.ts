/**
 * The host side of the lab's vhost-user NICs (lab/topology.ts VHOST_LAB): pvdrv's switch (`cli/switch.ts`), one
 * vhost-user port per NIC, started before QEMU (QEMU waits at start for its backend) and stopped after it, its
 * per-port counters the outside view of what the guest's NICs moved. The guest can have it killed with SIGKILL and
 * restarted (a request through /out, lab/outer/qmp.ts): QEMU reconnects (`reconnect=1`) and resumes its rings.
 * @module
 */
import { VHOST_LAB } from "../topology.ts";
import { LabError } from "./lab_error.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/**
 * Wait until `child`'s stdout matches `ready` (killing it after 60 s); then the rest is read on, so the pipe never
 * fills, and `rest` resolves with all of it when the child closes stdout. `err` (its stderr, when
 * piped) goes into the error of a child that ends first.
 */
export async function readyOutput(
  child: Deno.ChildProcess,
  ready: RegExp,
  what: string,
  err: Promise<string> = Promise.resolve(""),
): Promise<{ rest: Promise<string> }> {
  const out = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const deadline = setTimeout(() => child.kill("SIGKILL"), 60_000);
  try {
    while (!ready.test(text)) {
      const r = await out.read();
      if (r.done) throw new LabError(`${what} did not start:\n${text}\n${await err}`);
      text += r.value;
    }
  } finally {
    clearTimeout(deadline);
  }
  // Wrapped: an async function returning a bare promise would adopt it, and the caller would wait for the end.
  const rest = (async () => {
    for (;;) {
      const r = await out.read();
      if (r.done) return text;
      text += r.value;
    }
  })();
  return { rest };
}

/** Guest memory a vhost-user backend can map: a shared memfd as the one NUMA node's memory (`-m` must match). */
export function sharedMemoryArgs(memoryMb: number): string[] {
  return ["-object", `memory-backend-memfd,id=mem,size=${memoryMb}M,share=on`, "-numa", "node,memdev=mem"];
}

/** The switch's final counters (cli/switch.ts --json). */
export interface SwitchReport {
  /** Per port: frames and bytes each way, drops, sessions. */
  ports: { port: string; rx: number; tx: number; dropped: number; link?: boolean; sessions?: number }[];
  /** Frames flooded. */
  flooded: number;
  /** Addresses learned at the end. */
  learned: number;
  /** What every switch of the run logged (sessions, refusals, quarantines), in order. */
  log?: string[];
}

/** The running switch and the QEMU arguments of its NICs. */
export interface VhostSwitch {
  /** `-chardev`/`-netdev`/`-device` arguments (and the shared memory backend QEMU needs). */
  args(memoryMb: number): string[];
  /** The running switch's counters, as it wrote them after this call (--stats, every second). */
  counters(): Promise<SwitchReport>;
  /** Kill the switch with SIGKILL and start it again on the same sockets; resolves when it is ready. */
  restart(): Promise<{ restarts: number }>;
  /** Stop it (SIGTERM) and read its counters; the sockets' folder is removed. */
  finish(): Promise<SwitchReport | null>;
}

/** Start the switch with one vhost-user port per lab NIC. */
export async function startVhostSwitch(): Promise<VhostSwitch> {
  // Socket paths must be short (108 bytes): a folder under /tmp.
  const dir = Deno.makeTempDirSync({ prefix: "pvdrv-vu-" });
  const sock = (name: string) => `${dir}/${name}.sock`;
  const names = Object.keys(VHOST_LAB) as (keyof typeof VHOST_LAB)[];
  const cmd = [
    "run",
    "-A",
    `${ROOT}/cli/switch.ts`,
    ...names.flatMap((n) => ["--port", `vhost-user:${sock(n)}`]),
    "--stats",
    `${dir}/stats.json`,
    "--json",
  ];
  let restarts = 0;
  const logs: string[] = [];
  const start = async () => {
    const child = new Deno.Command(Deno.execPath(), { args: cmd, stdout: "piped", stderr: "piped" }).spawn();
    const err = new Response(child.stderr).text();
    const { rest } = await readyOutput(child, /switch: ready/, "the vhost-user switch", err);
    return { child, rest, err };
  };
  let cur = await start();
  return {
    args(memoryMb: number): string[] {
      const a = sharedMemoryArgs(memoryMb);
      for (const n of names) {
        const nic = VHOST_LAB[n], [dev, fn] = nic.pci.split(":")[2].split(".");
        const legacy = nic.device === "transitional" ? ",disable-legacy=off,disable-modern=off" : "";
        // vectors=0: under TCG, QEMU 7.2 crashes setting MSI-X notifiers of a vhost-user device at DRIVER_OK.
        a.push(
          "-chardev",
          `socket,id=vu-${n},path=${sock(n)},reconnect=1`,
          "-netdev",
          `vhost-user,id=vu-${n},chardev=vu-${n}`,
          "-device",
          `virtio-net-pci,netdev=vu-${n},addr=${
            parseInt(dev, 16).toString(16)
          }.${fn},mac=${nic.mac},vectors=0,` +
            `romfile=${legacy}`,
        );
      }
      return a;
    },
    async counters() {
      const file = `${dir}/stats.json`, asked = Date.now();
      for (let i = 0; i < 100; i++) {
        try {
          if ((Deno.statSync(file).mtime?.getTime() ?? 0) > asked) {
            return JSON.parse(Deno.readTextFileSync(file)) as SwitchReport;
          }
        } catch { /* not written yet */ }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new LabError("the vhost-user switch wrote no counters for 10 s");
    },
    async restart() {
      cur.child.kill("SIGKILL");
      await cur.child.status;
      await cur.rest;
      logs.push(...(await cur.err).trim().split("\n"), "(killed with SIGKILL)");
      cur = await start();
      return { restarts: ++restarts };
    },
    async finish() {
      try {
        cur.child.kill("SIGTERM");
      } catch { /* already gone */ }
      const [status, text, err] = await Promise.all([cur.child.status, cur.rest, cur.err]);
      Deno.removeSync(dir, { recursive: true });
      const last = text.trim().split("\n").at(-1) ?? "";
      if (!last.startsWith("{")) {
        throw new LabError(
          `the vhost-user switch ended without counters (exit ${status.code}):\n${text}\n${err}`,
        );
      }
      logs.push(...err.trim().split("\n"));
      return { ...JSON.parse(last), log: logs.filter((l) => l) } as SwitchReport;
    },
  };
}
