/**
 * Address expressions as gdb users type them, for every place that takes an
 * address (REPL dot commands, gdb `monitor`, breakpoints, watchpoints):
 *
 * - numbers: `0x100000`, `4096`;
 * - registers with `$`: `$rsp`, `$eax`, `$al`, `$cr3`, `$pc`, `$sp`, `$fp`;
 * - symbols: `tick`, `ticks`, `bump+4`;
 * - `+`, `-`, `*` (multiply), parentheses;
 * - `*` in front of an operand reads the pointer-sized value there
 *   (`*$rsp`, `**(ptr)`); a C cast picks the size read: `*(int*)$rsp` reads
 *   4 bytes, `*(char*)buf` 1; `&` in front of a symbol is its address
 *   (accepted for gdb habits like `*(long*)&counter`).
 *
 * @example
 * ```ts
 * import { evaluateExpression } from "./expr.ts";
 * const memory = new Map([[0x7000n, 0x100010n]]);
 * const context = {
 *   register: (name: string) => (name === "rsp" ? 0x7000n : undefined),
 *   symbol: (name: string) => (name === "tick" ? 0x100000n : undefined),
 *   read: (address: bigint) => memory.get(address) ?? 0n,
 *   pointerSize: 8,
 * };
 * evaluateExpression("tick+4", context); // 0x100004n
 * evaluateExpression("*$rsp - tick", context); // 0x10n
 * ```
 *
 * @module
 */

import type { Vcpu } from "../vcpu.ts";
import { readRegister } from "./registers.ts";

/** What an expression can see. */
export interface ExpressionContext {
  /** A register's value by name (without `$`, lower case), or undefined for an unknown name. */
  register(name: string): bigint | undefined;
  /** A symbol's address, or undefined. */
  symbol(name: string): bigint | undefined;
  /** Reads `size` bytes (1, 2, 4 or 8) at a virtual address, little-endian. */
  read(address: bigint, size: number): bigint;
  /** Bytes a plain `*` reads: 8 in long mode, 4 in protected mode, 2 in real mode. */
  pointerSize: number;
  /** Names close to an unknown symbol, for the error message. */
  suggest?(name: string): string[];
}

const TYPE_SIZES: Record<string, number> = {
  char: 1,
  "unsigned char": 1,
  "signed char": 1,
  uint8_t: 1,
  int8_t: 1,
  u8: 1,
  short: 2,
  "unsigned short": 2,
  uint16_t: 2,
  int16_t: 2,
  u16: 2,
  int: 4,
  unsigned: 4,
  "unsigned int": 4,
  uint32_t: 4,
  int32_t: 4,
  u32: 4,
  long: 8,
  "unsigned long": 8,
  "long long": 8,
  "unsigned long long": 8,
  uint64_t: 8,
  int64_t: 8,
  u64: 8,
  uintptr_t: 8,
  size_t: 8,
  void: 8,
};

interface Token {
  kind: "number" | "register" | "symbol" | "op" | "end";
  text: string;
  at: number;
}

function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  const pattern =
    /\s*(?:(0x[0-9a-f]+|0b[01]+|\d+)n?|\$([a-z_][a-z0-9_]*)|([A-Za-z_.][\w.@]*)|(\*|\+|-|\(|\)|&|\/|<<|>>|\|))/iy;
  let at = 0;
  while (at < source.length) {
    if (/^\s*$/.test(source.slice(at))) break;
    pattern.lastIndex = at;
    const match = pattern.exec(source);
    if (match === null) {
      const where = source.slice(at).trimStart();
      throw new SyntaxError(
        `Cannot parse expression ${JSON.stringify(source)}: unexpected ${JSON.stringify(where[0])} at column ${
          source.length - where.length + 1
        }`,
      );
    }
    const start = match.index + match[0].length - match[0].trimStart().length;
    if (match[1] !== undefined) tokens.push({ kind: "number", text: match[1], at: start });
    else if (match[2] !== undefined) tokens.push({ kind: "register", text: match[2].toLowerCase(), at: start });
    else if (match[3] !== undefined) tokens.push({ kind: "symbol", text: match[3], at: start });
    else tokens.push({ kind: "op", text: match[4]!, at: start });
    at = pattern.lastIndex;
  }
  tokens.push({ kind: "end", text: "", at: source.length });
  return tokens;
}

/** A value and, when it came from a pointer cast, the size a `*` in front of it reads. */
interface Value {
  value: bigint;
  pointee?: number;
}

const MASK64 = (1n << 64n) - 1n;

class Parser {
  #tokens: Token[];
  #i = 0;
  constructor(readonly source: string, readonly context: ExpressionContext) {
    this.#tokens = tokenize(source);
  }

  #peek(): Token {
    return this.#tokens[this.#i]!;
  }

  #fail(message: string): never {
    throw new SyntaxError(`Cannot parse expression ${JSON.stringify(this.source)}: ${message}`);
  }

  parse(): bigint {
    if (this.#peek().kind === "end") this.#fail("it is empty");
    const result = this.#sum();
    if (this.#peek().kind !== "end") {
      this.#fail(`unexpected ${JSON.stringify(this.#peek().text)} at column ${this.#peek().at + 1}`);
    }
    return result.value & MASK64;
  }

  #accept(op: string): boolean {
    if (this.#peek().kind === "op" && this.#peek().text === op) {
      this.#i++;
      return true;
    }
    return false;
  }

  #sum(): Value {
    let left = this.#product();
    for (;;) {
      if (this.#accept("+")) left = { value: left.value + this.#product().value };
      else if (this.#accept("-")) left = { value: left.value - this.#product().value };
      else if (this.#accept("|")) left = { value: left.value | this.#product().value };
      else return left;
    }
  }

  #product(): Value {
    let left = this.#unary();
    for (;;) {
      if (this.#accept("*")) left = { value: left.value * this.#unary().value };
      else if (this.#accept("/")) {
        const right = this.#unary().value;
        if (right === 0n) this.#fail("division by zero");
        left = { value: left.value / right };
      } else if (this.#accept("<<")) left = { value: left.value << this.#unary().value };
      else if (this.#accept(">>")) left = { value: left.value >> this.#unary().value };
      else if (this.#accept("&")) left = { value: left.value & this.#unary().value };
      else return left;
    }
  }

  #unary(): Value {
    if (this.#accept("*")) {
      const pointer = this.#unary();
      const size = pointer.pointee ?? this.context.pointerSize;
      return { value: this.context.read(pointer.value & MASK64, size) };
    }
    if (this.#accept("&")) return this.#unary(); // `&symbol` is the symbol's address, which a symbol already is
    if (this.#accept("-")) return { value: -this.#unary().value };
    if (this.#accept("+")) return this.#unary();
    const cast = this.#cast();
    if (cast !== undefined) return { value: this.#unary().value, pointee: cast };
    return this.#primary();
  }

  /** `(type*)` or `(type)`: the size a later `*` reads; undefined when the parenthesis is not a cast. */
  #cast(): number | undefined {
    const start = this.#i;
    if (!this.#accept("(")) return undefined;
    const words: string[] = [];
    while (this.#peek().kind === "symbol") words.push(this.#tokens[this.#i++]!.text);
    const type = words.join(" ");
    if (words.length === 0 || !(type in TYPE_SIZES)) {
      this.#i = start;
      return undefined;
    }
    let stars = 0;
    while (this.#accept("*")) stars++;
    if (!this.#accept(")")) this.#fail(`expected ")" after the cast (${type}${"*".repeat(stars)}`);
    // `(int*)p`: *p reads 4 bytes; `(int**)p`: *p reads a pointer; `(long)x`: a plain number.
    return stars === 0 ? undefined : stars === 1 ? TYPE_SIZES[type]! : this.context.pointerSize;
  }

  #primary(): Value {
    const token = this.#peek();
    this.#i++;
    switch (token.kind) {
      case "number":
        return { value: BigInt(token.text) };
      case "register": {
        // gdb's $sp, $fp and $pc name the whole register in every mode.
        const alias = ({ sp: "rsp", fp: "rbp", pc: "rip" } as Record<string, string>)[token.text];
        const value = this.context.register(alias ?? token.text);
        if (value === undefined) throw new RangeError(`Unknown register $${token.text}`);
        return { value };
      }
      case "symbol": {
        const value = this.context.symbol(token.text);
        if (value === undefined) {
          const close = this.context.suggest?.(token.text) ?? [];
          throw new RangeError(
            `Unknown symbol ${JSON.stringify(token.text)}${
              close.length > 0 ? ` (did you mean ${close.join(", ")}?)` : ""
            }`,
          );
        }
        return { value };
      }
      case "op":
        if (token.text === "(") {
          const inner = this.#sum();
          if (!this.#accept(")")) this.#fail(`expected ")" at column ${this.#peek().at + 1}`);
          return inner;
        }
        this.#fail(`unexpected ${JSON.stringify(token.text)} at column ${token.at + 1}`);
        break;
      case "end":
        this.#fail("it ends too early");
    }
  }
}

/**
 * Evaluates an address expression. Throws a SyntaxError for text that does
 * not parse and a RangeError for an unknown register or symbol or memory
 * that cannot be read.
 */
export function evaluateExpression(source: string, context: ExpressionContext): bigint {
  return new Parser(source, context).parse();
}

/** What an expression needs of a debugger: its symbols and reads through the page tables (structural: no import back). */
export interface ExpressionDebugger {
  readonly symbols: { lookup(name: string): bigint | undefined; complete(prefix: string): string[] };
  readVirtual(address: bigint, length: number, cpu: Vcpu): Uint8Array;
}

/**
 * The context of a vCPU: its registers, the debugger's symbols, and memory
 * read through the vCPU's page tables.
 */
export function vcpuExpressionContext(debug: ExpressionDebugger, cpu: Vcpu): ExpressionContext {
  return {
    register: (name) => readRegister(name, cpu.regs, () => cpu.sregsView),
    symbol: (name) => debug.symbols.lookup(name),
    read: (address, size) => {
      const bytes = debug.readVirtual(address, size, cpu);
      return bytes.reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n);
    },
    pointerSize: cpu.bitness / 8,
    suggest: (name) => debug.symbols.complete(name.slice(0, 3)).slice(0, 5),
  };
}

/** Evaluates an address expression on a vCPU with a debugger's symbols. */
export function evaluateAddress(source: string, debug: ExpressionDebugger, cpu: Vcpu): bigint {
  return evaluateExpression(source, vcpuExpressionContext(debug, cpu));
}
