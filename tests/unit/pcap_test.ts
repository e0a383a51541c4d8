/** pcap capture files (apps/pcap.ts). */
import assert from "assert";
import { PcapWriter } from "../../apps/pcap.ts";

Deno.test("pcap: a record holds only the frame's length of a longer buffer", () => {
  const path = Deno.makeTempFileSync({ suffix: ".pcap" });
  try {
    const w = new PcapWriter(path);
    const buf = new Uint8Array(2048).fill(0xee);
    buf.fill(0x11, 0, 60);
    for (let i = 0; i < 3500; i++) w.write(buf, 60); // past 256 KiB: records sit right at the buffer's end
    w.close();
    const b = Deno.readFileSync(path);
    assert.equal(b.length, 24 + 3500 * (16 + 60));
    for (let r = 0; r < 3500; r++) {
      const data = b.subarray(24 + r * 76 + 16, 24 + (r + 1) * 76);
      assert.ok(data.every((x) => x === 0x11), `record ${r} holds the frame's 60 bytes only`);
    }
  } finally {
    Deno.removeSync(path);
  }
});
