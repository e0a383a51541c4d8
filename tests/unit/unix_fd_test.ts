/** Unix sockets that carry descriptors and shared memory passed as an fd (ffi/unix.ts), on this machine's kernel. */
import assert from "assert";
import { closeFd, FdListener, FdMapping, FdSocket, memfd } from "../../ffi/unix.ts";
import { EventFd } from "../../ffi/irq.ts";
import { isPvdrvError } from "../../hal/errors.ts";
import { native } from "../../ffi/lib.ts";

const openFds = () => [...Deno.readDirSync("/proc/self/fd")].length;

Deno.test("unix fds: a memfd sent with a message maps on the other side as the same memory, at an offset too", () => {
  const [a, b] = FdSocket.pair();
  const mem = memfd("guest", 3 * 4096);
  try {
    const mine = new FdMapping(mem, 3 * 4096);
    mine.bytes.set([1, 2, 3], 4096);
    assert.equal(a.send(new Uint8Array([0xaa, 0xbb]), [mem]), 2);
    const buf = new Uint8Array(16), fds: number[] = [];
    assert.equal(b.recv(buf, fds), 2);
    assert.deepEqual([...buf.subarray(0, 2)], [0xaa, 0xbb]);
    assert.equal(fds.length, 1);
    assert.notEqual(fds[0], mem, "the receiver's own descriptor");
    const theirs = new FdMapping(fds[0], 2 * 4096, 4096);
    closeFd(fds[0]); // the mapping keeps the file
    assert.deepEqual([...theirs.bytes.subarray(0, 3)], [1, 2, 3]);
    theirs.bytes[5] = 9;
    assert.equal(mine.bytes[4096 + 5], 9, "one memory, two mappings");
    mine.unmap();
    theirs.unmap();
    assert.equal(theirs.bytes[5], 0, "after unmap a stale view reads zeros, it does not fault");
  } finally {
    closeFd(mem);
    a.close();
    b.close();
  }
});

Deno.test("unix fds: an eventfd passed over the socket signals back (vhost-user's kick and call)", () => {
  const [a, b] = FdSocket.pair();
  const ev = new EventFd();
  try {
    a.send(new Uint8Array(1), [ev.fd]);
    const fds: number[] = [];
    b.recv(new Uint8Array(1), fds);
    assert.equal(fds.length, 1);
    assert.equal(native().pvdrv_eventfd_signal(fds[0]), 0, "signalled through the received descriptor");
    assert.equal(ev.drain(), true, "the original eventfd saw it");
    closeFd(fds[0]);
  } finally {
    ev.close();
    a.close();
    b.close();
  }
});

Deno.test("unix fds: more descriptors than the receiver takes are refused and all closed; none leak", () => {
  const [a, b] = FdSocket.pair();
  const mems = [memfd("a", 4096), memfd("b", 4096), memfd("c", 4096)];
  try {
    const before = openFds();
    a.send(new Uint8Array(4), mems);
    const fds: number[] = [];
    assert.throws(
      () => b.recv(new Uint8Array(4), fds, 2),
      (e) => isPvdrvError(e) && /more than 2/.test(e.message),
    );
    assert.deepEqual(fds, []);
    assert.equal(openFds(), before, "the three received descriptors were closed");
    // The stream goes on: the next message arrives as sent.
    a.send(new Uint8Array([7]));
    const buf = new Uint8Array(1);
    assert.equal(b.recv(buf, fds), 1);
    assert.deepEqual([buf[0], fds.length], [7, 0]);
  } finally {
    for (const m of mems) closeFd(m);
    a.close();
    b.close();
  }
});

Deno.test("unix fds: the peer's close reads as 0 bytes; a closed socket is an error, not a crash", () => {
  const [a, b] = FdSocket.pair();
  a.close();
  assert.equal(b.recv(new Uint8Array(8), []), 0);
  b.close();
  b.close(); // idempotent
  assert.throws(() => b.send(new Uint8Array(1)), (e) => isPvdrvError(e));
  assert.throws(
    () => a.send(new Uint8Array(1), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
    RangeError,
  );
});

Deno.test("unix fds: a listener accepts a client by path; nobody waiting is null; close removes the path", async () => {
  const dir = Deno.makeTempDirSync(), path = `${dir}/vhost.sock`;
  const l = FdListener.listen(path);
  try {
    assert.equal(l.accept(), null);
    assert.throws(() => FdListener.listen(path), (e) => isPvdrvError(e) && /EADDRINUSE/.test(e.message));
    const c = FdSocket.connect(path);
    const s = await l.next();
    try {
      const mem = memfd("region", 4096);
      c.send(new TextEncoder().encode("hello"), [mem]);
      closeFd(mem);
      await s.readable();
      const buf = new Uint8Array(5), fds: number[] = [];
      assert.equal(s.recv(buf, fds), 5);
      assert.equal(new TextDecoder().decode(buf), "hello");
      assert.equal(fds.length, 1);
      closeFd(fds[0]);
    } finally {
      c.close();
      s.close();
    }
  } finally {
    l.close();
  }
  assert.throws(() => Deno.statSync(path), Deno.errors.NotFound);
  Deno.removeSync(dir);
});
