/** Shared helpers for tests that run inside the lab guest (see lab/outer/qemu.ts for the topology). */
import { bindDevice } from "../../../system/bind.ts";
import { readDevice } from "../../../ffi/sysfs.ts";
export { LAB } from "../../../lab/topology.ts";

/** True inside the lab guest (set by its /init). */
export const IN_GUEST = Deno.env.get("PVDRV_GUEST") === "1";

/** Where guest tests may write results for the host (the run's /out share). */
export const OUT = "/out";

/** Bind `pci` to `driver` unless it already is (tests share one boot, so order does not matter). */
export function ensureBound(pci: string, driver: "vfio-pci" | "uio_pci_generic"): void {
  if (readDevice(pci).driver !== driver) bindDevice(pci, driver);
}

/** Options for a guest-only test: ignored (with the reason in the name) outside the lab. */
export function guestTest(name: string, fn: () => void | Promise<void>): void {
  Deno.test({ name: IN_GUEST ? name : `${name} [run with deno task test:vm]`, ignore: !IN_GUEST, fn });
}

/**
 * Ask the outer side to run QMP command `execute` with `args` on this run's QEMU (lab/outer/qmp.ts) and wait for
 * QEMU's answer.
 */
export async function qmpRequest(
  execute: string,
  args: Record<string, unknown>,
  ms = 20_000,
): Promise<unknown> {
  const name = `${execute}-${Date.now()}`, dir = `${OUT}/qmp-requests`;
  Deno.writeTextFileSync(`${dir}/${name}.tmp`, JSON.stringify({ execute, arguments: args }));
  Deno.renameSync(`${dir}/${name}.tmp`, `${dir}/${name}.json`); // whole, or not at all, when the outer side looks
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      const answer = JSON.parse(Deno.readTextFileSync(`${dir}/${name}.done`));
      if (answer.error) throw new Error(`QMP ${execute}: ${answer.error.desc}`);
      return answer.return;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the outer side did not run QMP ${execute} within ${ms} ms`);
}
