// The lab's own failure handling, proven with real boots (run by `deno task test` with the VM tests).
import assert from "assert";
import { LabError, runInGuest } from "../../lab/qemu.ts";

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
