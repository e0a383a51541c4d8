/**
 * Building the lab's C programs (lab/c/) with the outer machine's compiler: the peers (pvpeer, statically, for
 * the guest, which has no compiler), the outer side's wire tool (pvwire), and the multi-queue TAP helpers.
 * @module
 */
import { isStale } from "../../ffi/lib.ts";
import { LabError } from "./lab_error.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** Build lab/c/pvpeer.c statically into build/pvpeer when missing or stale (the guest has no compiler). */
export function buildPeerTool(): string {
  return buildLabTool("pvpeer", true);
}

/** Build lab/c/blkload.c (the kernel's side of the disk benchmarks) statically into build/blkload. */
export function buildBlkload(): string {
  return compileC(`${ROOT}/lab/c/blkload.c`, `${ROOT}/build/blkload`, ["-static", "-pthread"]);
}

/** Build lab/<name>.c into build/<name> when missing or stale (`guest`: statically, for the guest). */
export function buildLabTool(name: string, guest = false): string {
  return compileC(`${ROOT}/lab/c/${name}.c`, `${ROOT}/build/${name}`, guest ? ["-static"] : [], [
    `${ROOT}/lab/c/test_frame.h`,
  ]);
}

/**
 * Compile the C file `src` into `out` with `flags` (warnings are errors) when `out` is missing or older than `src`
 * or one of `deps`; returns `out`.
 */
export function compileC(src: string, out: string, flags: string[], deps: string[] = []): string {
  if (![src, ...deps].some((d) => isStale(out, d))) return out;
  Deno.mkdirSync(out.slice(0, out.lastIndexOf("/")), { recursive: true });
  const r = new Deno.Command(Deno.env.get("CC") ?? "cc", {
    args: ["-O2", "-Wall", "-Wextra", "-Werror", ...flags, "-o", out, src],
    stderr: "piped",
  }).outputSync();
  if (!r.success) throw new LabError(`building ${out} failed:\n${new TextDecoder().decode(r.stderr)}`);
  return out;
}
