/**
 * Shared CLI plumbing: argument parsing with clear messages, and error reporting without stack traces.
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "parse-args";

/** Thrown for bad command-line input: printed as a message with usage, exit code 2. */
export class UsageError extends Error {
  /** Creates the error. */
  constructor(msg: string) {
    super(msg);
    this.name = "UsageError";
  }
}

/** Parse `args` strictly; unknown options become a UsageError. */
export function parse<T extends ParseArgsConfig["options"]>(
  args: string[],
  options: T,
  allowPositionals = true,
) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Parse an integer option within bounds. */
export function intArg(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (!/^\d+$/.test(v)) throw new UsageError(`--${name} must be a whole number, got '${v}'`);
  const n = Number(v);
  if (n < min || n > max) throw new UsageError(`--${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** Run a CLI main: errors print as one clear line (stack with PVDRV_DEBUG=1), usage errors add the usage text. */
export async function runMain(
  usage: string,
  main: () => Promise<number | void> | number | void,
): Promise<never> {
  let code = 0;
  try {
    code = (await main()) ?? 0;
  } catch (e) {
    const err = e as Error;
    if (err instanceof UsageError) {
      console.error(`error: ${err.message}\n\n${usage}`);
      code = 2;
    } else {
      console.error(`error: ${err?.message ?? err}`);
      if (Deno.env.get("PVDRV_DEBUG")) console.error(err?.stack);
      code = 1;
    }
  }
  Deno.exit(code);
}
