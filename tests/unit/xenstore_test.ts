import assert from "assert";
import { XenStore, type XenStoreError, XS } from "../../drivers/xen/xenstore.ts";
import { XenStoreServer } from "../models/xenstore_server.ts";
import { PATH_MAX } from "../../drivers/xen/xenstore.ts";

function connect(server = new XenStoreServer()) {
  const { transport, conn } = server.connect();
  return { server, conn, xs: new XenStore(transport) };
}

Deno.test("xenstore: read, write, directory, mkdir, rm, domain path", async () => {
  const { xs, server } = connect();
  try {
    await xs.write("/local/domain/1/device/vif/0/mac", "00:16:3e:00:00:01");
    assert.equal(await xs.read("/local/domain/1/device/vif/0/mac"), "00:16:3e:00:00:01");
    assert.equal(server.get("/local/domain/1/device/vif/0/mac"), "00:16:3e:00:00:01");
    await xs.mkdir("/local/domain/1/device/vif/1");
    assert.deepEqual(await xs.directory("/local/domain/1/device/vif"), ["0", "1"]);
    await xs.rm("/local/domain/1/device/vif/1");
    assert.deepEqual(await xs.directory("/local/domain/1/device/vif"), ["0"]);
    await assert.rejects(xs.read("/nope"), (e: XenStoreError) => e.code === "ENOENT");
    assert.equal(await xs.tryRead("/nope"), null);
    assert.equal(await xs.domainPath(3), "/local/domain/3");
    await assert.rejects(xs.read("bad path with spaces"), /invalid xenstore path/);
    // Concurrent requests are matched by id.
    const vals = await Promise.all([1, 2, 3].map(async (i) => {
      await xs.write(`/t/${i}`, String(i * 10));
      return xs.read(`/t/${i}`);
    }));
    assert.deepEqual(vals, ["10", "20", "30"]);
  } finally {
    await xs.close();
  }
});

Deno.test("xenstore: transactions commit atomically and retry on EAGAIN", async () => {
  const { xs, server } = connect();
  try {
    let runs = 0;
    server.forceConflicts = 2;
    await xs.transaction(async (tx) => {
      runs++;
      await xs.write("/fe/ring-ref", "8", tx);
      await xs.write("/fe/state", "4", tx);
      assert.equal(server.get("/fe/state"), undefined, "not visible before commit");
    });
    assert.equal(runs, 3, "two conflicts, then committed");
    assert.equal(server.get("/fe/ring-ref"), "8");
    server.forceConflicts = 100;
    await assert.rejects(
      xs.transaction(() => Promise.resolve(), 4),
      (e: XenStoreError) => e.code === "EAGAIN",
    );
    server.forceConflicts = 0;
    await assert.rejects(
      xs.transaction(async (tx) => {
        await xs.write("/fe/aborted", "1", tx);
        throw new Error("changed my mind");
      }),
      /changed my mind/,
    );
    assert.equal(server.get("/fe/aborted"), undefined, "aborted transaction left nothing");
  } finally {
    await xs.close();
  }
});

Deno.test("xenstore: watches fire once on registration, then on changes below the path; waitFor", async () => {
  const { xs, server } = connect();
  try {
    const seen: string[] = [];
    const it = xs.watch("/be/state");
    seen.push((await it.next()).value!);
    server.set("/be/state", "2");
    seen.push((await it.next()).value!);
    server.set("/be/state/sub", "x");
    seen.push((await it.next()).value!);
    await it.return!();
    assert.deepEqual(seen, ["/be/state", "/be/state", "/be/state/sub"]);
    assert.ok(server.log.some((l) => l.type === XS.UNWATCH), "breaking out unwatches");
    setTimeout(() => server.set("/be/other", "4"), 5);
    setTimeout(() => server.set("/be/other", "5"), 10);
    assert.equal(await xs.waitFor("/be/other", (v) => v === "5", 2000), "5");
    await assert.rejects(
      xs.waitFor("/be/never", (v) => v === "1", 50),
      (e: XenStoreError) => e.code === "ETIMEDOUT",
    );
  } finally {
    await xs.close();
  }
});

Deno.test("xenstore: malformed replies fail the connection clearly", async () => {
  const bad = (make: () => Uint8Array, re: RegExp) => async () => {
    const { xs, conn } = connect();
    conn.mute = true;
    const p = xs.read("/x");
    conn.raw(make());
    await assert.rejects(p, re);
    await assert.rejects(xs.read("/y"), re, "connection stays failed");
    await xs.close();
  };
  const hdr = (type: number, req: number, len: number) => {
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, type, true);
    dv.setUint32(4, req, true);
    dv.setUint32(12, len, true);
    return b;
  };
  await bad(() => hdr(XS.READ, 1, 100000), /payload/)();
  await bad(() => hdr(XS.READ, 77, 0), /unknown request 77/)();
  await bad(() => hdr(XS.WRITE, 1, 0), /answered request type 2 with type 11/)();
  await bad(
    () => new Uint8Array([...hdr(XS.WATCH_EVENT, 0, 3), 0x61, 0x62, 0x63]),
    /malformed watch event/,
  )();
});

Deno.test("xen agent: advertises features, acts on poweroff/reboot, clears the request, ignores the rest", async () => {
  const { runAgent } = await import("../../drivers/xen/agent.ts");
  const server = new XenStoreServer();
  const xs = new XenStore(server.connect(5).transport);
  const acted: string[] = [], logs: string[] = [];
  const stop = new AbortController();
  const agent = runAgent(xs, { act: (a) => void acted.push(a), log: (m) => logs.push(m) }, stop.signal);
  while (server.get("/local/domain/5/control/feature-reboot") !== "1") {
    await new Promise((r) => setTimeout(r, 1));
  }
  assert.equal(server.get("/local/domain/5/control/feature-poweroff"), "1");
  server.set("/local/domain/5/control/shutdown", "s3");
  while (logs.length < 1) await new Promise((r) => setTimeout(r, 1));
  server.set("/local/domain/5/control/shutdown", "reboot");
  while (acted.length < 1) await new Promise((r) => setTimeout(r, 1));
  assert.equal(server.get("/local/domain/5/control/shutdown"), "", "request cleared");
  server.set("/local/domain/5/control/shutdown", "poweroff");
  while (acted.length < 2) await new Promise((r) => setTimeout(r, 1));
  stop.abort();
  assert.equal(await agent, null);
  assert.deepEqual(acted, ["reboot", "poweroff"]);
  assert.ok(logs.some((l) => /ignoring control\/shutdown='s3'/.test(l)));
  assert.equal(server.get("/local/domain/5/data/pvdrv-agent"), undefined, "the agent's key goes with it");
  await xs.close();
});

Deno.test("xen agent: requests handed over by the kernel's poweroff helper are acted on, and the helper restored", async () => {
  const { runAgent, installKernelHandoff, AGENT_KEY } = await import("../../drivers/xen/agent.ts");
  const server = new XenStoreServer();
  const xs = new XenStore(server.connect(6).transport);
  const sysctl = Deno.makeTempFileSync();
  Deno.writeTextFileSync(sysctl, "/sbin/poweroff\n");
  const acted: string[] = [], logs: string[] = [];
  let fire: ((a: "poweroff", via: string) => void) | null = null;
  const agent = runAgent(xs, {
    once: true,
    act: (a) => void acted.push(a),
    log: (m) => logs.push(m),
    external: (deliver) => {
      const restore = installKernelHandoff(4242, sysctl, "/bin/kill");
      fire = deliver;
      return restore;
    },
  });
  while (server.get(`/local/domain/6/${AGENT_KEY}`) !== "running") await new Promise((r) => setTimeout(r, 1));
  assert.equal(Deno.readTextFileSync(sysctl), "/bin/kill -USR2 4242\n");
  fire!("poweroff", "the kernel");
  assert.equal(await agent, "poweroff");
  assert.deepEqual(acted, ["poweroff"]);
  assert.ok(logs.includes("poweroff requested (through the kernel)"), logs.join("; "));
  assert.equal(Deno.readTextFileSync(sysctl), "/sbin/poweroff\n", "previous helper restored");
  assert.throws(() => installKernelHandoff(1, sysctl, null), /no kill program/);
  // Without a kill program named, the first of /bin/kill and /usr/bin/kill that exists is used (procps ships both).
  const found = ["/bin/kill", "/usr/bin/kill"].find((k) => {
    try {
      return Deno.statSync(k).isFile;
    } catch {
      return false;
    }
  });
  if (found) {
    const restore = installKernelHandoff(7, sysctl);
    assert.equal(Deno.readTextFileSync(sysctl), `${found} -USR2 7\n`);
    restore();
  } else assert.throws(() => installKernelHandoff(7, sysctl), /no kill program/);
  Deno.removeSync(sysctl);
  await xs.close();
});

Deno.test("xenstore: a path of exactly XENSTORE_ABS_PATH_MAX characters is allowed, one more is not", async () => {
  const server = new XenStoreServer();
  const xs = new XenStore(server.connect(0).transport);
  const path = "/" + "a".repeat(PATH_MAX - 1);
  await xs.write(path, "v");
  assert.equal(await xs.read(path), "v");
  await assert.rejects(() => xs.read(path + "a"), /invalid xenstore path/);
  await xs.close();
});
