/**
 * In-process cost of virtio-net's hot paths (`deno bench`, or `deno task bench --in-process`), as TS/C: the cases
 * are in bench/virtio_net_cases.ts; bench/paired.ts runs the same cases in paired rounds.
 * @module
 */
import { register } from "./cases.ts";
import { virtioNetCases } from "./virtio_net_cases.ts";

const { cases, close } = virtioNetCases();
register(cases);
globalThis.addEventListener("unload", close);
