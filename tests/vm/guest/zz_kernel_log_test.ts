/**
 * After every other VM test of the boot (files run in name order: this one last), the guest kernel's log holds no
 * sign that pvdrv left a device in a bad state: no interrupt line disabled because nobody handled it (a device
 * left asserting INTx), no DMA fault from the IOMMU, no hung task.
 */
import assert from "assert";
import { guestTest } from "./env.ts";

guestTest("kernel log: no disabled IRQ line, no DMAR fault, no hung task over the whole boot", () => {
  const r = new Deno.Command("dmesg", { stdout: "piped" }).outputSync();
  const log = new TextDecoder().decode(r.stdout);
  const bad = log.split("\n").filter((l) =>
    /nobody cared|Disabling IRQ|DMAR: \[DMA (Read|Write)|blocked for more than/.test(l)
  );
  assert.deepEqual(bad, []);
});
