/**
 * Running pvdrv's tasks (and other programs) from the lab's tests: to completion with a JSON summary, or in the
 * background with their output watched for a line.
 * @module
 */
import { DRIVER_V8_FLAGS } from "../../hal/event_loop.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const dec = new TextDecoder();

/**
 * The arguments of `deno run -A --no-check <script> <args>`, the script relative to the project root, with the
 * young generation pvdrv's tasks run with ({@link DRIVER_V8_FLAGS}, as deno.json's tasks pass it).
 */
export function denoRunArgs(script: string, args: string[]): string[] {
  return ["run", "-A", "--no-check", `--v8-flags=${DRIVER_V8_FLAGS.join(",")}`, `${ROOT}${script}`, ...args];
}

/** `deno run -A --no-check <script> <args>` from the project root, output piped. */
export function task(script: string, args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: denoRunArgs(script, args),
    stdout: "piped",
    stderr: "piped",
  });
}

/** Run `cmd` (output piped) to completion; its last stdout line as JSON. Throws with its output unless it exits 0. */
export async function commandJson<T = Record<string, unknown>>(
  cmd: Deno.Command,
  what = "command",
): Promise<T> {
  const r = await cmd.output();
  const out = dec.decode(r.stdout);
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}\n${out}\n${dec.decode(r.stderr)}`);
  return JSON.parse(out.trim().split("\n").pop()!);
}

/** Run a task to completion; its last stdout line parsed as JSON (see {@link commandJson}). */
export function taskJson(script: string, args: string[]): Promise<Record<string, unknown>> {
  return commandJson(task(script, args), `${script} ${args.join(" ")}`);
}

/** A running child (stdout and stderr piped) whose output is collected; {@link Running.waitFor} a pattern. */
export class Running {
  /** The child. */
  readonly child: Deno.ChildProcess;
  /** Everything it printed so far (both streams). */
  text = "";
  #waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  readonly #done: Promise<void>;

  /** Spawn `cmd` (its stdout and stderr must be piped). */
  constructor(cmd: Deno.Command) {
    this.child = cmd.spawn();
    this.#done = Promise.all([this.#read(this.child.stdout), this.#read(this.child.stderr)]).then(() => {});
  }

  async #read(s: ReadableStream<Uint8Array>): Promise<void> {
    const d = new TextDecoder();
    for await (const c of s) {
      this.text += d.decode(c, { stream: true });
      for (const w of [...this.#waiters]) {
        const m = this.text.match(w.re);
        if (m) this.#waiters.splice(this.#waiters.indexOf(w), 1), w.resolve(m);
      }
    }
  }

  /** Resolve at the first output matching `re`; reject after `ms` with the output so far. */
  waitFor(re: RegExp, ms = 60_000): Promise<RegExpMatchArray> {
    const m = this.text.match(re);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`no ${re} within ${ms} ms; output so far:\n${this.text}`)),
        ms,
      );
      this.#waiters.push({ re, resolve: (m) => (clearTimeout(t), resolve(m)) });
    });
  }

  /** Send `signal` (SIGTERM) and return the exit code. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    try {
      this.child.kill(signal);
    } catch { /* already gone */ }
    return await this.exit();
  }

  /** Wait for the exit code. */
  async exit(): Promise<number> {
    const st = await this.child.status;
    await this.#done;
    return st.code;
  }
}

/**
 * The children a test started, stopped together in its `finally`: a failed assertion must not leave a task holding
 * a NIC, or every later test in the boot fails on a device still in use.
 */
export class Children {
  readonly #all: Running[] = [];

  /** Spawn `cmd` as a {@link Running} kept for {@link Children.stopAll}. */
  start(cmd: Deno.Command): Running {
    const r = new Running(cmd);
    this.#all.push(r);
    return r;
  }

  /** SIGTERM every child still running (those already reaped are left alone) and wait for each. */
  async stopAll(): Promise<void> {
    await Promise.all(this.#all.splice(0).map((r) => r.stop().catch(() => -1)));
  }
}
