/**
 * Shared CLI plumbing: argument parsing with clear messages, and error reporting without stack traces.
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";
import { parseArgs, type ParseArgsConfig } from "parse-args";

/** Thrown for bad command-line input: printed as a message with usage, exit code 2. */
export class UsageError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("usage", msg);
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
    throw new UsageError(parserMessage(e as Error & { code?: string }));
  }
}

/** One plain line for what node:util's parser rejected (its own messages carry '-- "--x"' advice). */
function parserMessage(e: Error & { code?: string }): string {
  const opt = e.message.match(/'(-[^' ]*)/)?.[1] ?? "";
  switch (e.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown option '${opt}'`;
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `unexpected argument '${e.message.match(/argument '([^']*)'/)?.[1] ?? "?"}'`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return /argument missing/.test(e.message)
        ? `option '${opt}' needs a value`
        : `option '${opt}' takes no value`;
  }
  return e.message.split(". ")[0];
}

/** Whether `stream` is a terminal (live status lines with `\r` only go there, never into pipes or files). */
export function isTerminal(stream: { isTerminal(): boolean } = Deno.stderr): boolean {
  try {
    return stream.isTerminal();
  } catch {
    return false;
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
