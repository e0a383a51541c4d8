/**
 * The lab's error: a failure that is not the command's own exit status (boot, modules, timeout, a peer).
 * @module
 */
import { PvdrvError } from "../../hal/errors.ts";

/** A lab failure that is not the command's own exit status (boot, modules, timeout). */
export class LabError extends PvdrvError {
  /** Creates the error. */
  constructor(msg: string) {
    super("lab", msg);
  }
}
