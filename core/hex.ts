/**
 * `0x…` formatting for addresses and values in messages, the one helper
 * every layer shares.
 *
 * @module
 */

/**
 * `0x` and lower-case hex digits (a negative value as `-0x…`), zero-padded to
 * `width` digits.
 *
 * @example
 * ```ts
 * import { hex } from "./hex.ts";
 * hex(255); // "0xff"
 * hex(0x1000n, 8); // "0x00001000"
 * hex(-16); // "-0x10"
 * ```
 */
export function hex(value: bigint | number, width = 0): string {
  return value < 0
    ? `-0x${(-value).toString(16).padStart(width, "0")}`
    : `0x${value.toString(16).padStart(width, "0")}`;
}
