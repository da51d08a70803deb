/**
 * QEMU's isa-debug-exit convention: a guest writes V to the port and the VM
 * ends with exit status (V << 1) | 1, so test kernels written for QEMU work
 * unchanged.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";

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

  /** Reads the last value written. */
  read(_offset: number, _size: number): number {
    return this.last;
  }

  /** Remembers the value. */
  write(_offset: number, _size: number, value: number): void {
    this.last = value;
  }
}
