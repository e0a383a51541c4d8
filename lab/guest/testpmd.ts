/**
 * DPDK's testpmd as a benchmark peer in the lab guest: started once in interactive mode on VFIO-bound NICs and
 * driven over its stdin (`set fwd`, `set burst`, `start`, `show port stats`), so one EAL start serves every
 * burst size. The DPDK folder comes from lab/outer/dpdk.ts (PVDRV_DPDK names it in the guest).
 * @module
 */

const PROMPT = "testpmd> ";

/** Port counters from `show port stats`. */
export interface PortStats {
  /** RX-packets. */
  rx: number;
  /** TX-packets. */
  tx: number;
}

/** A running interactive testpmd. */
export class Testpmd {
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  #buf = "";
  /** Everything it printed (for error reports). */
  log = "";

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.#reader = child.stdout.getReader();
  }

  /**
   * Start testpmd on `pcis` (bound to vfio-pci) with its cores `lcores` ("0-1": one main, one forwarding core),
   * from the DPDK folder `dir` (dpdk-testpmd, lib/, pmds/). Resolves at the first prompt.
   */
  static async start(dir: string, pcis: string[], lcores = "0-1"): Promise<Testpmd> {
    // EAL refuses plugin folders under a world-writable parent; the initramfs root is one. It also wants /var/run.
    Deno.chmodSync("/", 0o755);
    Deno.mkdirSync("/var/run", { recursive: true });
    const args = [
      "-l",
      lcores,
      "-n",
      "1",
      ...pcis.flatMap((p) => ["-a", p]),
      "-d",
      `${dir}/pmds`,
      "--log-level=lib.eal:warning",
      "--",
      "-i",
      "--total-num-mbufs=8192",
    ];
    const child = new Deno.Command(`${dir}/dpdk-testpmd`, {
      args,
      // Line-buffered stdout (coreutils' stdbuf preload, placed there by lab/outer/dpdk.ts), so output precedes prompts.
      env: { LD_LIBRARY_PATH: `${dir}/lib`, LD_PRELOAD: `${dir}/lib/libstdbuf.so`, _STDBUF_O: "L" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const t = new Testpmd(child);
    const errText = new Response(child.stderr).text();
    try {
      await t.#untilPrompt(60_000);
    } catch (e) {
      throw new Error(`testpmd did not start: ${(e as Error).message}\n${t.log}\n${await errText}`);
    }
    return t;
  }

  async #untilPrompt(timeoutMs: number): Promise<string> {
    const dec = new TextDecoder();
    const deadline = performance.now() + timeoutMs;
    while (true) {
      const i = this.#buf.indexOf(PROMPT);
      if (i >= 0) {
        const out = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + PROMPT.length);
        return out;
      }
      if (performance.now() > deadline) throw new Error("no prompt in time");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const r = await Promise.race([
        this.#reader.read(),
        new Promise<null>((res) => timer = setTimeout(() => res(null), deadline - performance.now())),
      ]);
      clearTimeout(timer);
      if (r === null) continue;
      if (r.done) throw new Error("testpmd exited");
      const s = dec.decode(r.value, { stream: true });
      this.log += s;
      this.#buf += s;
    }
  }

  /** Run one command; returns what it printed. */
  async cmd(line: string, timeoutMs = 30_000): Promise<string> {
    await this.#stdin.write(new TextEncoder().encode(line + "\n"));
    return await this.#untilPrompt(timeoutMs);
  }

  /** Run `fn` while testpmd forwards (`start` … `stop`, in its current mode and burst). */
  async forwarding<T>(fn: () => Promise<T>): Promise<T> {
    await this.cmd("start");
    try {
      return await fn();
    } finally {
      await this.cmd("stop");
    }
  }

  /** Port `port`'s RX-packets. */
  async rxPackets(port: number): Promise<number> {
    return (await this.stats(port)).rx;
  }

  /** Port `port`'s packet counters. */
  async stats(port: number): Promise<PortStats> {
    const out = await this.cmd(`show port stats ${port}`);
    const rx = out.match(/RX-packets:\s+(\d+)/), tx = out.match(/TX-packets:\s+(\d+)/);
    if (!rx || !tx) throw new Error(`cannot parse testpmd's port stats:\n${out}`);
    return { rx: Number(rx[1]), tx: Number(tx[1]) };
  }

  /** Quit and wait for the process. */
  async quit(): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode("quit\n"));
      await this.#stdin.close();
    } catch { /* already gone */ }
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), 20_000);
    try {
      while (!(await this.#reader.read()).done) { /* drain */ }
    } catch { /* closed */ }
    await this.#child.status;
    clearTimeout(timer);
  }
}
