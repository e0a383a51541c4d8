/**
 * A Worker that plays a device changing shared ring memory while the driver reads it: it flips random bytes in
 * the given window (used-ring ids, lengths and used.idx) until told to stop. See fuzz.ts, target virtio-race.
 */
interface Start {
  buf: SharedArrayBuffer;
  offset: number;
  length: number;
  seed: number;
}
const self = globalThis as unknown as {
  onmessage: (e: MessageEvent<Start | "stop">) => void;
  postMessage: (m: unknown) => void;
};
let stop = false;
self.onmessage = (e) => {
  if (e.data === "stop") {
    stop = true;
    return;
  }
  const { buf, offset, length, seed } = e.data;
  const u8 = new Uint8Array(buf, offset, length);
  let s = seed >>> 0, flips = 0;
  self.postMessage("started");
  const step = () => {
    for (let i = 0; i < 2000 && !stop; i++) {
      s = (s * 1664525 + 1013904223) >>> 0;
      Atomics.store(u8, s % length, (s >>> 8) & 0xff);
      flips++;
    }
    if (stop) self.postMessage(flips);
    else setTimeout(step, 0);
  };
  step();
};
