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
