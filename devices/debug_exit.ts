/**
 * QEMU's isa-debug-exit convention: a guest writes V to the port and the VM
 * ends with exit status (V << 1) | 1, so test kernels written for QEMU work
 * unchanged.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader } from "./_state.ts";

/** The debug-exit port keeps nothing between accesses: its state is the empty object. */
export type DebugExitState = Record<string, never>;

/** Snapshot of a {@link SinkPort} (plain JSON data). */
export interface SinkPortState {
  /** The last value written. */
  last: number;
}

/**
 * The debug-exit port (0xf4 by default).
 *
 * @example
 * ```ts
 * import { DebugExit } from "./debug_exit.ts";
 * let status = -1;
 * const device = new DebugExit((value) => status = (value << 1) | 1);
 * device.write(0, 1, 42);
 * status; // 85
 * ```
 */
export class DebugExit implements IoDevice {
  readonly #onExit: (value: number) => void;

  /** `onExit` receives V, the value the guest wrote. */
  constructor(onExit: (value: number) => void) {
    this.#onExit = onExit;
  }

  /** Always `{}`: the port is stateless, and says so to a snapshot that walks every device. */
  get state(): DebugExitState {
    return {};
  }

  /** Accepts only `{}` (a TypeError names anything else); there is nothing to restore. */
  restore(state: DebugExitState): void {
    const extra = new StateReader("debug-exit", state).keys()[0];
    if (extra !== undefined) throw new TypeError(`Cannot restore the debug-exit state: it has no fields, got ${extra}`);
  }

  /** Reads as all-ones, like an absent port. */
  read(_offset: number, size: number): number {
    return size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1;
  }

  /** A write of any size ends the VM with the value written. */
  write(_offset: number, _size: number, value: number): void {
    this.#onExit(value >>> 0);
  }
}

/**
 * A port that accepts writes and reads as zero, such as port 0x80 (POST
 * codes), which firmware and kernels use as an I/O delay.
 *
 * @example
 * ```ts
 * import { SinkPort } from "./debug_exit.ts";
 * const post = new SinkPort();
 * post.write(0, 1, 0x55);
 * post.last; // 0x55
 * ```
 */
export class SinkPort implements IoDevice {
  /** The last value written, as POST-code displays show it. */
  last = 0;

  /** Builds a port in `state`; throws as {@link SinkPort.restore} does. */
  static fromState(state: SinkPortState): SinkPort {
    const port = new SinkPort();
    port.restore(state);
    return port;
  }

  /** A copy of the state (plain JSON data). */
  get state(): SinkPortState {
    return { last: this.last };
  }

  /**
   * Puts the port in `state`. Throws a TypeError or RangeError naming the
   * bad field and its value, and changes nothing, when `state` is not valid.
   */
  restore(state: SinkPortState): void {
    this.last = new StateReader("sink port", state).integer("last", 0, 0xffff_ffff, true);
  }

  /** Reads the last value written. */
  read(_offset: number, _size: number): number {
    return this.last;
  }

  /** Remembers the value. */
  write(_offset: number, _size: number, value: number): void {
    this.last = value;
  }
}
