/** The lab topology (lab/topology.ts), declared once and turned into QEMU arguments (lab/outer/qemu.ts). */
import assert from "assert";
import { LAB } from "../../lab/topology.ts";
import { labNetArgs } from "../../lab/outer/qemu.ts";
import { cpuShares, findProcess, threadTicks } from "../../lab/outer/thread_cpu.ts";

Deno.test("lab topology: every NIC at its slot and MAC, each wire between the ends the topology names", () => {
  const args = labNetArgs({ wirePeer: 1001, guestForWire: 1002, forwardSink: 1003 });
  const devices = args.filter((_, i) => args[i - 1] === "-device");
  const netdevs = new Map(
    args.filter((_, i) => args[i - 1] === "-netdev").map((d) => {
      const id = d.match(/id=(\w+)/)![1];
      const local = Number(d.match(/local\.port=(\d+)/)![1]),
        remote = Number(d.match(/remote\.port=(\d+)/)![1]);
      return [id, { local, remote }];
    }),
  );
  for (const [name, n] of Object.entries(LAB)) {
    if (n.link === "mq-tap") {
      assert.ok(!netdevs.has(name), "the TAP NIC comes only with a multi-queue run");
      continue;
    }
    const dev = devices.find((d) => d.includes(`netdev=${name},`));
    assert.ok(dev, name);
    assert.match(
      dev!,
      new RegExp(`addr=${Number.parseInt(n.pci.slice(8, 10), 16).toString(16)}\\.0,mac=${n.mac},`),
    );
    assert.equal(/iommu_platform=on/.test(dev!), n.device === "modern", `${name} is ${n.device}`);
    assert.equal(/disable-modern=off/.test(dev!), n.device === "transitional", `${name} is ${n.device}`);
    const w = netdevs.get(name)!;
    if (n.link === "wire-peer") assert.deepEqual(w, { local: 1002, remote: 1001 });
    else if (n.link === "forward-sink") assert.equal(w.remote, 1003);
    else {
      const other = netdevs.get(n.link)!;
      assert.deepEqual(other, { local: w.remote, remote: w.local }, `${name} ⇄ ${n.link}`);
      assert.equal(LAB[n.link].link, name, "links are symmetric");
    }
  }
});

Deno.test("the Xen domU gets every code folder the library and its tasks import", async () => {
  const { CODE_DIRS } = await import("../../lab/outer/xen.ts");
  const cfg = JSON.parse(Deno.readTextFileSync(new URL("../../deno.json", import.meta.url)));
  const dirs = (cfg.publish.include as string[]).filter((p) => p.endsWith("/") && p !== "native/")
    .map((p) => p.slice(0, -1));
  for (const d of [...dirs, "cli", "lab"]) assert.ok(CODE_DIRS.includes(d), `${d}/ is missing from the domU`);
});

Deno.test("QMP requests: a guest's request file is run on the monitor socket and answered in a .done file", async () => {
  const { serveQmpRequests, QMP_REQUESTS } = await import("../../lab/outer/qmp.ts");
  const dir = Deno.makeTempDirSync(), sock = `${dir}/qmp.sock`;
  const seen: unknown[] = [];
  const l = Deno.listen({ transport: "unix", path: sock });
  const server = (async () => {
    for await (const c of l) {
      const enc = new TextEncoder(), dec = new TextDecoder();
      await c.write(enc.encode(JSON.stringify({ QMP: { version: {} } }) + "\n"));
      let buf = "";
      const b = new Uint8Array(4096);
      for (let n; (n = await c.read(b)) !== null;) {
        buf += dec.decode(b.subarray(0, n));
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const cmd = JSON.parse(buf.slice(0, i));
          buf = buf.slice(i + 1);
          seen.push(cmd);
          await c.write(enc.encode(JSON.stringify({ event: "NOISE" }) + "\n"));
          await c.write(enc.encode(JSON.stringify({ return: { echo: cmd.execute } }) + "\n"));
        }
      }
    }
  })();
  const q = serveQmpRequests(dir, sock);
  try {
    Deno.writeTextFileSync(
      `${dir}/${QMP_REQUESTS}/r1.json`,
      JSON.stringify({ execute: "block_resize", arguments: { size: 1 } }),
    );
    let done: string | null = null;
    for (let i = 0; i < 50 && !done; i++) {
      try {
        done = Deno.readTextFileSync(`${dir}/${QMP_REQUESTS}/r1.done`);
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    assert.deepEqual(
      JSON.parse(done!),
      { return: { echo: "block_resize" } },
      "events skipped, the answer kept",
    );
    assert.deepEqual(seen, [{ execute: "qmp_capabilities" }, {
      execute: "block_resize",
      arguments: { size: 1 },
    }]);
  } finally {
    await q.stop();
    l.close();
    await server.catch(() => {});
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("Xen lab: dom0's reports pass only with every frame verified, sent, and none dropped by netback", async () => {
  const { dom0FrameChecks, XEN_FRAMES, XEN_JUMBO_FRAMES } = await import("../../lab/outer/xen.ts");
  const good = {
    RECV: { received: XEN_FRAMES, corrupt: 0 },
    SEND: { sent: XEN_FRAMES, netbackDropped: 0 },
    "RECV-JUMBO": { received: XEN_JUMBO_FRAMES, corrupt: 0 },
    "SEND-JUMBO": { sent: XEN_JUMBO_FRAMES, netbackDropped: 0 },
  };
  assert.deepEqual(dom0FrameChecks(good).map((c) => c.ok), [true, true, true, true]);
  const dropped = dom0FrameChecks({ ...good, "SEND-JUMBO": { sent: XEN_JUMBO_FRAMES, netbackDropped: 3 } });
  assert.deepEqual(dropped.map((c) => c.ok), [true, true, true, false]);
  assert.match(dropped[3].detail, /3 dropped by xen-netback/);
  const missing = dom0FrameChecks({ ...good, SEND: { sent: XEN_FRAMES } }); // a report without the drop count
  assert.equal(missing[1].ok, false);
  const corrupt = dom0FrameChecks({ ...good, RECV: { received: XEN_FRAMES, corrupt: 1 } });
  assert.equal(corrupt[0].ok, false);
});

Deno.test("Xen bench: each row's ratio is the median of its paired rounds, with their spread", async () => {
  const { xenBenchSummary } = await import("../../lab/outer/xen.ts");
  const run = (rounds: number[][]) => {
    const dom0: Record<string, Record<string, number>> = {},
      bench: Record<string, Record<string, number>> = {};
    rounds.forEach(([txP, txK, rxP, rxK], i) => {
      const at = (s: string) => i === 0 ? s : `${s}-r${i + 1}`;
      dom0[`BENCH ${at("tx-pvdrv")}`] = { pps: txP };
      dom0[`BENCH ${at("tx-kernel")}`] = { pps: txK };
      bench[at("rx-pvdrv")] = { pps: rxP };
      bench[at("rx-pvdrv-irq")] = { pps: rxP };
      bench[at("rx-kernel")] = { pps: rxK };
    });
    return xenBenchSummary({
      lines: [],
      domUExit: 0,
      dom0,
      bench,
      shutdownRc: 0,
      seconds: 1,
      diskDir: "",
      blkExpect: null,
      hostCpu: {},
    });
  };
  // One round: the plain ratio.
  assert.match(run([[150, 100, 90, 100]])[0], /pvdrv netfront 150, kernel xen-netfront 100, ratio 1\.50x/);
  // Three rounds whose machine drifts: pooled medians would say 200/130 = 1.54x; the rounds say 1.40x.
  const three = run([[140, 100, 90, 100], [260, 200, 80, 100], [200, 130, 100, 100]]);
  assert.match(three[0], /TX .*pvdrv\/kernel 1\.40x \(median of 3 paired rounds, 1\.30–1\.54;/);
  assert.match(three[1], /RX, pvdrv polling .*0\.90x \(median of 3 paired rounds, 0\.80–1\.00;/);
});

Deno.test("Xen bench: each TX step says what netback took, what the domU queued and who set the pace", async () => {
  const { txDeliverySummary } = await import("../../lab/outer/xen.ts");
  const lines = txDeliverySummary({
    dom0: {
      "BENCH tx-pvdrv": { received: 280000, seconds: 4, pps: 70000, netbackIrqs: 560 },
      "BENCH tx-kernel": { received: 224000, seconds: 4, pps: 56000, netbackIrqs: 4480 },
      "BENCH tx-pvdrv-r2": { received: 0, seconds: 0, pps: 0 }, // the counter saw nothing: no line
    },
    bench: {
      "tx-pvdrv": { sent: 290000, pps: 72500, batches: 9000, fullPolls: 27000 },
      "tx-kernel": { sent: 224000, pps: 56000 },
    },
  }, [1, 2]);
  assert.deepEqual(lines, [
    "domU → dom0 during tx-pvdrv: xen-netback took 70000 pps, the domU queued 72500 pps, 75.0 % of its polls found " +
    "the ring full, dom0 took 560 vif interrupts (2.0 per 1000 frames)",
    "domU → dom0 during tx-kernel: xen-netback took 56000 pps, the domU queued 56000 pps, dom0 took 4480 vif " +
    "interrupts (20.0 per 1000 frames)",
  ]);
});

Deno.test("Xen bench: each RX step says what dom0 sent, what netback dropped and what the domU counted", async () => {
  const { rxDeliverySummary } = await import("../../lab/outer/xen.ts");
  const lines = rxDeliverySummary({
    dom0: {
      "BENCH rx-pvdrv": {
        sent: 120000,
        seconds: 4,
        pps: 30000,
        netbackDropped: 0,
        netbackIrqs: 600,
        netbackRxSleeps: 40000,
        dom0WakeupPreemption: 0,
      },
      "BENCH rx-kernel": {
        sent: 160000,
        seconds: 4,
        pps: 40000,
        netbackDropped: 40000,
        dom0WakeupPreemption: 1,
      },
      "BENCH rx-kernel-r2": { sent: 100000, seconds: 4, pps: 25000 }, // no drop count (an older dom0)
    },
    bench: { "rx-pvdrv": { pps: 29700 }, "rx-kernel": { pps: 30000 }, "rx-kernel-r2": { pps: 20000 } },
  }, [1, 2]);
  assert.deepEqual(lines, [
    "dom0 → domU during rx-pvdrv: sent 30000 pps, xen-netback dropped 0 (0.0 %), the domU counted 29700 pps (99.0 %)" +
    ", dom0 took 600 vif interrupts (5.0 per 1000 frames), netback's RX thread slept 40000 times (3.0 frames a wake-up)" +
    ", dom0 without wake-up preemption",
    "dom0 → domU during rx-kernel: sent 40000 pps, xen-netback dropped 40000 (25.0 %), the domU counted 30000 pps (75.0 %)" +
    ", dom0 with wake-up preemption",
    "dom0 → domU during rx-kernel-r2: sent 25000 pps, xen-netback dropped ?, the domU counted 20000 pps (80.0 %)",
  ]);
});

Deno.test("Xen lab: dom0's reports gain netback's drop and interrupt counts as valid JSON", async () => {
  const { DOM0_COUNTER_HELPERS } = await import("../../lab/outer/xen.ts");
  const dir = Deno.makeTempDirSync(), stat = `${dir}/tx_dropped`;
  Deno.writeTextFileSync(stat, "7\n");
  const script = DOM0_COUNTER_HELPERS.replace("/sys/class/net/vif1.0/statistics/tx_dropped", stat) +
    `\necho '{"sent":2000,"bytes":5,"seconds":1.5}' | withDrops 3`;
  const o = new Deno.Command("sh", { args: ["-c", script] }).outputSync();
  Deno.removeSync(dir, { recursive: true });
  assert.deepEqual(JSON.parse(new TextDecoder().decode(o.stdout)), {
    sent: 2000,
    bytes: 5,
    seconds: 1.5,
    netbackDropped: 4,
  });
  // dom0's interrupts from the vif, line by line since the list taken before: a line gone since (an old
  // connection) counts nothing, a new one from 0, one whose number came back with a lower count from 0.
  const dir2 = Deno.makeTempDirSync(), irqs = `${dir2}/interrupts`;
  const table = (rows: string[]) =>
    Deno.writeTextFileSync(irqs, ["           CPU0", ...rows].join("\n") + "\n");
  const helpers = DOM0_COUNTER_HELPERS.replaceAll("/proc/interrupts", irqs);
  const sh = (cmd: string) =>
    new TextDecoder().decode(
      new Deno.Command("sh", { args: ["-c", `${helpers}\n${cmd}`] }).outputSync().stdout,
    );
  table([
    " 80:      28000  xen-dyn    -event     vif1.0-q0-tx",
    " 81:       1000  xen-dyn    -event     vif1.0-q0-rx",
    " 82:        700  xen-dyn    -event     vif10.0-q0-tx",
  ]);
  const before = sh("vifIrqs");
  assert.equal(before.trim(), "80:28000 81:1000");
  table([
    " 81:        900  xen-dyn    -event     vif1.0-q0-tx",
    " 83:        200  xen-dyn    -event     vif1.0-q0-rx",
    " 82:       9999  xen-dyn    -event     vif10.0-q0-tx",
    " 84:         99  xen-dyn    -event     blkif-backend",
  ]);
  const out = sh(`echo '{"sent":10}' | withIrqs "${before}"`);
  Deno.removeSync(dir2, { recursive: true });
  assert.deepEqual(JSON.parse(out), { sent: 10, netbackIrqs: 1100 });
  // netback's guest-RX kthread of the newest connection, and how often it blocked since.
  const proc = Deno.makeTempDirSync();
  const task = (pid: number, comm: string, sleeps: number) => {
    Deno.mkdirSync(`${proc}/${pid}`, { recursive: true });
    Deno.writeTextFileSync(`${proc}/${pid}/comm`, `${comm}\n`);
    Deno.writeTextFileSync(`${proc}/${pid}/status`, `Name:\t${comm}\nvoluntary_ctxt_switches:\t${sleeps}\n`);
  };
  task(90, "vif1.0-q0-guest", 50);
  task(120, "vif1.0-q0-guest-rx", 10); // Linux 6.1 shows a kthread's whole name
  task(125, "vif1.0-q0-guest-tx", 10);
  task(130, "vif1.0-q0-deall", 5);
  task(140, "vif10.0-q0-gues", 5);
  const h = DOM0_COUNTER_HELPERS.replaceAll("/proc/[0-9]*", `${proc}/[0-9]*`);
  const run = (cmd: string) =>
    new TextDecoder().decode(new Deno.Command("sh", { args: ["-c", `${h}\n${cmd}`] }).outputSync().stdout);
  const thread = run("rxThread").trim();
  assert.equal(thread, `${proc}/120`);
  assert.equal(run(`sleeps ${thread}`).trim(), "10");
  task(120, "vif1.0-q0-guest-rx", 25);
  assert.deepEqual(JSON.parse(run(`echo '{"sent":10}' | withSleeps ${thread} 10`)), {
    sent: 10,
    netbackRxSleeps: 15,
  });
  Deno.removeSync(`${proc}/120`, { recursive: true });
  assert.deepEqual(JSON.parse(run(`echo '{"sent":10}' | withSleeps ${thread} 10`)), {
    sent: 10,
    netbackRxSleeps: null,
  });
  Deno.removeSync(proc, { recursive: true });
});

Deno.test("Xen lab: the flood's scheduler feature is set, read back and reported as JSON", async () => {
  const { DOM0_COUNTER_HELPERS } = await import("../../lab/outer/xen.ts");
  const dir = Deno.makeTempDirSync(), features = `${dir}/features`;
  const h = DOM0_COUNTER_HELPERS.replaceAll("/sys/kernel/debug/sched/features", features);
  const run = (cmd: string) =>
    new TextDecoder().decode(new Deno.Command("sh", { args: ["-c", `${h}\n${cmd}`] }).outputSync().stdout)
      .trim();
  assert.equal(run("wakeupPreemption"), "null"); // no debugfs: the kernel does not say
  // A kernel lists every feature, off ones with NO_; a write turns one on or off (a fixture file just holds it).
  Deno.writeTextFileSync(
    features,
    "GENTLE_FAIR_SLEEPERS START_DEBIT NO_NEXT_BUDDY WAKEUP_PREEMPTION HRTICK\n",
  );
  assert.equal(run("wakeupPreemption"), "1");
  run("floodSched NO_WAKEUP_PREEMPTION");
  assert.equal(Deno.readTextFileSync(features).trim(), "NO_WAKEUP_PREEMPTION");
  assert.equal(run("wakeupPreemption"), "0");
  assert.deepEqual(JSON.parse(run(`echo '{"sent":10}' | withSched $(wakeupPreemption)`)), {
    sent: 10,
    dom0WakeupPreemption: 0,
  });
  Deno.writeTextFileSync(features, "GENTLE_FAIR_SLEEPERS NO_WAKEUP_PREEMPTION_X\n");
  assert.equal(run("wakeupPreemption"), "null"); // only whole names count
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("thread CPU: ticks by thread name from a /proc tree, shares per step, the process found by its command line", async () => {
  const { hostCpuSummary } = await import("../../lab/outer/xen.ts");
  const proc = Deno.makeTempDirSync();
  try {
    const thread = (pid: number, tid: number, name: string, utime: number, stime: number) => {
      Deno.mkdirSync(`${proc}/${pid}/task/${tid}`, { recursive: true });
      // Fields 3.. after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
      Deno.writeTextFileSync(
        `${proc}/${pid}/task/${tid}/stat`,
        `${tid} (${name}) S 1 1 1 0 -1 0 0 0 0 0 ${utime} ${stime} 0 0`,
      );
    };
    Deno.mkdirSync(`${proc}/77`, { recursive: true });
    Deno.writeTextFileSync(`${proc}/77/cmdline`, "qemu-system-x86_64\0-kernel\0/lab/xen.gz\0");
    Deno.mkdirSync(`${proc}/78`, { recursive: true });
    Deno.writeTextFileSync(`${proc}/78/cmdline`, "qemu-system-x86_64\0-kernel\0/lab/vmlinuz\0");
    Deno.mkdirSync(`${proc}/self`, { recursive: true }); // not a pid: skipped
    assert.equal(findProcess(["qemu-system-x86_64", "/lab/xen.gz"], proc), 77);
    assert.equal(findProcess(["qemu-system-x86_64", "/nowhere"], proc), null);
    thread(77, 77, "qemu-system-x86", 10, 5);
    thread(77, 80, "CPU 0/TCG", 100, 20);
    thread(77, 81, "CPU 1/TCG", 200, 0);
    thread(77, 82, "call_rcu", 1, 1);
    const before = threadTicks(77, proc);
    assert.deepEqual(Object.fromEntries([...before].map(([tid, t]) => [tid, `${t.name}: ${t.ticks}`])), {
      77: "qemu-system-x86: 15",
      80: "CPU 0/TCG: 120",
      81: "CPU 1/TCG: 200",
      82: "call_rcu: 2",
    });
    thread(77, 77, "qemu-system-x86", 20, 5); // +10 ticks
    thread(77, 80, "CPU 0/TCG", 400, 20); // +300 ticks
    thread(77, 81, "CPU 1/TCG", 600, 0); // +400 ticks
    Deno.removeSync(`${proc}/77/task/82`, { recursive: true }); // a worker ended: left out, not negative
    thread(77, 83, "worker", 6, 4); // a worker started: counted whole (10 ticks)
    // 4 s at 100 ticks a second: 300 ticks is 75 % of a core; the threads not kept are "other".
    assert.deepEqual(cpuShares(before, threadTicks(77, proc), 4, (n) => /TCG$/.test(n)), {
      "CPU 0/TCG": 75,
      "CPU 1/TCG": 100,
      other: 5,
    });
    assert.equal(threadTicks(99, proc).size, 0); // a process that is gone has no threads
    assert.deepEqual(hostCpuSummary({ "rx-pvdrv": { other: 5, "CPU 1/TCG": 100, "CPU 0/TCG": 75 } }), [
      "host CPU during rx-pvdrv (% of one core): CPU 0/TCG 75, CPU 1/TCG 100, other 5",
    ]);
  } finally {
    Deno.removeSync(proc, { recursive: true });
  }
});

Deno.test("pvpeer ifrate counts what an interface received from the first frame, with no socket", async () => {
  const { buildPeerTool } = await import("../../lab/outer/build_c.ts");
  const peer = new Deno.Command(buildPeerTool(), { args: ["ifrate", "lo", "0.3"], stdout: "piped" }).spawn();
  const text = new Response(peer.stdout).text();
  // Datagrams to a closed port on lo for longer than the window: each is counted there, so is the reply.
  const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  let sent = 0;
  for (const end = Date.now() + 1200; Date.now() < end; sent++) {
    await sock.send(new Uint8Array(8), { transport: "udp", hostname: "127.0.0.1", port: 9 });
    await new Promise((r) => setTimeout(r, 1));
  }
  sock.close();
  assert.equal((await peer.status).code, 0);
  const lines = (await text).trim().split("\n");
  assert.equal(lines[0], "ready");
  const res = JSON.parse(lines[lines.length - 1]);
  assert.ok(res.received > 0, `counted ${res.received} frames on lo while ${sent} datagrams went out`);
  assert.ok(res.seconds > 0);
  // pps from the unrounded window; seconds is printed to the millisecond.
  assert.ok(Math.abs(res.pps - res.received / res.seconds) <= 1 + res.pps / 1000, JSON.stringify(res));
});
