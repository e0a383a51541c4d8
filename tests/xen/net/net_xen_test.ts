// pvdrv's network host on Xen netfront (vif/0) against dom0's own stack on the backend interface vif1.0 (10.0.1.1):
// ping both ways, UDP echo of mixed sizes with every byte checked (pvpeer's UDP echo in dom0), and HTTP both ways
// through the TAP bridge (busybox wget and httpd in dom0). Runs in the domU after tests/xen/guest; dom0 takes its
// part when the domU names a step in data/pvdrv-bench (lab/outer/xen.ts) and answers in data/pvdrv-net-result.
import assert from "assert";
import { XenStore } from "../../../drivers/xen/xenstore.ts";
import { XenbusDevice } from "../../../ffi/xenbus.ts";
import { Running, task, taskJson } from "../../../lab/guest/tasks.ts";

const PV = "10.0.1.2", DOM0 = "10.0.1.1";
const dec = new TextDecoder();
const IN_XEN = Deno.env.get("PVDRV_XEN_GUEST") === "1";

function xenTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name: IN_XEN ? name : `${name} [runs in the Xen lab]`, ignore: !IN_XEN, fn });
}

/** Ask dom0 for step `name`; returns what it wrote to data/pvdrv-net-result (if anything). */
async function step(name: string): Promise<string> {
  const xs = new XenStore(new XenbusDevice());
  try {
    await xs.write("data/pvdrv-net-result", "");
    await xs.write("data/pvdrv-bench", name);
    await xs.waitFor("data/pvdrv-bench-ack", (v) => v === name, 120_000);
    return await xs.read("data/pvdrv-net-result").catch(() => "");
  } finally {
    await xs.close();
  }
}

async function readKey(key: string): Promise<string> {
  const xs = new XenStore(new XenbusDevice());
  try {
    return await xs.read(key);
  } finally {
    await xs.close();
  }
}

let up = false;
async function netUp(): Promise<void> {
  if (!up) await step("net-up");
  up = true;
}

xenTest("xen net: pvdrv pings dom0 and dom0 pings pvdrv, 200 each way, no loss", async () => {
  await netUp();
  const p = await taskJson("cli/ping.ts", [
    "vif/0",
    DOM0,
    "--ip",
    `${PV}/24`,
    "--count",
    "200",
    "--interval",
    "0",
    "--json",
  ]);
  assert.equal(p.received, 200, JSON.stringify(p));
  const echo = new Running(task("cli/udp.ts", ["vif/0", "echo", "--ip", `${PV}/24`, "--json"]));
  await echo.waitFor(/echoing on/);
  const r = await step("net-ping");
  assert.equal(await echo.stop(), 0, echo.text);
  // A loss shows pvdrv's counters (requests heard, replies sent or dropped) beside busybox ping's summary.
  assert.match(r, /200 packets transmitted, 200 packets received, 0% packet loss/, `${r}\n${echo.text}`);
  assert.match(echo.text, /"icmpEchoRequests":200\b/, echo.text);
});

xenTest("xen net: UDP echo of 2,000 datagrams of 4-1472 bytes through dom0, every byte checked", async () => {
  await netUp();
  const s = await taskJson("cli/udp.ts", [
    "vif/0",
    "send",
    `${DOM0}:7`,
    "--echo",
    "--count",
    "2000",
    "--sizes",
    "4-1472",
    "--ip",
    `${PV}/24`,
    "--json",
  ]);
  assert.deepEqual([s.sent, s.echoed, s.corrupt, s.lost], [2000, 2000, 0, 0], JSON.stringify(s));
});

xenTest(
  "xen net: dom0's wget fetches 1 MiB from `deno task serve`, and the domU fetches from dom0's httpd, by hash",
  async () => {
    await netUp();
    const www = await Deno.makeTempDir();
    const file = crypto.getRandomValues(new Uint8Array(65536));
    const blob = new Uint8Array(1 << 20);
    for (let i = 0; i < 16; i++) blob.set(file, i * 65536), blob[i * 65536] = i;
    Deno.writeFileSync(`${www}/blob`, blob);
    const hex = (b: ArrayBuffer) =>
      [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
    const want = hex(await crypto.subtle.digest("SHA-256", blob));
    const serve = new Running(
      task("cli/serve.ts", ["vif/0", "--ip", `${PV}/24`, "--dir", www, "--port", "8080"]),
    );
    await serve.waitFor(/serve: http:\/\/10\.0\.1\.2:8080\//);
    const got = await step("net-wget");
    assert.equal(await serve.stop(), 0, serve.text);
    assert.equal(got.trim().split(/\s+/).pop(), want, `dom0's copy: ${got}`);
    // The other way: the domU kernel behind `deno task tap` fetches dom0's file with busybox wget.
    const tap = new Running(task("cli/tap.ts", ["vif/0", "--ip", `${PV}/24`, "--name", "pvtest0", "--json"]));
    await tap.waitFor(/tap: pvtest0 .* bridged to/);
    const w = await new Deno.Command("wget", { args: ["-q", "-O", "/tmp/got", `http://${DOM0}/blob`] })
      .output();
    assert.equal(w.code, 0, dec.decode(w.stderr));
    const mine = hex(await crypto.subtle.digest("SHA-256", Deno.readFileSync("/tmp/got")));
    assert.equal(await tap.stop(), 0, tap.text);
    assert.equal(mine, (await readKey("data/pvdrv-net-blob")).trim(), "the domU's copy matches dom0's file");
    await Deno.remove(www, { recursive: true });
  },
);
