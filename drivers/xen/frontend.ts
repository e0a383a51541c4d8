/**
 * The XenBus frontend lifecycle (Xen public/io/xenbus.h), shared by every pvdrv Xen driver (netfront; blkfront
 * next): find the device and its backend, then the handshake in steps —
 *
 * close a stale backend (one still Connected to a frontend that died: Closing → Closed) → Initialising →
 * (backend InitWait) → prepare (read the backend's features, grant the rings) → publish the ring keys and
 * Initialised in one transaction → Connected → (backend Connected) → start the rings.
 *
 * Closing/Closed from the backend stops the rings and answers; a backend that comes back to InitWait is connected
 * again. The device supplies the steps ({@link FrontendSteps}); this module holds the order and the waits.
 * @module
 */
import { readState, waitState, XenbusState } from "./xenbus.ts";
import { type XenStore, XenStoreError } from "./xenstore.ts";

/** The first domain id Xen reserves (xen.h DOMID_FIRST_RESERVED): no backend has one. */
export const DOMID_FIRST_RESERVED = 0x7ff0;

/** A frontend device in xenstore: our directory and the backend's, both checked. */
export interface FrontendDevice {
  /** Our directory, relative to this domain's home ("device/vif/0"). */
  readonly dir: string;
  /** The backend's directory ("/local/domain/0/backend/vif/5/0"). */
  readonly backend: string;
  /** The backend's domain id. */
  readonly backendId: number;
}

/** Find device `index` of XenBus type `type` ("vif", "vbd") and check where its backend says it is. */
export async function findFrontend(xs: XenStore, type: string, index: number): Promise<FrontendDevice> {
  if (!Number.isInteger(index) || index < 0 || index > 0xffff) {
    throw new RangeError(`bad ${type} index ${index}`);
  }
  const dir = `device/${type}/${index}`;
  const backend = await xs.tryRead(`${dir}/backend`);
  if (backend === null) {
    throw new XenStoreError("ENOENT", `no ${dir} in xenstore: this domain has no ${type} ${index}`);
  }
  if (!new RegExp(`^/local/domain/\\d{1,5}/backend/${type}/\\d{1,5}/\\d{1,5}$`).test(backend)) {
    throw new XenStoreError("EPROTO", `${dir}/backend is '${backend}', not a ${type} backend path`);
  }
  const idText = await xs.read(`${dir}/backend-id`);
  const backendId = Number(idText);
  if (!/^\d{1,5}$/.test(idText) || backendId >= DOMID_FIRST_RESERVED) {
    throw new XenStoreError("EPROTO", `${dir}/backend-id is '${idText}'`);
  }
  return { dir, backend, backendId };
}

/** Remove `path` in transaction `tx`; one that is not there is fine. */
async function rmIfThere(xs: XenStore, path: string, tx: number): Promise<void> {
  try {
    await xs.rm(path, tx);
  } catch (e) {
    if (!(e instanceof XenStoreError && e.code === "ENOENT")) throw e;
  }
}

/** What a device's frontend does at each step of the handshake. */
export interface FrontendSteps {
  /** The backend is in InitWait: read and check its features, grant the rings and bind the event channels. */
  prepare(): Promise<void>;
  /** Write the ring keys with `put` (in the transaction that also writes Initialised; it may run again). */
  publish(put: (key: string, value: string | number) => Promise<void>): Promise<void>;
  /**
   * Keys an earlier connection of this device may have left that would change how the backend reads this one's
   * (multi-queue-num-queues, ring-page-order): removed in the same transaction, before {@link publish}.
   */
  readonly staleKeys?: readonly string[];
  /** The backend is Connected: start the rings. */
  start(): void | Promise<void>;
  /** Stop using the rings and release their grants and ports (the backend went away, or shutdown). */
  release(): void;
  /**
   * The backend wrote Connected again while connected: its keys changed (blkback announces a resize so). Errors
   * are the device's to report (a change it cannot follow breaks its rings).
   */
  changed?(): Promise<void>;
}

/** Options of a {@link XenbusFrontend}. */
export interface FrontendOptions {
  /** How long to wait for the backend at each step (ms). */
  timeoutMs: number;
  /**
   * Write Connected before the backend connects (Linux xen-netback connects on the frontend's Connected) rather
   * than after (blkback connects on Initialised).
   */
  connectedFirst: boolean;
}

/** One frontend's XenBus state machine. */
export class XenbusFrontend {
  #connected = false;
  #stopped = false;
  #watcher: Promise<void> | null = null;
  #stopWatch: (() => Promise<unknown>) | null = null;
  /** Reconnections after a backend restart. */
  reconnects = 0;

  /** A frontend for `dev` whose device does `steps`. */
  constructor(
    readonly xs: XenStore,
    readonly dev: FrontendDevice,
    readonly steps: FrontendSteps,
    readonly opts: FrontendOptions,
  ) {}

  /** Whether the rings are up (both ends Connected and not stopped). */
  get connected(): boolean {
    return this.#connected;
  }

  /** Wait for the backend's state to satisfy `pred`; a timeout names `what`. */
  waitBackend(pred: (s: number) => boolean, what: string): Promise<number> {
    return waitState(this.xs, this.dev.backend, pred, what, this.opts.timeoutMs);
  }

  /** Write our state. */
  setState(s: number): Promise<void> {
    return this.xs.write(`${this.dev.dir}/state`, String(s));
  }

  /** Handshake with the backend and start the rings. */
  async connect(): Promise<void> {
    await this.#closeStaleBackend();
    await this.setState(XenbusState.Initialising);
    await this.waitBackend((s) => s === XenbusState.InitWait, "InitWait");
    await this.steps.prepare();
    const xs = this.xs;
    await xs.transaction(async (tx) => {
      for (const k of this.steps.staleKeys ?? []) await rmIfThere(xs, `${this.dev.dir}/${k}`, tx);
      await this.steps.publish((k, v) => xs.write(`${this.dev.dir}/${k}`, String(v), tx));
      await xs.write(`${this.dev.dir}/state`, String(XenbusState.Initialised), tx);
    });
    if (this.opts.connectedFirst) await this.setState(XenbusState.Connected);
    await this.waitBackend((s) => s === XenbusState.Connected, "Connected");
    if (!this.opts.connectedFirst) await this.setState(XenbusState.Connected);
    await this.steps.start();
    this.#connected = true;
  }

  /** A frontend that died (SIGKILL, crash) left the backend on rings that are gone: close it first. */
  async #closeStaleBackend(): Promise<void> {
    const was = await this.xs.tryRead(`${this.dev.backend}/state`);
    if (was !== String(XenbusState.Connected) && was !== String(XenbusState.Closing)) return;
    await this.setState(XenbusState.Closing);
    await this.waitBackend((s) => s >= XenbusState.Closing || s === XenbusState.InitWait, "Closing");
    await this.setState(XenbusState.Closed);
    await this.waitBackend((s) => s === XenbusState.Closed || s === XenbusState.InitWait, "Closed");
  }

  /** Follow the backend: answer its Closing/Closed, and connect again when it returns to InitWait. */
  watch(): void {
    const it = this.xs.watch(`${this.dev.backend}/state`);
    this.#stopWatch = () => it.return!();
    this.#watcher = (async () => {
      for await (const _ of it) {
        if (this.#stopped) break;
        const s = await readState(this.xs, this.dev.backend).catch(() => XenbusState.Closed);
        if ((s === XenbusState.Closing || s === XenbusState.Closed) && this.#connected) {
          // Backend going away: stop using the rings, answer Closing/Closed, wait for it to come back.
          this.#connected = false;
          await this.setState(XenbusState.Closing).catch(() => {});
          await this.waitBackend((x) => x === XenbusState.Closed || x === XenbusState.InitWait, "Closed")
            .catch(() => {});
          this.steps.release();
          await this.setState(XenbusState.Closed).catch(() => {});
        } else if (s === XenbusState.Connected && this.#connected) {
          await this.steps.changed?.().catch(() => {});
        } else if (s === XenbusState.InitWait && !this.#connected && !this.#stopped) {
          try {
            await this.connect();
            this.reconnects++;
          } catch {
            this.steps.release();
          }
        }
      }
    })().catch(() => {});
  }

  /**
   * Stop: end the watch, (graceful) Closing and wait for the backend to unmap our grants, release the rings,
   * Closed. Once xenstore stops answering, the remaining XenBus steps are skipped: grants and ports are released
   * whatever xenstore does, and a step xenstore refuses does not stop the others.
   */
  async shutdown(graceful: boolean): Promise<void> {
    this.#stopped = true;
    this.#connected = false;
    const step = async (f: () => Promise<unknown>) => {
      if (!this.xs.unresponsive) await f().catch(() => {});
    };
    try {
      // The watch ends here at once; only its UNWATCH request is waited for, and only while xenstore answers.
      const unwatching = this.#stopWatch?.();
      await step(async () => await unwatching);
      await step(async () => await this.#watcher);
      if (graceful) {
        await step(() => this.setState(XenbusState.Closing));
        await step(() =>
          this.waitBackend((s) => s >= XenbusState.Closing || s === XenbusState.InitWait, "Closing")
        );
      }
    } finally {
      this.steps.release();
    }
    await step(() => this.setState(XenbusState.Closed));
  }
}
