/**
 * Test-only TypeScript twin of bench/ring_loop.c: the same split-virtqueue ring work (virtio 1.2 §2.7), driver and
 * device side, in plain typed arrays with no buffer objects, ownership states or counters — so the bench can tell
 * how much of pvdrv's TS/C ratio is the language and how much is pvdrv's safety bookkeeping. Not part of the
 * runtime.
 * @module
 */

const QSIZE = 256, MASK = QSIZE - 1, SLOT = 2048, HDR = 12;

/** One ring with its pool, laid out like the C struct's arrays. */
export class RingLoop {
  readonly desc = new Uint32Array(4 * QSIZE); // addr lo, addr hi, len, flags | next << 16
  readonly availRing = new Uint16Array(QSIZE);
  readonly usedRing = new Uint32Array(2 * QSIZE); // id, len
  readonly idx = new Uint16Array(4); // avail_idx, used_idx, avail_event, used_event
  readonly freeList = new Uint16Array(QSIZE);
  readonly owned = new Uint8Array(QSIZE);
  readonly cap = new Uint32Array(QSIZE);
  readonly bufOf = new Uint32Array(QSIZE);
  readonly poolFree = new Uint32Array(QSIZE);
  readonly pool = new Uint8Array(QSIZE * SLOT);
  readonly #pool32 = new Uint32Array(this.pool.buffer);
  nfree = QSIZE;
  npool = QSIZE;
  nextAvail = 0;
  lastUsed = 0;
  kicked = 0;
  inFlight = 0;
  devLastAvail = 0;
  devUsed = 0;
  notifications = 0;
  errors = 0;
  /** What the RX loop read of each frame, kept (as the C loop keeps it) so no compiler drops the read. */
  rxSeen = 0;

  constructor() {
    for (let i = 0; i < QSIZE; i++) {
      this.freeList[i] = QSIZE - 1 - i;
      this.poolFree[i] = QSIZE - 1 - i;
    }
  }

  /** Driver: reclaim completed heads, checking each id and length. */
  reclaim(): number {
    const idx = Atomics.load(this.idx, 1);
    let n = (idx - this.lastUsed) & 0xffff;
    if (n > this.inFlight) return this.errors++, -1;
    for (; n; n--) {
      const slot = this.lastUsed & MASK, id = this.usedRing[2 * slot], len = this.usedRing[2 * slot + 1];
      if (id >= QSIZE || !this.owned[id] || len > this.cap[id]) return this.errors++, -1;
      this.owned[id] = 0;
      this.inFlight--;
      this.freeList[this.nfree++] = id;
      this.poolFree[this.npool++] = this.bufOf[id];
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return 0;
  }

  /** Device: complete every published buffer with `len`. */
  complete(len: number): void {
    const end = Atomics.load(this.idx, 0);
    while (this.devLastAvail !== end) {
      const slot = this.devUsed & MASK;
      this.usedRing[2 * slot] = this.availRing[this.devLastAvail & MASK];
      this.usedRing[2 * slot + 1] = len;
      this.devLastAvail = (this.devLastAvail + 1) & 0xffff;
      this.devUsed = (this.devUsed + 1) & 0xffff;
    }
    Atomics.store(this.idx, 1, this.devUsed);
  }

  /** Driver: queue `n` frames of `len` bytes (a zeroed header each when sending), publish, kick if asked. */
  post(n: number, len: number, writable: boolean): number {
    if (this.nfree < n) this.reclaim();
    let k = 0;
    for (; k < n && this.nfree && this.npool; k++) {
      const b = this.poolFree[--this.npool];
      if (!writable) { // the 12-byte header, as C's memset compiles it: word stores
        const w = (b * SLOT) >> 2;
        this.#pool32[w] = 0;
        this.#pool32[w + 1] = 0;
        this.#pool32[w + 2] = 0;
      }
      const head = this.freeList[--this.nfree], o = head << 2, l = writable ? SLOT : HDR + len;
      this.desc[o] = b * SLOT;
      this.desc[o + 1] = 0;
      this.desc[o + 2] = l;
      this.desc[o + 3] = writable ? 2 : 0;
      this.owned[head] = 1;
      this.cap[head] = l;
      this.bufOf[head] = b;
      this.availRing[this.nextAvail & MASK] = head;
      this.nextAvail = (this.nextAvail + 1) & 0xffff;
      this.inFlight++;
    }
    const old = this.kicked;
    Atomics.store(this.idx, 0, this.nextAvail);
    this.kicked = this.nextAvail;
    const ev = this.idx[2];
    if (((this.nextAvail - ev - 1) & 0xffff) < ((this.nextAvail - old) & 0xffff)) this.notifications++;
    return k;
  }

  /** One TX batch: post `n` frames, the device completes them, the next batch reclaims them. */
  txBatch(n: number, len: number): number {
    const k = this.post(n, len, false);
    this.complete(0);
    return k;
  }

  /** One RX batch: the device fills `n` posted buffers; the driver takes and checks them, then reposts. */
  rxBatch(n: number, len: number): number {
    if (this.inFlight === 0) this.post(QSIZE, 0, true);
    this.complete(HDR + len);
    const idx = Atomics.load(this.idx, 1);
    let avail = (idx - this.lastUsed) & 0xffff;
    if (avail > this.inFlight) return -1;
    let got = 0, sink = 0;
    for (; got < n && avail; got++, avail--) {
      const slot = this.lastUsed & MASK, id = this.usedRing[2 * slot], l = this.usedRing[2 * slot + 1];
      if (id >= QSIZE || !this.owned[id] || l > this.cap[id] || l < HDR + 14) return -1;
      this.owned[id] = 0;
      this.inFlight--;
      this.freeList[this.nfree++] = id;
      sink += this.pool[this.bufOf[id] * SLOT + HDR];
      this.poolFree[this.npool++] = this.bufOf[id];
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    this.rxSeen = (this.rxSeen + sink) >>> 0;
    this.post(got, 0, true);
    return got;
  }
}
