/**
 * The TAP bridge's status line, shared by the tap and serve tasks.
 * @module
 */
import type { BridgeStats } from "../apps/bridge.ts";

/** One status line of the bridge's counters. */
export function bridgeLine(s: BridgeStats): string {
  return `nic→tap ${s.toTap} (${s.toTapBytes} B), tap→nic ${s.toNic} (${s.toNicBytes} B), dropped ` +
    `${s.tapDropped}/${s.nicDropped}, dhcp ${s.intercepted}`;
}
