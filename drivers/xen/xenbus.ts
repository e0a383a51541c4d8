/**
 * XenBus device states (Xen public/io/xenbus.h) and the state-key helpers a frontend's handshake uses: read the
 * other end's `state`, checked, and wait for it to reach a state.
 * @module
 */
import { type XenStore, XenStoreError } from "./xenstore.ts";

/** XenBus states (xenbus.h `enum xenbus_state`). */
export const XenbusState = {
  Unknown: 0,
  Initialising: 1,
  InitWait: 2,
  Initialised: 3,
  Connected: 4,
  Closing: 5,
  Closed: 6,
  Reconfiguring: 7,
  Reconfigured: 8,
} as const;

/** The state under `dir` (its `state` key), checked to be a XenBus state; `timeoutMs` bounds the read. */
export async function readState(xs: XenStore, dir: string, timeoutMs?: number): Promise<number> {
  const s = await xs.tryRead(`${dir}/state`, 0, timeoutMs);
  const n = Number(s);
  if (s === null || !/^\d$/.test(s) || n > XenbusState.Reconfigured) {
    throw new XenStoreError("EPROTO", `${dir}/state is '${s}'`);
  }
  return n;
}

/** Wait until the state under `dir` satisfies `pred`; a timeout names `what` was awaited and the state seen. */
export async function waitState(
  xs: XenStore,
  dir: string,
  pred: (s: number) => boolean,
  what: string,
  timeoutMs: number,
): Promise<number> {
  try {
    const v = await xs.waitFor(
      `${dir}/state`,
      (s) => s !== null && /^\d$/.test(s) && pred(Number(s)),
      timeoutMs,
    );
    return Number(v);
  } catch (e) {
    if (e instanceof XenStoreError && e.code === "ETIMEDOUT") {
      // The state seen, for the message: asked within the caller's bound, not a whole request deadline. A
      // xenstore that does not answer it is marked silent, so the caller's cleanup skips what it would wait for.
      const seen = await readState(xs, dir, Math.min(timeoutMs, 1000)).catch(() => "?");
      throw new XenStoreError(
        "ETIMEDOUT",
        `backend ${dir} did not reach ${what} within ${timeoutMs} ms (state ${seen})`,
      );
    }
    throw e;
  }
}
