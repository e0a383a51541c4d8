/**
 * `deno task test`: the unit tests on the host, then the VM tests in one shared lab boot. Prints a combined
 * "N passed, N failed" line and exits non-zero if anything failed (including a lab that did not boot).
 * @module
 */
import { LabError, runInGuest, WirePeer } from "../lab/outer/qemu.ts";
import { firstMismatch, patternByte, verifyPlan } from "../apps/disk_verify.ts";
import { checkXenRun, isReportLine, prefetchXenLab, runXenLab, xenBenchSummary } from "../lab/outer/xen.ts";
import { ensureDpdk } from "../lab/outer/dpdk.ts";
import { buildNative } from "../ffi/lib.ts";
import { ensureCompiler } from "../lab/outer/guest_image.ts";
import { parse, runMain, UsageError } from "./lib/common.ts";
import { soakCommand } from "./soak.ts";

const USAGE = `usage: deno task test [--unit-only | --vm-only] [--no-xen] [--filter TEXT]
  Runs tests/unit on the host and 30 s of the fuzzer (tests/fuzz, fixed seed), then tests/vm/guest inside one boot
  of the QEMU lab, then tests/lab (the lab's own failure handling and a quick VM benchmark), then the nested Xen lab
  (tests/xen: netfront against xen-netback).`;

interface Tally {
  passed: number;
  failed: number;
  ignored: number;
}

function tally(text: string): Tally {
  // deno test's summary: "ok | 11 passed | 0 failed | 1 ignored (1s)" (possibly several, one per run)
  const t = { passed: 0, failed: 0, ignored: 0 };
  for (
    const m of text.matchAll(
      /(?:ok|FAILED) \| (\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed(?: \| (\d+) ignored)?/g,
    )
  ) {
    t.passed += Number(m[1]);
    t.failed += Number(m[3]);
    t.ignored += Number(m[4] ?? 0);
  }
  return t;
}

async function hostTests(dir: string, filter?: string): Promise<{ ok: boolean; t: Tally }> {
  const args = ["test", "--allow-all", ...(filter ? ["--filter", filter] : []), dir];
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).spawn();
  let text = "";
  const dec = new TextDecoder();
  for await (const chunk of child.stdout) {
    const s = dec.decode(chunk, { stream: true });
    text += s;
    await Deno.stdout.write(chunk);
  }
  const st = await child.status;
  return { ok: st.success, t: tally(text) };
}

/** The fuzzer (tests/fuzz) with a fixed seed: one test per target, passing when nothing but clean breaks occur. */
async function fuzz(seconds: number): Promise<{ ok: boolean; t: Tally }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--v8-flags=--expose-gc",
      "tests/fuzz/fuzz.ts",
      "--seconds",
      String(seconds),
      "--seed",
      "1",
    ],
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  console.log(text.trimEnd());
  const t = { passed: 0, failed: 0, ignored: 0 };
  for (const m of text.matchAll(/^fuzz \S+ .*\.\.\. (ok|FAILED)$/gm)) m[1] === "ok" ? t.passed++ : t.failed++;
  if (!out.success && t.failed === 0) t.failed = 1;
  return { ok: out.success, t };
}

async function xen(): Promise<{ ok: boolean; t: Tally }> {
  try {
    const r = await runXenLab({
      onLine: (l) => {
        if (isReportLine(l)) console.log(l);
      },
    });
    const t = tally(r.lines.join("\n"));
    // dom0's own verdicts (frames it verified and sent) and the agent's handling of xl shutdown.
    const checks = checkXenRun(r);
    for (const c of checks) {
      console.log(`${c.name} ... ${c.ok ? "ok" : "FAILED"} (${c.detail})`);
      if (c.ok) t.passed++;
      else t.failed++;
    }
    for (const l of xenBenchSummary(r)) console.log(`bench: ${l}`);
    if (r.domUExit !== 0 && t.failed === 0) t.failed = 1;
    const dom0ok = checks.every((c) => c.ok);
    console.log(`xen lab: ${r.seconds.toFixed(0)} s`);
    return { ok: r.domUExit === 0 && dom0ok, t };
  } catch (e) {
    if (!(e instanceof LabError)) throw e;
    console.error(`xen lab: ${e.message}`);
    return { ok: false, t: { passed: 0, failed: 1, ignored: 0 } };
  }
}

/** What a guest test told the host to expect from its peer, or null when the test did not run (filtered). */
function readExpect<T = { valid: number }>(path: string): T | null {
  try {
    return JSON.parse(Deno.readTextFileSync(path));
  } catch {
    return null;
  }
}

async function vm(filter?: string): Promise<{ ok: boolean; t: Tally }> {
  const f = filter ? ` --filter '${filter.replaceAll("'", "")}'` : "";
  // The host side of 0000:00:06.0: reflects pvdrv frames and checks each one here, outside the guest.
  const host = new WirePeer();
  const reflecting = host.reflect();
  try {
    // The soak (one minute) shares the boot: both transports, polling and interrupts, resources sampled.
    const soak = filter ? "true" : soakCommand(1, 10, 3000);
    const r = await runInGuest(
      `deno test -A --no-check${f} tests/vm/guest/; t=$?; ${soak}; s=$?; [ $t = 0 ] && [ $s = 0 ]`,
      {
        wirePeerPort: host.port,
        guestPortForWire: host.guestPort,
        multiQueueTap: true,
        vhostSwitch: true,
        // The stage took 420-850 s on this 2-core machine as TCG's speed varied: 900 s left no margin.
        timeoutSec: 1500,
      },
    );
    console.log(`lab: boot ${r.bootSeconds.toFixed(1)} s, tests ${r.commandSeconds.toFixed(1)} s`);
    const t = tally(r.output);
    for (const m of r.output.matchAll(/^soak \(.*\) \.\.\. (ok|FAILED)$/gm)) {
      m[1] === "ok" ? t.passed++ : t.failed++;
    }
    let ok = r.code === 0;
    if (!ok && t.failed === 0) t.failed = 1; // a crash without a summary still fails
    // Host-side verdict of the host-peer test: the guest says how many frames it sent, the host counted them.
    const expect = readExpect(`${r.outDir}/host-peer-expect.json`);
    if (expect) {
      const h = host.reflected;
      const good = h.valid === expect.valid && h.corrupt === 0 && h.sendErrors === 0;
      console.log(
        `host peer: ${
          good ? "ok" : "FAILED"
        } — verified ${h.valid} of ${expect.valid} frames from the guest, ` +
          `${h.corrupt} corrupt, ${h.foreign} other, ${h.sendErrors} send errors`,
      );
      if (good) t.passed++;
      else {
        t.failed++;
        ok = false;
      }
    }
    // Host-side verdict of the multi-queue test: lab/c/mqpeer.c in the run's namespace counted what the guest sent.
    const mq = readExpect(`${r.outDir}/mq-expect.json`);
    if (mq) {
      const m = r.mqPeer!;
      const good = m.valid === mq.valid && m.corrupt === 0;
      console.log(
        `multi-queue TAP peer: ${good ? "ok" : "FAILED"} — verified ${m.valid} of ${mq.valid} flow frames, ` +
          `${m.corrupt} corrupt, ${m.foreign} other, reflected ${m.reflected}, blasted ${m.blasted}`,
      );
      if (good) t.passed++;
      else {
        t.failed++;
        ok = false;
      }
    }
    // Outer-side verdict of the disk test: the VFIO disk's backing file holds the pattern pvdrv wrote, read here,
    // outside the VM, without pvdrv.
    const blk = readExpect(`${r.outDir}/blk-expect.json`) as {
      file: string;
      mib: number;
      seed: number;
      block: number;
    } | null;
    if (blk) {
      const want = verifyPlan(blk.mib << 20, blk.block, blk.seed).expected;
      const f = Deno.openSync(`${r.outDir}/${blk.file}`);
      const got = new Uint8Array(want.length);
      let n = 0;
      while (n < got.length) {
        const k = f.readSync(got.subarray(n));
        if (!k) break;
        n += k;
      }
      f.close();
      const at = firstMismatch(got, want);
      console.log(
        `disk backing file: ${at < 0 ? "ok" : "FAILED"} — ${blk.file}: ${blk.mib} MiB ${
          at < 0 ? "hold the pattern pvdrv wrote" : `differ at byte ${at}`
        }`,
      );
      if (at < 0) t.passed++;
      else {
        t.failed++;
        ok = false;
      }
    }
    // Outer-side verdict of the NBD test: what the export acknowledged after a flush, before kill -9, is in the
    // UIO disk's backing file.
    const nbd = readExpect<{ file: string; offset: number; length: number; seed: number }>(
      `${r.outDir}/nbd-expect.json`,
    );
    if (nbd) {
      const f = Deno.openSync(`${r.outDir}/${nbd.file}`);
      const got = new Uint8Array(nbd.length);
      f.seekSync(nbd.offset, Deno.SeekMode.Start);
      for (let n = 0; n < got.length;) {
        const k = f.readSync(got.subarray(n));
        if (!k) break;
        n += k;
      }
      f.close();
      let at = -1;
      for (let i = 0; i < got.length && at < 0; i++) {
        if (got[i] !== patternByte(nbd.offset + i, nbd.seed)) at = i;
      }
      console.log(
        `NBD flush before kill -9: ${at < 0 ? "ok" : "FAILED"} — ${nbd.file} at ${nbd.offset}: ${
          at < 0 ? `${nbd.length} bytes as acknowledged` : `differs at byte ${at}`
        }`,
      );
      if (at < 0) t.passed++;
      else {
        t.failed++;
        ok = false;
      }
    }
    return { ok, t };
  } catch (e) {
    if (!(e instanceof LabError)) throw e;
    console.error(`lab: ${e.message}`);
    return { ok: false, t: { passed: 0, failed: 1, ignored: 0 } };
  } finally {
    host.close();
    await reflecting;
  }
}

await runMain(USAGE, async () => {
  const { values } = parse(Deno.args, {
    "unit-only": { type: "boolean" },
    "vm-only": { type: "boolean" },
    "no-xen": { type: "boolean" },
    filter: { type: "string" },
    help: { type: "boolean", short: "h" },
  }, false);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values["unit-only"] && values["vm-only"]) {
    throw new UsageError("--unit-only and --vm-only exclude each other (give neither to run everything)");
  }
  await ensureCompiler();
  buildNative({ quiet: true });
  const t0 = performance.now();
  const results: { name: string; ok: boolean; t: Tally }[] = [];
  // A whole run fetches the labs' downloads (dom0's debootstrap, Xen, DPDK: minutes on a fresh machine) while
  // the host tests run on the other core. A failure here is only logged: each stage fetches again for itself.
  const fetching = values["unit-only"] || values["vm-only"] || values.filter
    ? Promise.resolve()
    : Promise.all([
      values["no-xen"] ? undefined : prefetchXenLab(),
      ensureDpdk(),
    ]).then(() => {}, (e) =>
      console.error(`lab: fetching ahead failed (${e?.message ?? e}); the stage retries`));
  if (!values["vm-only"]) {
    results.push({ name: "unit", ...(await hostTests("tests/unit/", values.filter)) });
    if (!values.filter) {
      console.log("\n=== fuzz: the drivers against hostile models (fixed seed, 6 s per target) ===");
      results.push({ name: "fuzz", ...(await fuzz(6)) });
    }
  }
  await fetching;
  if (!values["unit-only"]) {
    console.log("\n=== VM tests (QEMU lab) ===");
    results.push({ name: "vm", ...(await vm(values.filter)) });
    console.log("\n=== lab: failure handling (two short boots) and bench --vm --quick (one boot) ===");
    results.push({ name: "lab", ...(await hostTests("tests/lab/", values.filter)) });
    if (!values["no-xen"] && !values.filter) {
      console.log("\n=== Xen lab (nested Xen under QEMU: netfront against dom0's xen-netback) ===");
      results.push({ name: "xen", ...(await xen()) });
    }
  }
  const sum = results.reduce(
    (a, r) => ({
      passed: a.passed + r.t.passed,
      failed: a.failed + r.t.failed,
      ignored: a.ignored + r.t.ignored,
    }),
    { passed: 0, failed: 0, ignored: 0 },
  );
  console.log(
    `\n${results.map((r) => `${r.name}: ${r.t.passed} passed, ${r.t.failed} failed`).join("; ")} (${
      ((performance.now() - t0) / 1000).toFixed(0)
    } s)`,
  );
  console.log(`total: ${sum.passed} passed, ${sum.failed} failed`);
  return results.every((r) => r.ok) && sum.failed === 0 ? 0 : 1;
});
