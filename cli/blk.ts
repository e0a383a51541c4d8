/**
 * `deno task blk <disk> info|read|write|verify|bench`: a pvdrv disk from the command line.
 * @module
 */
import { openDisk } from "../system/table.ts";
import type { Disk } from "../drivers/block/disk.ts";
import { type BlockBuffer, BlockOp, BlockRequest, Completions } from "../drivers/block/disk.ts";
import { VirtioBlk } from "../drivers/virtio/blk.ts";
import { checkDisk, verifyDisk, verifyPlan } from "../apps/disk_verify.ts";
import { intArg, parse, runMain, UsageError } from "./lib/common.ts";
import { diskIrqArg } from "./lib/nic_args.ts";

const USAGE = `usage: deno task blk <disk> <command> [options]
  <disk>              PCI address of a virtio-blk device bound to vfio-pci or uio_pci_generic, or vbd/N: a Xen
                      virtual disk of this domain (pvdrv's blkfront; device/vbd/N in xenstore)
  info                what the disk says of itself, and its serial
  read                --offset N --length N: read bytes; prints their SHA-256 (or writes them to --out FILE)
  write               --offset N and --in FILE (or --length N --seed S for a pattern); --fua: durable first
  verify              --mib N [--seed S] [--reopen]: write the first N MiB, then a pattern at random offsets with
                      sizes from one block to 1 MiB over them, read back and check every byte; --reopen closes the
                      disk, opens it again and checks again
  bench               --seconds N --bs BYTES --qd N [--write] [--seq] [--windows N]: random (or sequential)
                      reads (or writes) at a fixed queue depth; IOPS per window, p50/p99 latency
  --irq MODE          completion: poll (default), or sleep on the interrupt: msix or intx for a virtio disk,
                      evtchn for a Xen vbd
  --queues N          request queues (default 1)
  --json              one JSON line instead of text`;

const hex = (b: ArrayBuffer) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");

function describe(disk: Disk): Record<string, unknown> {
  const i = disk.info;
  return {
    name: disk.name,
    capacity: i.capacity,
    logicalBlockSize: i.logicalBlockSize,
    physicalBlockSize: i.physicalBlockSize,
    readOnly: i.readOnly,
    writeCache: i.writeCache,
    discard: i.discard,
    writeZeroes: i.writeZeroes,
    queues: disk.queues,
    maxTransferBytes: i.maxTransferBytes,
    queueDepth: i.queueDepth,
    features: disk instanceof VirtioBlk ? disk.featureNames() : [],
  };
}

/**
 * Reads or writes of `bs` bytes (random offsets, or sequential with `seq`) at queue depth `qd` for `seconds`,
 * zero-copy, with IOPS per window and latency percentiles. With interrupts, an idle poll sleeps on the
 * completion interrupt instead of spinning.
 */
function bench(
  disk: Disk,
  o: { seconds: number; bs: number; qd: number; write: boolean; seq: boolean; windows: number; irq: boolean },
) {
  const i = disk.info, bs = o.bs;
  if (bs % i.logicalBlockSize || bs > i.maxTransferBytes) {
    throw new UsageError(`--bs must be a multiple of ${i.logicalBlockSize} up to ${i.maxTransferBytes}`);
  }
  const qd = Math.min(o.qd, i.queueDepth);
  const per = Math.ceil(bs / i.maxSegmentBytes), blocks = Math.floor(i.capacity / bs);
  const reqs: BlockRequest[] = [], bufs: BlockBuffer[][] = [];
  for (let k = 0; k < qd; k++) {
    const b: BlockBuffer[] = [];
    if (disk.allocBuffers(b, per) < per) throw new UsageError(`not enough DMA buffers for --qd ${qd}`);
    for (let s = 0; s < per; s++) b[s].length = Math.min(i.maxSegmentBytes, bs - s * i.maxSegmentBytes);
    bufs.push(b);
    reqs.push(new BlockRequest());
  }
  // Latency histogram in microseconds (the last bucket holds everything past it): nothing allocated per I/O.
  const MAX_US = 200_000, hist = new Uint32Array(MAX_US + 1);
  const started = new Float64Array(qd);
  const done = new Completions(qd), one = [new BlockRequest()];
  let x = 12345, ios = 0, next = 0, idle = 0;
  // The clock is read once per completed batch (the posts that follow start then), and while spinning idle only
  // every 256th poll: in a Xen PV guest without a vDSO clock each read is a system call.
  const post = (k: number, at: number) => {
    let blk: number;
    if (o.seq) blk = next++ % blocks;
    else {
      x ^= x << 13, x ^= x >>> 17, x ^= x << 5, x >>>= 0;
      blk = x % blocks;
    }
    reqs[k].io(o.write ? BlockOp.Write : BlockOp.Read, blk * bs, bufs[k], per, k);
    one[0] = reqs[k];
    started[k] = at;
    return disk.submit(one, 1);
  };
  const t0 = performance.now(), windows: number[] = [];
  for (let k = 0; k < qd; k++) post(k, t0);
  let now = t0, wStart = t0, wIos = 0;
  const wLen = (o.seconds * 1000) / o.windows;
  while (windows.length < o.windows) {
    const n = disk.poll(done, qd);
    if (n === 0) {
      if (o.irq) disk.sleepCompletion(10);
      else if (++idle & 255) continue;
    }
    now = performance.now();
    for (let c = 0; c < n; c++) {
      const k = done.tags[c];
      const us = Math.round((now - started[k]) * 1000);
      hist[us > MAX_US ? MAX_US : us]++;
      ios++;
      wIos++;
      post(k, now);
    }
    if (now - wStart >= wLen) {
      windows.push(Math.round((wIos * 1000) / (now - wStart)));
      wStart = now;
      wIos = 0;
    }
  }
  while (disk.inFlight() > 0) if (disk.poll(done, qd) === 0 && o.irq) disk.sleepCompletion(10);
  const pct = (p: number) => {
    let seen = 0;
    for (let us = 0; us <= MAX_US; us++) if ((seen += hist[us]) > ios * p) return us;
    return MAX_US;
  };
  const sorted = [...windows].sort((a, b) => a - b), iops = sorted[Math.floor(sorted.length / 2)];
  return { iops, windows, mbps: +((iops * bs) / 1e6).toFixed(1), p50us: pct(0.5), p99us: pct(0.99), ios };
}

await runMain(USAGE, async () => {
  const { values, positionals } = parse(Deno.args, {
    offset: { type: "string" },
    length: { type: "string" },
    out: { type: "string" },
    in: { type: "string" },
    seed: { type: "string" },
    fua: { type: "boolean" },
    mib: { type: "string" },
    reopen: { type: "boolean" },
    seconds: { type: "string" },
    bs: { type: "string" },
    qd: { type: "string" },
    write: { type: "boolean" },
    seq: { type: "boolean" },
    windows: { type: "string" },
    irq: { type: "string" },
    queues: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return void console.log(USAGE);
  const [name, cmd, ...extra] = positionals;
  if (!name) throw new UsageError("missing <disk>");
  if (!cmd) throw new UsageError("missing command (info, read, write, verify or bench)");
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  if (!["info", "read", "write", "verify", "bench"].includes(cmd)) {
    throw new UsageError(`unknown command '${cmd}'`);
  }
  const irq = diskIrqArg(values.irq, name);
  const opts = { irq: irq.mode, queues: intArg("queues", values.queues, 1, 1, 64) };
  const out = (o: Record<string, unknown>, text: string) =>
    console.log(values.json ? JSON.stringify(o) : text);
  let disk = await openDisk(name, opts);
  try {
    const cap = disk.info.capacity;
    if (cmd === "info") {
      const d = { ...describe(disk), serial: await disk.serial() };
      return out(
        d,
        Object.entries(d).map(([k, v]) => `${k.padEnd(18)} ${Array.isArray(v) ? v.join(" ") : v}`).join("\n"),
      );
    }
    if (cmd === "read" || cmd === "write") {
      const offset = intArg("offset", values.offset, 0, 0, cap);
      let data: Uint8Array;
      if (cmd === "read") {
        const length = intArg("length", values.length, disk.info.logicalBlockSize, 1, cap);
        data = await disk.read(offset, length);
        if (values.out) Deno.writeFileSync(values.out, data);
      } else {
        if (values.in) data = Deno.readFileSync(values.in);
        else {
          const length = intArg("length", values.length, disk.info.logicalBlockSize, 1, cap);
          const seed = intArg("seed", values.seed, 1, 0, 0xffffffff);
          data = new Uint8Array(length);
          for (let k = 0; k < length; k++) data[k] = (k * 131 + seed * 7 + (k >>> 9)) & 0xff;
        }
        await disk.write(offset, data, { fua: values.fua ?? false });
        if (!values.fua) await disk.flush();
      }
      const sha256 = hex(await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>));
      return out(
        { [cmd === "read" ? "read" : "written"]: data.length, offset, sha256 },
        `${data.length} bytes at ${offset}: sha256 ${sha256}`,
      );
    }
    if (cmd === "verify") {
      const mib = intArg("mib", values.mib, 16, 1, Math.floor(cap / (1 << 20)));
      const seed = intArg("seed", values.seed, 1, 0, 0xffffffff);
      const plan = verifyPlan(mib << 20, disk.info.logicalBlockSize, seed);
      const r = await verifyDisk(disk, plan);
      let reopened = -2; // not asked
      if (values.reopen && r.mismatchAt < 0) {
        await disk.close();
        disk = await openDisk(name, opts);
        reopened = await checkDisk(disk, plan.expected);
      }
      const ok = r.mismatchAt < 0 && reopened < 0;
      out(
        { ...r, mib, seed, reopened: values.reopen ? reopened < 0 : undefined, ok },
        `verify: ${r.writes} writes, ${(r.bytes / (1 << 20)).toFixed(1)} MiB written, ${mib} MiB checked in ${
          r.seconds.toFixed(1)
        } s: ` +
          (r.mismatchAt >= 0
            ? `MISMATCH at byte ${r.mismatchAt}`
            : reopened >= 0
            ? `MISMATCH after reopen at byte ${reopened}`
            : `every byte right${values.reopen ? ", also after reopening" : ""}`),
      );
      return ok ? 0 : 1;
    }
    const seconds = intArg("seconds", values.seconds, 5, 1, 3600);
    const bs = intArg("bs", values.bs, 4096, 512, 1 << 24);
    const qd = intArg("qd", values.qd, 1, 1, 1024);
    const windows = intArg("windows", values.windows, 3, 1, 100);
    const write = values.write ?? false, seq = values.seq ?? false;
    const r = bench(disk, { seconds, bs, qd, write, seq, windows, irq: irq.sleep });
    const mode = `${seq ? "" : "rand"}${write ? "write" : "read"}`;
    return out(
      { mode, bs, qd, irq: irq.name, ...r },
      `${mode} bs ${bs} qd ${qd} (${irq.name}): ${r.iops} IOPS (median of ${windows} windows, ${
        Math.min(...r.windows)
      }–${Math.max(...r.windows)}), ${r.mbps} MB/s, p50 ${r.p50us} µs, p99 ${r.p99us} µs`,
    );
  } finally {
    await disk.close();
  }
});
