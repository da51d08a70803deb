/**
 * Symbol tables: address -> `symbol+offset`, name -> address, completion.
 *
 * @module
 */

import type { ImageSymbol } from "../loader/types.ts";

/**
 * A sorted symbol table built from one or more images.
 *
 * @example
 * ```ts
 * import { SymbolTable } from "./symbols.ts";
 * const table = new SymbolTable();
 * table.add([{ name: "bump", address: 0x100014n, size: 30, kind: "function" }]);
 * table.describe(0x100018n); // "bump+4"
 * table.lookup("bump"); // 0x100014n
 * ```
 */
export class SymbolTable {
  #byName = new Map<string, ImageSymbol>();
  #sorted: ImageSymbol[] = [];

  /** Adds symbols (a later symbol with the same name replaces the earlier one). */
  add(symbols: readonly ImageSymbol[]): void {
    for (const symbol of symbols) {
      if (symbol.name === "" || symbol.kind === "other" && symbol.address === 0n) continue;
      this.#byName.set(symbol.name, symbol);
    }
    // Equal addresses: functions last, so find() (which scans downwards) meets them first.
    const rank = (s: ImageSymbol) => (s.kind === "function" ? 1 : 0);
    this.#sorted = [...this.#byName.values()].sort((a, b) =>
      a.address < b.address ? -1 : a.address > b.address ? 1 : rank(a) - rank(b)
    );
  }

  /** Forgets every symbol. */
  clear(): void {
    this.#byName.clear();
    this.#sorted = [];
  }

  /** Number of symbols. */
  get size(): number {
    return this.#byName.size;
  }

  /** The address of a symbol, or undefined. */
  lookup(name: string): bigint | undefined {
    return this.#byName.get(name)?.address;
  }

  /** The symbol record of a name. */
  get(name: string): ImageSymbol | undefined {
    return this.#byName.get(name);
  }

  /**
   * The symbol containing `address` (or the closest one below it, for symbols
   * without a size, within 64 KiB), with the offset.
   */
  find(address: bigint): { symbol: ImageSymbol; offset: bigint } | undefined {
    const list = this.#sorted;
    let lo = 0;
    let hi = list.length - 1;
    let best = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid]!.address <= address) {
        best = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    // Prefer a function over an object at the same address, and a sized symbol that contains the address.
    for (let i = best; i >= 0 && i > best - 8; i--) {
      const symbol = list[i]!;
      const offset = address - symbol.address;
      if (symbol.size > 0 ? offset < BigInt(symbol.size) : offset < 0x10000n) return { symbol, offset };
    }
    return undefined;
  }

  /** `name` or `name+offset` (offset in hex as gdb prints it), or undefined. */
  describe(address: bigint): string | undefined {
    const found = this.find(address);
    if (found === undefined) return undefined;
    return found.offset === 0n ? found.symbol.name : `${found.symbol.name}+${found.offset.toString()}`;
  }

  /** Names starting with `prefix`, sorted. */
  complete(prefix: string): string[] {
    return [...this.#byName.keys()].filter((name) => name.startsWith(prefix)).sort();
  }

  /** All symbols in address order. */
  get all(): readonly ImageSymbol[] {
    return this.#sorted;
  }
}

/**
 * Symbols of a Linux `System.map` (or `nm` output): `ADDRESS TYPE NAME`
 * lines. Types t/T are functions, d/D/b/B/r/R objects, the rest "other";
 * sizes are unknown (0). Throws a SyntaxError naming the first line that is
 * not in that form.
 *
 * @example
 * ```ts
 * import { parseSystemMap } from "./symbols.ts";
 * const [symbol] = parseSystemMap("ffffffff81000000 T startup_64\n");
 * symbol?.address; // 0xffffffff81000000n
 * ```
 */
export function parseSystemMap(text: string, path = "System.map"): ImageSymbol[] {
  const symbols: ImageSymbol[] = [];
  const lines = text.split("\n");
  for (const [i, line] of lines.entries()) {
    if (line.trim() === "") continue;
    const match = /^([0-9a-fA-F]{1,16})\s+([a-zA-Z?])\s+(\S+)/.exec(line);
    if (match === null) {
      throw new SyntaxError(`${path} line ${i + 1} is not "ADDRESS TYPE NAME": ${JSON.stringify(line.slice(0, 80))}`);
    }
    const type = match[2]!.toLowerCase();
    const kind = type === "t" || type === "w" ? "function" : "dbr".includes(type) ? "object" : "other";
    symbols.push({ name: match[3]!, address: BigInt(`0x${match[1]}`), size: 0, kind });
  }
  return symbols;
}
