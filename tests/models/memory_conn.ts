/**
 * An in-memory stream connection pair with the parts of `Deno.Conn` a protocol speaker uses (read, write,
 * close): what one end writes the other reads, in order; closing an end ends the other's stream. For fast,
 * deterministic tests of servers that take a `Deno.Conn` (the NBD export).
 */

class Pipe {
  readonly #chunks: Uint8Array[] = [];
  #waiter: (() => void) | null = null;
  closed = false;

  push(b: Uint8Array): void {
    if (this.closed) throw new Deno.errors.BrokenPipe("the other end is closed");
    this.#chunks.push(b.slice());
    this.#waiter?.();
  }

  close(): void {
    this.closed = true;
    this.#waiter?.();
  }

  async read(dst: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.closed) return null;
      await new Promise<void>((r) => (this.#waiter = r));
      this.#waiter = null;
    }
    const c = this.#chunks[0], n = Math.min(c.length, dst.length);
    dst.set(c.subarray(0, n));
    if (n === c.length) this.#chunks.shift();
    else this.#chunks[0] = c.subarray(n);
    return n;
  }
}

/** Two connected ends. */
export function memoryConnPair(): [Deno.Conn, Deno.Conn] {
  const ab = new Pipe(), ba = new Pipe();
  const end = (rx: Pipe, tx: Pipe) =>
    ({
      read: (b: Uint8Array) => rx.read(b),
      write: (b: Uint8Array) => {
        tx.push(b);
        return Promise.resolve(b.length);
      },
      close: () => {
        tx.close();
        rx.close();
      },
    }) as unknown as Deno.Conn;
  return [end(ba, ab), end(ab, ba)];
}
