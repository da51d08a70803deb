/**
 * A telescope as pwndbg shows one: each pointer-sized slot from an address,
 * followed through the pointers it holds, with symbols and strings.
 *
 * ```
 * 00:0000│ rsp 0x7ff8 —▸ 0x100123 <main+3> —▸ 0xe5894855 (code bytes)
 * 01:0008│     0x8000 —▸ 0x2000 —▸ "hello"
 * ```
 *
 * @module
 */

/** What a telescope reads. */
export interface TelescopeSource {
  /** Reads `size` bytes at a virtual address (throws when it is not mapped). */
  read(address: bigint, size: number): Uint8Array;
  /** `symbol+offset`, or undefined. */
  symbolize(address: bigint): string | undefined;
  /** 8, 4 or 2. */
  pointerSize: number;
  /** Register names by value, to mark slots they point at (`rsp`, `rbp`). */
  registers?: ReadonlyMap<string, bigint>;
}

const ARROW = "—▸";
/** Pointers followed from a slot before the chain is cut. */
const MAX_DEPTH = 5;

function word(bytes: Uint8Array): bigint {
  return bytes.reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n);
}

function hex(value: bigint): string {
  return `0x${value.toString(16)}`;
}

/** A C string of 4+ printable characters at `address`, or undefined. */
function stringAt(source: TelescopeSource, address: bigint): string | undefined {
  let bytes: Uint8Array;
  try {
    bytes = source.read(address, 32);
  } catch {
    return undefined;
  }
  let end = 0;
  while (end < bytes.length && bytes[end]! >= 0x20 && bytes[end]! < 0x7f) end++;
  if (end < 4 || (end < bytes.length && bytes[end] !== 0 && bytes[end] !== 0x0a)) return undefined;
  const text = new TextDecoder().decode(bytes.subarray(0, end));
  return JSON.stringify(end === bytes.length ? `${text}…` : text);
}

/** One slot's chain: `0x100123 <main+3> —▸ 0xe5894855`. */
export function dereferenceChain(source: TelescopeSource, value: bigint): string {
  const parts: string[] = [];
  const seen = new Set<bigint>();
  let current = value;
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    const symbol = source.symbolize(current);
    parts.push(`${hex(current)}${symbol === undefined ? "" : ` <${symbol}>`}`);
    if (seen.has(current)) {
      parts.push("(loop)");
      break;
    }
    seen.add(current);
    const text = stringAt(source, current);
    if (text !== undefined) {
      parts.push(text);
      break;
    }
    // The null page holds no data a pointer would name: small numbers stay numbers.
    if (current < 0x1000n) break;
    let next: bigint;
    try {
      next = word(source.read(current, source.pointerSize));
    } catch {
      break; // not an address: the chain ends at this value
    }
    if (depth === MAX_DEPTH - 1) {
      parts.push("…");
      break;
    }
    current = next;
  }
  return parts.join(` ${ARROW} `);
}

/**
 * `count` slots from `address`, one line each: index, offset, registers
 * pointing there, the slot's address and its chain.
 *
 * @example
 * ```ts
 * import { telescope } from "./telescope.ts";
 * const memory = new Map<bigint, bigint>([[0x1000n, 0x2000n], [0x1008n, 7n]]);
 * const read = (address: bigint) => {
 *   const value = memory.get(address);
 *   if (value === undefined) throw new RangeError("unmapped");
 *   return new Uint8Array(new BigUint64Array([value]).buffer);
 * };
 * telescope({ read, symbolize: () => undefined, pointerSize: 8 }, 0x1000n, 2);
 * // "00:0000│ 0x1000 —▸ 0x2000\n01:0008│ 0x1008 —▸ 0x7"
 * ```
 */
export function telescope(source: TelescopeSource, address: bigint, count: number): string {
  const size = BigInt(source.pointerSize);
  const slots = Array.from({ length: count }, (_, i) => address + BigInt(i) * size);
  const marks = slots.map((slot) =>
    [...(source.registers ?? new Map())].filter(([, value]) => value === slot).map(([name]) => name).join(",")
  );
  const markWidth = Math.max(0, ...marks.map((m) => m.length));
  return slots.map((slot, i) => {
    const index = i.toString(16).padStart(2, "0");
    const offset = (BigInt(i) * size).toString(16).padStart(4, "0");
    const mark = markWidth === 0 ? "" : `${marks[i]!.padEnd(markWidth)} `;
    let chain: string;
    try {
      chain = dereferenceChain(source, word(source.read(slot, source.pointerSize)));
    } catch (error) {
      chain = `(${(error as Error).message})`;
    }
    return `${index}:${offset}│ ${mark}${hex(slot)} ${ARROW} ${chain}`;
  }).join("\n");
}
