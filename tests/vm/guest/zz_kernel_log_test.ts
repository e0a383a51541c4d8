/**
 * After every other VM test of the boot (files run in name order: this one last), the guest kernel's log holds no
 * DMA fault from the IOMMU and no hung task.
 *
 * A disabled IRQ line is checked where pvdrv controls it (cli_vm_test.ts, after polling a VFIO NIC), not here:
 * after kill_test.ts SIGKILLs a VFIO user, the lab's virtio devices (no FLR, so vfio-pci cannot reset them on
 * release) may still complete requests and raise INTx once the kernel has torn the vectors down, which no
 * process can prevent; on devices that reset, vfio-pci quiesces them.
 */
import assert from "assert";
import { guestTest } from "./env.ts";

guestTest("kernel log: no DMAR fault and no hung task over the whole boot", () => {
  const r = new Deno.Command("dmesg", { stdout: "piped" }).outputSync();
  const log = new TextDecoder().decode(r.stdout);
  const bad = log.split("\n").filter((l) =>
    /DMAR: \[DMA (Read|Write)|DMAR:.*fault|blocked for more than/.test(l)
  );
  assert.deepEqual(bad, []);
});
