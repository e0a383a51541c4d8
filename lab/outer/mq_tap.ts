/**
 * The multi-queue TAP wire of 0000:00:0a.0: a network namespace made for the run, a 4-queue TAP device in it
 * answered by lab/c/mqpeer.c, and QEMU started through lab/c/tapfds.c so it gets the TAP's queue fds.
 * @module
 */
import { NetNs } from "../netns.ts";
import { LAB, MQ_QUEUES, type MqPeerCounts } from "../topology.ts";
import { buildLabTool } from "./build_c.ts";
import { LabError } from "./lab_error.ts";

/** The TAP device's name inside the run's namespace. */
const MQ_TAP = "pvmq0";

/** Make the run's network namespace, its multi-queue TAP peer and QEMU's launcher (lab/c/tapfds.c). */
export async function startMqTap(): Promise<
  { launcher: string[]; args: string[]; finish(): Promise<MqPeerCounts> }
> {
  const ns = await NetNs.create();
  try {
    const tapfds = buildLabTool("tapfds");
    const peer = ns.command(buildLabTool("mqpeer"), [MQ_TAP], {
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
    const out = new Response(peer.stdout).text();
    const err = new Response(peer.stderr).text();
    return {
      launcher: [tapfds, String(ns.pid), MQ_TAP, String(MQ_QUEUES)],
      args: [
        "-netdev",
        "tap,id=mq,fds=@FDS@,vhost=off",
        "-device",
        `virtio-net-pci,netdev=mq,addr=a.0,mac=${LAB.multiQueueTap.mac},mq=on,vectors=${2 * MQ_QUEUES + 2},` +
        "disable-legacy=on,iommu_platform=on,romfile=",
      ],
      async finish() {
        try {
          await peer.stdin.close();
          const [{ code }, text, e] = await Promise.all([peer.status, out, err]);
          const last = text.trim().split("\n").at(-1) ?? "";
          if (code !== 0 || !last.startsWith("{")) throw new LabError(`mqpeer failed (${code}): ${e.trim()}`);
          return JSON.parse(last) as MqPeerCounts;
        } finally {
          await ns.close();
        }
      },
    };
  } catch (e) {
    await ns.close();
    throw e;
  }
}
