/**
 * The NBD export against the guest kernel's nbd client: pvdrv serves the UIO virtio-blk disk and attaches
 * /dev/nbdN to it with the NBD ioctls; the kernel's ext4 runs on it (mkfs, files, fsck clean, mounted again after
 * pvdrv restarts, every file's SHA-256 unchanged). What a flush acknowledged survives kill -9 of the server: the
 * outer side finds it in the disk's backing file (nbd-expect.json).
 */
import assert from "assert";
import { LAB_DISKS } from "../../../lab/topology.ts";
import { Running, task } from "../../../lab/guest/tasks.ts";
import { patternByte } from "../../../apps/disk_verify.ts";
import { ensureBound, guestTest, OUT } from "./env.ts";

const { uioDisk } = LAB_DISKS;

function sh(cmd: string): string {
  const r = new Deno.Command("sh", { args: ["-c", cmd], stdout: "piped", stderr: "piped" }).outputSync();
  const out = new TextDecoder().decode(r.stdout), err = new TextDecoder().decode(r.stderr);
  assert.ok(r.success, `'${cmd}' failed (${r.code}):\n${out}${err}`);
  return out;
}

async function serve(device: string): Promise<Running> {
  const srv = new Running(task("cli/nbd.ts", [uioDisk.pci, "--attach", device, "--json"]));
  await srv.waitFor(/"attached":"\/dev\/nbd\d"/, 60_000);
  return srv;
}

guestTest(
  "nbd: the kernel's ext4 on pvdrv's export — mkfs, files, fsck clean, intact after pvdrv restarts",
  async () => {
    ensureBound(uioDisk.pci, "uio_pci_generic");
    let srv = await serve("/dev/nbd0");
    try {
      assert.equal(sh("cat /sys/block/nbd0/size").trim(), String((uioDisk.mib << 20) / 512));
      sh("mkfs.ext4 -q -F /dev/nbd0 && mkdir -p /tmp/nbd-mnt");
      sh("mount -t ext4 /dev/nbd0 /tmp/nbd-mnt");
      sh(
        "for i in 1 2 3 4 5; do dd if=/dev/urandom of=/tmp/nbd-mnt/f$i bs=64k count=$((i * 8)) 2>/dev/null; done",
      );
      sh(
        "mkdir /tmp/nbd-mnt/d && cp /tmp/nbd-mnt/f2 /tmp/nbd-mnt/d/copy && cd /tmp/nbd-mnt && sha256sum f1 f2 f3 f4 f5 d/copy > /tmp/nbd-sums",
      );
      sh("umount /tmp/nbd-mnt");
      sh("e2fsck -fn /dev/nbd0");
    } finally {
      assert.equal(await srv.stop("SIGTERM"), 0, srv.text);
    }
    srv = await serve("/dev/nbd0");
    try {
      sh("mount -t ext4 /dev/nbd0 /tmp/nbd-mnt");
      assert.match(sh("cd /tmp/nbd-mnt && sha256sum -c /tmp/nbd-sums"), /f5: OK/);
      sh("umount /tmp/nbd-mnt");
    } finally {
      assert.equal(await srv.stop("SIGTERM"), 0, srv.text);
    }
    assert.match(srv.text, /"requests":\d+/, "the session's counts were printed");
  },
);

guestTest(
  "nbd: data a flush acknowledged survives kill -9 of the server (checked outside the VM)",
  async () => {
    ensureBound(uioDisk.pci, "uio_pci_generic");
    const offset = 60 << 20, length = 1 << 20, seed = 77;
    const pat = new Uint8Array(length);
    for (let i = 0; i < length; i++) pat[i] = patternByte(offset + i, seed);
    Deno.writeFileSync("/tmp/nbd-pattern", pat);
    const srv = await serve("/dev/nbd1");
    try {
      // conv=fsync: the kernel sends NBD_CMD_FLUSH, and dd returns only once the export acknowledged it.
      sh(`dd if=/tmp/nbd-pattern of=/dev/nbd1 bs=1M seek=${offset >> 20} conv=fsync 2>/dev/null`);
    } finally {
      await srv.stop("SIGKILL");
    }
    Deno.writeTextFileSync(
      `${OUT}/nbd-expect.json`,
      JSON.stringify({ file: uioDisk.file, offset, length, seed }),
    );
  },
);

guestTest(
  "nbd: Debian's nbd-client attaches pvdrv's export (netlink); 8 MiB written with O_DIRECT read back exact",
  async () => {
    ensureBound(uioDisk.pci, "uio_pci_generic");
    const sock = "/tmp/nbd-interop.sock";
    const srv = new Running(task("cli/nbd.ts", [uioDisk.pci, "--socket", sock, "--name", "lab", "--json"]));
    try {
      await srv.waitFor(/"serving"/, 60_000);
      sh(`nbd-client -unix ${sock} /dev/nbd2 -b 4096 -name lab`);
      try {
        assert.equal(sh("cat /sys/block/nbd2/size").trim(), String((uioDisk.mib << 20) / 512));
        sh("dd if=/dev/urandom of=/tmp/nbd-interop bs=1M count=8 2>/dev/null");
        sh("dd if=/tmp/nbd-interop of=/dev/nbd2 bs=1M seek=4 oflag=direct conv=fsync 2>/dev/null");
        sh("dd if=/dev/nbd2 of=/tmp/nbd-back bs=1M skip=4 count=8 iflag=direct 2>/dev/null");
        const sum = (f: string) => sh(`sha256sum ${f}`).split(" ")[0];
        assert.equal(sum("/tmp/nbd-back"), sum("/tmp/nbd-interop"), "what nbd-client's device read back");
      } finally {
        sh("nbd-client -d /dev/nbd2");
      }
    } finally {
      assert.equal(await srv.stop("SIGTERM"), 0, srv.text);
    }
    assert.match(srv.text, /"requests":[1-9]\d*/, "the session went through pvdrv");
  },
);
