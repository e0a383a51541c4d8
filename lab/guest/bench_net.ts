/**
 * The network benchmark, run inside the lab guest by `deno task bench --net`: the same NIC (0000:00:04.0) first
 * under the guest kernel's virtio_net, then under pvdrv (VFIO), against the same peer — the kernel's stack on
 * 0000:00:05.0 in a network namespace of its own — for ping RTT, UDP echo rate and HTTP requests per second.
 * Prints one "PVDRV-NETBENCH {json}" line per driver.
 * @module
 */
import { LAB } from "../topology.ts";
import { NetNs } from "../netns.ts";
import { readDevice } from "../../ffi/sysfs.ts";
import { kernelAddress, kernelPing, steerInterrupts } from "./kernel_peer.ts";
import { onlineCpus } from "../../ffi/cpu.ts";
import { bindDevice } from "../../system/bind.ts";
import { summarizePings } from "../../apps/ping.ts";
import { commandJson, Running, task } from "./tasks.ts";

const PCI = LAB.vfioKernelPeer.pci, PEER = LAB.kernelPeer.pci;
const PV = "10.0.0.2", K = "10.0.0.1";
const PINGS = Number(Deno.env.get("PVDRV_NETBENCH_PINGS") ?? 500);
const DATAGRAMS = Number(Deno.env.get("PVDRV_NETBENCH_DATAGRAMS") ?? 5000);
const HTTP_SECONDS = Number(Deno.env.get("PVDRV_NETBENCH_HTTP_SECONDS") ?? 5);
const WINDOW = 16, CONCURRENCY = 4, BODY = 1000;
// "One vCPU": the pinging process and every interrupt of both NICs on the last vCPU, so a round trip never
// waits for another vCPU to wake (docs/benchmarks.md, "Where ping's tail comes from"). Both drivers, in turn.
const ONE = onlineCpus().at(-1)!;

type Numbers = Record<string, number>;

/** UDP echo rate: the kernel's echo socket in the namespace, `client` run against it. */
async function udpEcho(ns: NetNs, client: Deno.Command): Promise<Numbers> {
  const echo = new Running(ns.task("lab/guest/udp_peer.ts", ["echo", `${K}:7`, String(DATAGRAMS)]));
  await echo.waitFor(/ready/);
  try {
    const r = await commandJson<Numbers>(client, "the UDP client");
    return { echoed: r.echoed, lost: r.lost, pps: r.echoed / r.seconds };
  } finally {
    await echo.stop();
  }
}

/** HTTP requests per second from the namespace against `server` (started here, stopped after). */
async function httpLoad(ns: NetNs, server: Running, ready: RegExp): Promise<Numbers> {
  await server.waitFor(ready);
  try {
    const args = [`http://${PV}:8080/bytes/${BODY}`, String(HTTP_SECONDS), String(CONCURRENCY), String(BODY)];
    return await commandJson<Numbers>(ns.task("lab/guest/http_load.ts", args), "the HTTP load");
  } finally {
    await server.stop();
  }
}

const ns = await NetNs.create();
try {
  const peerDev = readDevice(PEER).netInterfaces[0];
  await ns.adopt(peerDev, `${K}/24`);

  // 1. The guest kernel's virtio_net on the NIC.
  const k = await kernelAddress(PCI, `${PV}/24`);
  const rtts = await kernelPing(K, PINGS);
  const putBack = steerInterrupts([PCI, PEER], ONE);
  const rttsOne = await kernelPing(K, PINGS, 10, ONE).finally(putBack);
  const kernel = {
    driver: "kernel",
    ping: summarizePings(PINGS, rtts),
    pingOneCpu: summarizePings(PINGS, rttsOne),
    udp: await udpEcho(
      ns,
      task("lab/guest/udp_peer.ts", ["client", PV, `${K}:7`, String(DATAGRAMS), "64", "64", String(WINDOW)]),
    ),
    http: await httpLoad(ns, new Running(task("lab/guest/http_server.ts", [PV, "8080"])), /listening/),
  };
  console.log(`PVDRV-NETBENCH ${JSON.stringify(kernel)}`);
  await k.release();

  // 2. pvdrv on the same NIC over VFIO (interrupts; ping also polling).
  bindDevice(PCI, "vfio-pci");
  const ping = async (irq: string, cpu?: number) => {
    const r = await commandJson<Numbers>(
      task("cli/ping.ts", [
        PCI,
        K,
        "--ip",
        `${PV}/24`,
        "--count",
        String(PINGS),
        "--interval",
        "10",
        "--warmup",
        "3", // as the kernel's run is preceded by three: a fresh process first compiles its reply path
        "--irq",
        irq,
        ...(cpu === undefined ? [] : ["--cpu", String(cpu)]),
        "--json",
      ]),
      "deno task ping",
    );
    return {
      transmitted: r.transmitted,
      received: r.received,
      lossPercent: r.lossPercent,
      min: r.min,
      avg: r.avg,
      max: r.max,
      p50: r.p50,
      p99: r.p99,
      mdev: r.mdev,
    };
  };
  const pv = {
    driver: "pvdrv",
    ping: await ping("msix"),
    pingPoll: await ping("poll"),
    pingOneCpu: await (async () => {
      const putBack = steerInterrupts([PEER], ONE); // --cpu steers pvdrv's own vectors
      return await ping("msix", ONE).finally(putBack);
    })(),
    udp: await udpEcho(
      ns,
      task("cli/udp.ts", [
        PCI,
        "send",
        `${K}:7`,
        "--echo",
        "--count",
        String(DATAGRAMS),
        "--size",
        "64",
        "--window",
        String(WINDOW),
        "--ip",
        `${PV}/24`,
        "--json",
      ]),
    ),
    http: await httpLoad(
      ns,
      new Running(task("cli/serve.ts", [PCI, "--ip", `${PV}/24`, "--port", "8080"])),
      /serve: http/,
    ),
  };
  console.log(`PVDRV-NETBENCH ${JSON.stringify(pv)}`);
} finally {
  await ns.close();
}
