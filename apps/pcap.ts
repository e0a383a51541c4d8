/**
 * A pcap file writer (the classic libpcap format, LINKTYPE_ETHERNET), buffered so capturing costs one write per
 * 256 KiB rather than per frame.
 * @module
 */

/** Writes frames to a .pcap file readable by tcpdump, tshark and Wireshark. */
export class PcapWriter {
  readonly #f: Deno.FsFile;
  readonly #buf = new Uint8Array(256 * 1024);
  readonly #dv = new DataView(this.#buf.buffer);
  #used = 0;
  /** Frames written. */
  count = 0;

  /** Create (truncate) `path` and write the global header; frames are cut at `snaplen`. */
  constructor(path: string, readonly snaplen = 65535) {
    this.#f = Deno.openSync(path, { write: true, create: true, truncate: true });
    const h = this.#dv;
    h.setUint32(0, 0xa1b2c3d4, true); // magic, microsecond timestamps
    h.setUint16(4, 2, true);
    h.setUint16(6, 4, true);
    h.setUint32(16, snaplen, true);
    h.setUint32(20, 1, true); // LINKTYPE_ETHERNET
    this.#used = 24;
  }

  /** Append one frame, stamped now. */
  write(frame: Uint8Array, len: number): void {
    const cap = Math.min(len, this.snaplen);
    if (this.#used + 16 + cap > this.#buf.length) this.flush();
    const us = Math.round((performance.timeOrigin + performance.now()) * 1000);
    const d = this.#dv, o = this.#used;
    d.setUint32(o, Math.floor(us / 1e6), true);
    d.setUint32(o + 4, us % 1e6, true);
    d.setUint32(o + 8, cap, true);
    d.setUint32(o + 12, len, true);
    this.#buf.set(cap === frame.length ? frame : frame.subarray(0, cap), o + 16);
    this.#used += 16 + cap;
    this.count++;
  }

  /** Write out what is buffered. */
  flush(): void {
    let off = 0;
    while (off < this.#used) off += this.#f.writeSync(this.#buf.subarray(off, this.#used));
    this.#used = 0;
  }

  /** Flush and close. */
  close(): void {
    this.flush();
    this.#f.close();
  }
}
