import assert from "assert";
import { PcapWriter } from "../../apps/pcap.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

async function run(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", `${ROOT}cli/${script}`, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("cli: bad input gets one clear line and the usage, never a stack trace", async () => {
  const cases: [string, string[], RegExp][] = [
    ["send.ts", [], /expected exactly one NIC/],
    ["send.ts", ["00:04.0", "--count", "ten"], /--count must be a whole number/],
    ["send.ts", ["00:04.0", "--sizes", "10-20"], /--sizes must be within 60-65531/],
    ["send.ts", ["00:04.0", "--mtu", "9000"], /--mtu applies to vif\/N/],
    ["recv.ts", ["vif/0", "--mtu", "huge"], /--mtu must be 68..65517/],
    ["send.ts", ["00:04.0", "--ring", "ring"], /--ring must be split or packed/],
    ["recv.ts", ["vif/0", "--ring", "packed"], /--ring applies to virtio-net on PCI, not 'vif\/0'/],
    ["tap.ts", ["vhost-user:/tmp/x", "--ring", "packed"], /--ring applies to virtio-net on PCI/],
    ["send.ts", ["00:04.0", "--dst", "nope"], /not a MAC address/],
    ["send.ts", ["00:04.0", "--irq", "nmi"], /--irq must be poll, msix or intx/],
    ["send.ts", ["00:04.0", "--cpu", "first"], /--cpu must be a CPU number 0..1023, got 'first'/],
    ["recv.ts", ["00:04.0", "--cpu", "1024"], /--cpu must be a CPU number 0..1023/],
    ["ping.ts", ["00:04.0", "10.0.0.1", "--ip", "10.0.0.2/24", "--cpu=-1"], /--cpu must be a CPU number/],
    ["tap.ts", ["00:04.0", "--cpu", "x"], /--cpu must be a CPU number/],
    ["recv.ts", ["00:04.0", "--bogus"], /error: unknown option '--bogus'\n/],
    ["recv.ts", ["00:04.0", "--count"], /error: option '--count' needs a value\n/],
    ["send.ts", ["00:1f"], /'00:1f' is not a NIC: expected a PCI address/],
    ["recv.ts", ["vif/x"], /'vif\/x' is not a Xen vif/],
    ["send.ts", ["00:04.0", "--size", "100", "--sizes", "60-70"], /--size and --sizes exclude each other/],
    ["probe.ts", ["--sysfs", "/nonexistent"], /--sysfs \/nonexistent: no bus\/pci\/devices/],
    ["test.ts", ["--unit-only", "--vm-only"], /--unit-only and --vm-only exclude each other/],
    ["bind.ts", ["not-an-address", "vfio"], /not a PCI address/],
    ["bind.ts", ["00:04.0", "dpdk"], /unknown target 'dpdk'/],
    ["probe.ts", ["extra"], /unexpected argument/],
    ["vm.ts", ["--timeout", "1"], /--timeout must be between/],
    ["ping.ts", ["00:04.0"], /expected a NIC and an address to ping/],
    [
      "ping.ts",
      ["00:04.0", "10.0.0.300", "--ip", "10.0.0.2/24"],
      /the address to ping must be an IPv4 address/,
    ],
    ["ping.ts", ["00:04.0", "10.0.0.1"], /give this host an address: --ip CIDR or --dhcp/],
    ["ping.ts", ["00:04.0", "10.0.0.1", "--ip", "10.0.0.2"], /--ip must be an address with a prefix/],
    ["ping.ts", ["00:04.0", "10.0.0.1", "--ip", "10.0.0.0/24"], /network or broadcast address/],
    ["ping.ts", ["00:04.0", "10.0.0.1", "--ip", "10.0.0.2/31"], /--ip prefix must be \/1 to \/30/],
    [
      "ping.ts",
      ["00:04.0", "10.0.0.1", "--ip", "10.0.0.2/24", "--dhcp"],
      /--ip and --dhcp exclude each other/,
    ],
    ["ping.ts", ["00:04.0", "10.0.0.1", "--dhcp", "--gw", "gateway"], /--gw must be an IPv4 address/],
    ["ping.ts", ["00:04.0", "10.0.0.1", "--dhcp", "--count", "0"], /--count must be between 1/],
    ["udp.ts", ["00:04.0", "shout", "--dhcp"], /mode must be echo, send or recv/],
    ["udp.ts", ["00:04.0", "send", "--dhcp"], /send needs a destination IP:PORT/],
    ["udp.ts", ["00:04.0", "send", "10.0.0.1", "--dhcp"], /the destination must be IP:PORT/],
    ["udp.ts", ["00:04.0", "echo", "10.0.0.1:7", "--dhcp"], /unexpected argument '10\.0\.0\.1:7'/],
    ["udp.ts", ["00:04.0", "recv", "--sizes", "9-3", "--dhcp"], /--sizes must be MIN-MAX/],
    ["tap.ts", ["00:04.0", "--name", "far-too-long-a-name"], /not an interface name/],
    ["tap.ts", ["00:04.0", "--ip", "10.0.0.2"], /--ip must be an address with a prefix/],
    [
      "serve.ts",
      ["00:04.0", "--ip", "10.0.0.2/24", "--dir", "/nonexistent"],
      /--dir \/nonexistent is not a directory/,
    ],
    ["serve.ts", ["00:04.0"], /give this host an address/],
    ["send.ts", ["00:04.0", "--udp", "10.0.0.1"], /--udp must be IP:PORT/],
    [
      "send.ts",
      ["00:04.0", "--udp", "10.0.0.1:7", "--dst", "ff:ff:ff:ff:ff:ff", "--dhcp"],
      /--dst does not apply with --udp/,
    ],
    ["send.ts", ["00:04.0", "--ip", "10.0.0.2/24"], /--echo, --ip, --dhcp and --gw go with --udp/],
    ["recv.ts", ["00:04.0", "--udp", "70000", "--dhcp"], /--udp must be between 1 and 65535/],
    ["recv.ts", ["00:04.0", "--udp", "9000"], /give this host an address/],
    ["blk.ts", ["vbd/51712", "bench", "--irq", "msix"], /--irq for a Xen vbd must be poll or evtchn/],
    ["blk.ts", ["00:0b.0", "bench", "--irq", "evtchn"], /--irq must be poll, msix or intx/],
    ["switch.ts", [], /give at least one --port/],
    ["switch.ts", ["--port", "nic:eth0"], /unknown kind 'nic'/],
    ["switch.ts", ["--port", "udp:127.0.0.1:9"], /needs local=PORT/],
    ["switch.ts", ["--port", "vhost-user:/tmp/pvdrv-x.sock,queues=99"], /queues must be 1\.\.64/],
    ["switch.ts", ["--port", "tap:pv0,mtu=9000"], /unknown option 'mtu=9000'/],
    ["switch.ts", ["--port", "vhost-user"], /needs KIND:TARGET/],
    ["bench.ts", ["--vhost", "--blk"], /give at most one/],
    ["bench.ts", ["--vm", "--dom0-preempt"], /--dom0-preempt goes with --xen/],
  ];
  for (const [script, args, re] of cases) {
    const r = await run(script, args);
    assert.equal(r.code, 2, `${script} ${args.join(" ")}: exit ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, re);
    assert.match(r.stderr, /usage:/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
    assert.doesNotMatch(r.stderr, /-- "/, "no parser advice about '--'");
  }
});

Deno.test("cli: recv opens --pcap before the device (a bad path fails without touching a NIC)", async () => {
  // 0000:00:1f.7 does not exist: if the device were opened first the error would name it instead.
  const r = await run("recv.ts", ["0000:00:1f.7", "--pcap", "/nonexistent-dir/x.pcap"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^error: cannot write --pcap \/nonexistent-dir\/x\.pcap/);
});

Deno.test("cli: deno task test:vm names a mode test.ts accepts", () => {
  const cfg = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`));
  const m = cfg.tasks["test:vm"].match(/cli\/(\w+)\.ts (.*)$/);
  assert.ok(m, cfg.tasks["test:vm"]);
  const src = Deno.readTextFileSync(`${ROOT}cli/${m[1]}.ts`);
  for (const flag of m[2].split(/\s+/)) assert.match(src, new RegExp(`"${flag.slice(2)}": \\{ type`), flag);
});

Deno.test("cli: runtime failures are one line, exit 1 (opening a device that is not bound)", async () => {
  const r = await run("send.ts", ["0000:00:1f.7"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^error: no PCI device 0000:00:1f\.7/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});

Deno.test("pcap: the file has the libpcap header and one record per frame", () => {
  const path = Deno.makeTempFileSync({ suffix: ".pcap" });
  try {
    const w = new PcapWriter(path);
    const f = new Uint8Array(100).map((_, i) => i);
    for (let i = 0; i < 5000; i++) w.write(f, 60 + (i % 41)); // crosses the 256 KiB buffer
    w.close();
    const b = Deno.readFileSync(path);
    const dv = new DataView(b.buffer);
    assert.equal(dv.getUint32(0, true), 0xa1b2c3d4);
    assert.equal(dv.getUint32(20, true), 1, "LINKTYPE_ETHERNET");
    let off = 24, n = 0;
    while (off < b.length) {
      const cap = dv.getUint32(off + 8, true), len = dv.getUint32(off + 12, true);
      assert.equal(cap, 60 + (n % 41));
      assert.equal(len, cap);
      assert.equal(b[off + 16 + 59], 59);
      off += 16 + cap;
      n++;
    }
    assert.equal(off, b.length);
    assert.equal(n, 5000);
  } finally {
    Deno.removeSync(path);
  }
});
