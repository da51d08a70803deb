/**
 * System control port B (port 0x61) of the PC: the PIT channel 2 gate and
 * speaker enable, the PIT channel 2 output, and the DRAM refresh toggle that
 * kernels poll to time short delays.
 *
 * Bits on read: 0 = PIT channel 2 gate, 1 = speaker data enable, 2-3 = the
 * parity / I/O channel check disables (stored), 4 = refresh toggle (flips on
 * every read, so a loop waiting for a change always sees one), 5 = PIT
 * channel 2 output, 6-7 = check status (0). Writes store bits 0-3.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader } from "./_state.ts";

/** Port B bits. */
export const PORT61 = {
  pitGate: 0x01,
  speakerData: 0x02,
  refreshToggle: 0x10,
  pitOutput: 0x20,
} as const;

const WRITABLE = 0x0f;

/** Options for {@link Port61}. */
export interface Port61Options {
  /** The PIT channel 2 output (bit 5); reads 0 without it. */
  pitOutput?: () => boolean;
  /** Called when the guest changes the PIT channel 2 gate (bit 0), e.g. to update the in-kernel PIT. */
  onGate?: (gate: boolean) => void;
}

/**
 * Snapshot of port B (plain JSON data). The PIT output (bit 5) is the PIT's
 * state, not the port's.
 */
export interface Port61State {
  /** The stored bits 0-3. */
  value: number;
  /** The refresh toggle's current level. */
  refresh: boolean;
}

/**
 * System control port B, placed at port 0x61.
 *
 * @example
 * ```ts
 * import { Port61 } from "./port61.ts";
 * import assert from "node:assert/strict";
 * const port = new Port61({ pitOutput: () => true });
 * port.write(0, 1, 0x03);
 * const first = port.read(0, 1);
 * assert.equal(first & 0x23, 0x23); // gate and speaker stored, PIT output high
 * assert.notEqual(port.read(0, 1) & 0x10, first & 0x10); // the refresh bit toggled
 * ```
 */
export class Port61 implements IoDevice {
  readonly #options: Port61Options;
  #value = 0;
  #refresh = false;

  constructor(options: Port61Options = {}) {
    this.#options = options;
  }

  /** Builds a port from `options` in `state`; throws as {@link Port61.restore} does. */
  static fromState(state: Port61State, options: Port61Options = {}): Port61 {
    const port = new Port61(options);
    port.restore(state);
    return port;
  }

  /** A copy of the state (plain JSON data). */
  get state(): Port61State {
    return { value: this.#value, refresh: this.#refresh };
  }

  /**
   * Puts the port in `state`. `onGate` is not called: the PIT's gate is part
   * of the PIT's own state, restored with it. Throws a TypeError or
   * RangeError naming the bad field and its value, and changes nothing, when
   * `state` is not a valid state.
   */
  restore(state: Port61State): void {
    const r = new StateReader("port 0x61", state);
    const value = r.integer("value", 0, WRITABLE, true);
    const refresh = r.boolean("refresh");
    this.#value = value;
    this.#refresh = refresh;
  }

  /** The PIT channel 2 gate as last written (bit 0). */
  get gate(): boolean {
    return (this.#value & PORT61.pitGate) !== 0;
  }

  /** Reads the port; each read flips the refresh bit. */
  read(_offset: number, _size: number): number {
    this.#refresh = !this.#refresh;
    const output = this.#options.pitOutput?.() ?? false;
    return this.#value | (this.#refresh ? PORT61.refreshToggle : 0) | (output ? PORT61.pitOutput : 0);
  }

  /** Stores bits 0-3; reports a gate change. */
  write(_offset: number, _size: number, value: number): void {
    const previous = this.#value;
    this.#value = value & WRITABLE;
    if (((previous ^ this.#value) & PORT61.pitGate) !== 0) this.#options.onGate?.(this.gate);
  }
}
