/**
 * In-process cost of the device side (`deno bench`), as TS/C: pvdrv's vhost-user backend against C doing the same
 * device-side work. The cases are in bench/vhost_device_cases.ts; bench/paired.ts runs them in paired rounds.
 * @module
 */
import { register } from "./cases.ts";
import { vhostDeviceCases } from "./vhost_device_cases.ts";

const { cases, close } = vhostDeviceCases();
register(cases);
globalThis.addEventListener("unload", close);
