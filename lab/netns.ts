/**
 * A network namespace made for one test or benchmark inside the lab guest: the kernel's peer NIC moves into it, so
 * traffic between pvdrv and the kernel crosses the emulated wire instead of the guest's loopback. Held open by a
 * `unshare -n sleep` process; busybox's `ip` has no netns subcommand, but `ip link set DEV netns PID` and
 * `nsenter -t PID -n` work (lab notes).
 * @module
 */

import { denoRunArgs } from "./guest/tasks.ts";

const dec = new TextDecoder();

/** Run `cmd args` and return stdout; throws with stderr when it fails. */
export async function run(cmd: string, args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!r.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${dec.decode(r.stderr).trim()}`);
  }
  return dec.decode(r.stdout);
}

/** A namespace and the interfaces moved into it. */
export class NetNs {
  readonly #holder: Deno.ChildProcess;
  readonly #moved: string[] = [];

  private constructor(holder: Deno.ChildProcess) {
    this.#holder = holder;
  }

  /** The holder's pid (the namespace is /proc/PID/ns/net). */
  get pid(): number {
    return this.#holder.pid;
  }

  /** Make a namespace with loopback up. */
  static async create(): Promise<NetNs> {
    const holder = new Deno.Command("unshare", {
      args: ["-n", "sleep", "1000000"],
      stdout: "null",
      stderr: "null",
    })
      .spawn();
    const ns = new NetNs(holder);
    // The holder has unshared once its net namespace differs from ours.
    const mine = Deno.readLinkSync("/proc/self/ns/net");
    for (let i = 0; i < 200; i++) {
      try {
        if (Deno.readLinkSync(`/proc/${holder.pid}/ns/net`) !== mine) break;
      } catch { /* not there yet */ }
      await new Promise((r) => setTimeout(r, 10));
    }
    await ns.sh("ip link set lo up");
    return ns;
  }

  /** Run a shell command inside the namespace; its stdout. */
  sh(script: string): Promise<string> {
    return run("nsenter", ["-t", String(this.pid), "-n", "sh", "-c", script]);
  }

  /** A command to run inside the namespace (spawn it yourself). */
  command(cmd: string, args: string[], o: Deno.CommandOptions = {}): Deno.Command {
    return new Deno.Command("nsenter", { ...o, args: ["-t", String(this.pid), "-n", cmd, ...args] });
  }

  /** `deno run` of a project script inside the namespace, output piped (lab/guest/tasks.ts's task, there). */
  task(script: string, args: string[]): Deno.Command {
    return this.command(Deno.execPath(), denoRunArgs(script, args), { stdout: "piped", stderr: "piped" });
  }

  /** Move interface `name` in, give it `cidr` and bring it up. */
  async adopt(name: string, cidr: string): Promise<void> {
    await run("ip", ["link", "set", name, "netns", String(this.pid)]);
    this.#moved.push(name);
    await this.sh(`ip addr add ${cidr} dev ${name} && ip link set ${name} up`);
  }

  /**
   * Packets interface `name` received and sent, from the namespace's /proc/net/dev (sysfs shows the mounting
   * namespace's interfaces, /proc the reader's).
   */
  async packets(name: string): Promise<{ rx: number; tx: number }> {
    const line = (await this.sh("cat /proc/net/dev")).split("\n").find((l) =>
      l.trim().startsWith(`${name}:`)
    );
    if (!line) throw new Error(`no ${name} in the namespace's /proc/net/dev`);
    const f = line.split(":")[1].trim().split(/\s+/).map(Number);
    return { rx: f[1], tx: f[9] };
  }

  /** Move the interfaces back (addresses flushed) and end the namespace. */
  async close(): Promise<void> {
    for (const n of this.#moved.splice(0)) {
      await this.sh(`ip addr flush dev ${n}; ip link set ${n} netns 1`).catch(() => {});
    }
    try {
      this.#holder.kill("SIGKILL");
    } catch { /* gone */ }
    await this.#holder.status;
  }
}
