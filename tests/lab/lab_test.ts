// The lab's own failure handling, and the VM benchmark's machinery, proven with real boots (run by
// `deno task test` with the VM tests).
import assert from "assert";
import { LabError, runInGuest } from "../../lab/outer/qemu.ts";
import { runVmBench } from "../../lab/outer/vm_bench.ts";
import { QUICK_PLAN } from "../../lab/bench_plan.ts";
import { markdownTables } from "../../lab/outer/bench_report.ts";

Deno.test("lab: a command's non-zero exit status comes back to the host, with its output", async () => {
  const lines: string[] = [];
  const r = await runInGuest("echo to-host; ls /dev/vfio >/dev/null && echo vfio-present; exit 7", {
    timeoutSec: 120,
    onLine: (l) => lines.push(l),
  });
  assert.equal(r.code, 7);
  assert.deepEqual(lines, ["to-host", "vfio-present"]);
  assert.ok(r.bootSeconds > 0 && r.bootSeconds < 120);
});

Deno.test("lab: a hung guest command is killed at the timeout with a clear error", async () => {
  const t0 = performance.now();
  await assert.rejects(
    runInGuest("echo started; sleep 600", { timeoutSec: 30, onLine: () => {} }),
    (e: Error) =>
      e instanceof LabError && /timed out after 30 s \(while running the command\)/.test(e.message) &&
      /started/.test(e.message),
  );
  assert.ok(performance.now() - t0 < 60_000);
});

Deno.test("lab: bench --vm --quick measures pvdrv, DPDK testpmd and the kernel on one NIC in one boot", async () => {
  const res = await runVmBench(QUICK_PLAN, () => {});
  assert.ok(res.dpdk, "DPDK was prepared");
  const want: [string, string][] = [
    ["tx", "pvdrv"],
    ["tx", "testpmd"],
    ["tx", "kernel"],
    ["rx", "pvdrv"],
    ["rx", "testpmd"],
    ["rx", "kernel"],
    ["fwd", "pvdrv"],
    ["fwd", "testpmd"],
    ["tx", "pvdrv-packed"],
    ["rx", "pvdrv-packed"],
    ["fwd", "pvdrv-packed"],
  ];
  for (const [test, driver] of want) {
    // pvdrv and testpmd took the NIC in turn, every round; the kernel once.
    const rounds = driver === "kernel" ? [1] : Array.from({ length: QUICK_PLAN.rounds }, (_, i) => i + 1);
    for (const round of rounds) {
      const r = res.rows.find((x) => x.test === test && x.driver === driver && x.round === round);
      assert.ok(r, `${test} ${driver} measured in round ${round}`);
      assert.equal(r.windows.length, QUICK_PLAN.windows, `${test} ${driver} ${round}: every window counted`);
      assert.ok(r.windows.every((w) => w > 0), `${test} ${driver} ${round}: ${r.windows}`);
      if (test !== "tx") {
        assert.ok((r.offered ?? 0) > 0, `${test} ${driver}: the host blaster offered frames`);
      }
    }
  }
  assert.ok(QUICK_PLAN.rounds > 1, "the quick plan proves the pairing");
  for (const mode of ["idle", "kernel", "pvdrv-poll", "pvdrv-irq", "testpmd"]) {
    const c = res.cpu.find((x) => x.mode === mode);
    assert.ok(c && c.seconds > 0, `CPU row ${mode}`);
    if (mode !== "idle") assert.ok(c.received > 0, `${mode} received frames at a fixed rate`);
  }
  // Each pvdrv/testpmd cell is a median of paired rounds with their spread; packed rings against testpmd and
  // against split rings too.
  const md = markdownTables(res);
  assert.match(md, /\| 32 \| [^\n]*\| \d+\.\d\dx \(\d+\.\d\d–\d+\.\d\d\) \|/);
  assert.match(md, /packed\/testpmd \| packed\/split/);
  assert.match(md, /\| 32 \|([^|\n]*\|){6} \d+\.\d\dx \(\d+\.\d\d–\d+\.\d\d\) \| \d+\.\d\dx \(/);
});
