/**
 * One host-side end of `bench --vhost`, run as its own process (so its CPU time is its own, read from /proc like
 * testpmd's): pvdrv's vhost-user backend counting what the guest sends, or sending to the guest as fast as the
 * guest takes it; or the same over a UDP link to QEMU's built-in `dgram` backend. Prints "ready", then on
 * SIGTERM one JSON line with the frames it moved.
 *
 *   deno run -A lab/outer/vhost_load.ts sink|source vhost-user:PATH SIZE DSTMAC
 *   deno run -A lab/outer/vhost_load.ts sink|source udp:HOST:PORT,local=PORT SIZE DSTMAC
 * @module
 */
import { openVhostUser } from "../../system/vhost_port.ts";
import { UdpLink } from "../../ffi/udp_link.ts";
import type { PacketBuffer } from "../../drivers/net/nic.ts";
import { parseMac } from "../../drivers/net/nic.ts";
import { tick } from "../../hal/event_loop.ts";

const [mode, target, sizeArg, dstArg] = Deno.args;
const size = Number(sizeArg), dst = parseMac(dstArg ?? "ff:ff:ff:ff:ff:ff");
let stop = false;
Deno.addSignalListener("SIGTERM", () => stop = true);

function frame(): Uint8Array {
  const f = new Uint8Array(size);
  f.set(dst, 0);
  f.set([0x02, 0x70, 0x76, 0x62, 0x65, 0x01], 6);
  f[12] = 0x88, f[13] = 0xb5; // pvdrv's test ethertype: no guest stack takes it up
  return f;
}

let moved = 0;
if (target.startsWith("udp:")) {
  const m = target.match(/^udp:([^,]+),local=(\d+)$/);
  if (!m) throw new RangeError(`'${target}' is not udp:HOST:PORT,local=PORT`);
  const link = UdpLink.open(m[1], Number(m[2]));
  const buf = new Uint8Array(2048), f = frame();
  console.log("ready");
  for (let i = 0; !stop; i++) {
    if (mode === "sink") {
      const n = link.read(buf, buf.length);
      if (n >= 0) moved++;
      else if ((i & 63) === 0) await new Promise((r) => setTimeout(r, 1));
    } else {
      if (link.write(f, f.length)) moved++;
      if ((i & 1023) === 0) await tick();
    }
  }
  link.close();
} else {
  const nic = openVhostUser(target, { irq: true });
  const bufs: PacketBuffer[] = new Array(32), f = frame();
  console.log("ready");
  let idle = 0;
  while (!stop) {
    if (mode === "sink") {
      const n = nic.receiveBatch(bufs, 32);
      if (n) {
        moved += n;
        nic.release(bufs, n);
        idle = 0;
        continue;
      }
      // Idle: sleep on the guest's kick (a poll(2) in this thread), then let signals and messages in.
      if (++idle > 16) nic.sleepRx(20);
      await tick();
    } else {
      if (!nic.linkUp()) {
        nic.pumpControl();
        await new Promise((r) => setTimeout(r, 5));
        continue;
      }
      const k = nic.allocTx(bufs, 32);
      for (let i = 0; i < k; i++) bufs[i].data.set(f), bufs[i].length = f.length;
      const sent = nic.sendBatch(bufs, k);
      moved += sent;
      if (sent < k) {
        for (let i = sent; i < k; i++) bufs[i - sent] = bufs[i];
        nic.release(bufs, k - sent);
        await tick(); // the guest's ring is full: let it drain
      } else if ((moved & 4095) < 32) await tick();
    }
  }
  await nic.close();
}
console.log(JSON.stringify({ moved }));
Deno.exit(0);
