/**
 * Teardown after SIGKILL: a `deno task send` or `recv` killed in the middle of a flood leaves its device running
 * with rings in memory that is gone. The next open must stop the device before anything else and then work: 10,000
 * frames each way verified, and (VFIO) the guest kernel logs no DMAR fault or warning.
 */
import assert from "assert";
import { VirtioNet } from "../../../drivers/virtio/net.ts";
import { UioPciFunction, VfioPciFunction } from "../../../ffi/pci.ts";
import { ensureBound, guestTest, LAB } from "./env.ts";
import { exchangeWithKernel, kernelInterface, Peer } from "../../../lab/guest/kernel_peer.ts";
import type { PciFunction } from "../../../hal/pci.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;
const N = 10_000, WINDOW = 64;

function task(script: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", `${ROOT}cli/${script}`, ...args],
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

function counter(iface: string, name: string): number {
  return Number(Deno.readTextFileSync(`/sys/class/net/${iface}/statistics/${name}`).trim());
}

async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function dmesg(): Promise<string[]> {
  const out = await new Deno.Command("dmesg", { stdout: "piped", stderr: "null" }).output();
  return new TextDecoder().decode(out.stdout).split("\n");
}

/** Read a child's stderr until `text` appears (the rest is drained in the background). */
async function waitFor(child: Deno.ChildProcess, text: string): Promise<void> {
  const reader = child.stderr.getReader(), dec = new TextDecoder();
  let seen = "";
  while (!seen.includes(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`child ended before printing '${text}': ${seen}`);
    seen += dec.decode(value, { stream: true });
  }
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
}

async function killMidFlood(pci: string, k: { name: string; mac: string }, nicMac: string): Promise<void> {
  // send: a flood to the kernel NIC, killed once the kernel has counted 2,000 of its frames.
  const rx0 = counter(k.name, "rx_packets");
  const send = task("send.ts", [pci, "--count", "100000000", "--dst", k.mac]);
  await until(() => counter(k.name, "rx_packets") - rx0 > 2000, "the kernel to see the flood");
  send.kill("SIGKILL");
  assert.equal((await send.status).signal, "SIGKILL");
  // recv: the kernel floods pvdrv's NIC; the receiver is killed while frames keep arriving.
  const recv = task("recv.ts", [pci, "--timeout", "60"]);
  await waitFor(recv, "listening on");
  const flood = new Peer(["txrate", k.name, "4", "60", nicMac]);
  const tx0 = counter(k.name, "tx_packets");
  await until(() => counter(k.name, "tx_packets") - tx0 > 2000, "the kernel's flood");
  recv.kill("SIGKILL");
  assert.equal((await recv.status).signal, "SIGKILL");
  await flood.result(); // frames keep arriving at a device whose driver is gone
}

/** Open `pci` again after the kills and move N frames each way, every one verified by the side receiving it. */
async function reopenAndExchange(pci: PciFunction, k: { name: string; mac: string }): Promise<void> {
  const nic = VirtioNet.openPci(pci, { ownsPci: true });
  try {
    const x = await exchangeWithKernel(nic, k, N, WINDOW);
    assert.equal(x.kernelReceived.received, N);
    assert.equal(x.kernelReceived.corrupt, 0);
    assert.equal(x.rx.received, N);
    assert.equal(x.rx.corrupt, 0);
  } finally {
    nic.close();
  }
}

guestTest(
  "teardown after SIGKILL (VFIO): send and recv killed mid-flood, the next open resets and moves 10k frames each way, no DMAR fault",
  async () => {
    const pci = LAB.vfioKernelPeer.pci;
    ensureBound(pci, "vfio-pci");
    const k = await kernelInterface(LAB.kernelPeer.pci);
    const before = (await dmesg()).length;
    await killMidFlood(pci, k, LAB.vfioKernelPeer.mac);
    await reopenAndExchange(VfioPciFunction.open(pci), k);
    // DMA faults, warnings and bugs — not the words of a call trace (do_user_addr_fault, exc_page_fault), which
    // the kernel prints under any report, such as a shared IRQ line it disabled.
    const fresh = (await dmesg()).slice(before).filter((l) =>
      /DMAR|DMA fault|WARNING:|BUG:|vfio.*error/i.test(l)
    );
    assert.deepEqual(fresh, [], "the guest kernel logged no DMA fault or warning");
  },
);

guestTest(
  "teardown after SIGKILL (UIO): the next open resets the device before bus mastering, then 10k frames each way",
  async () => {
    const pci = LAB.uioKernelPeer.pci;
    ensureBound(pci, "uio_pci_generic");
    const k = await kernelInterface(LAB.uioPeer.pci);
    await killMidFlood(pci, k, LAB.uioKernelPeer.mac);
    await reopenAndExchange(UioPciFunction.open(pci), k);
  },
);
