/**
 * What the REPL prints: values (register-sized bigints in hex), registers
 * with changes highlighted, and the context view shown at every stop.
 *
 * @module
 */

import {
  describeStop,
  DISPLAY_REGISTER_ORDER,
  hex,
  type Registers,
  type Segment,
  type SpecialRegisters,
  type StopEvent,
  type Vm,
} from "../mod.ts";

export { hex };

/** Colour helpers that do nothing when colour is off. */
export interface Style {
  enabled: boolean;
  bold(text: string): string;
  dim(text: string): string;
  red(text: string): string;
  green(text: string): string;
  yellow(text: string): string;
  cyan(text: string): string;
}

/** Colours only on a TTY and never with NO_COLOR (https://no-color.org). */
export function makeStyle(enabled: boolean): Style {
  const wrap = (code: number) => (text: string) => enabled ? `\x1b[${code}m${text}\x1b[0m` : text;
  return {
    enabled,
    bold: wrap(1),
    dim: wrap(2),
    red: wrap(31),
    green: wrap(32),
    yellow: wrap(33),
    cyan: wrap(36),
  };
}

/** `0x` hex of a bigint or number. */
const customInspect = Symbol.for("Deno.customInspect");

class HexBigint {
  constructor(readonly value: bigint) {}
  [customInspect](): string {
    return `${hex(this.value)}n`;
  }
}

function hexify(value: unknown, depth: number, seen: Set<unknown>): unknown {
  if (typeof value === "bigint") return new HexBigint(value);
  if (value === null || typeof value !== "object" || depth > 4 || seen.has(value)) return value;
  const proto = Object.getPrototypeOf(value);
  if (Array.isArray(value)) {
    seen.add(value);
    return value.map((v) => hexify(v, depth + 1, seen));
  }
  if (proto === Object.prototype || proto === null) {
    seen.add(value);
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, hexify(v, depth + 1, seen)]));
  }
  return value;
}

/** Formats a REPL result like Deno's REPL, with bigints in hex. */
export function formatValue(value: unknown, colors: boolean): string {
  if (typeof value === "string") return colors ? `\x1b[32m${JSON.stringify(value)}\x1b[0m` : JSON.stringify(value);
  return Deno.inspect(hexify(value, 0, new Set()), { colors, depth: 4, breakLength: 100 });
}

const GPR_ORDER = DISPLAY_REGISTER_ORDER;

const RFLAGS_BITS: [number, string][] = [
  [0, "CF"],
  [2, "PF"],
  [4, "AF"],
  [6, "ZF"],
  [7, "SF"],
  [8, "TF"],
  [9, "IF"],
  [10, "DF"],
  [11, "OF"],
  [14, "NT"],
  [16, "RF"],
  [17, "VM"],
  [18, "AC"],
  [19, "VIF"],
  [20, "VIP"],
  [21, "ID"],
];

/** Names of the set flags in RFLAGS, e.g. `[ IF ZF ]`, with IOPL when non-zero. */
export function decodeRflags(rflags: bigint): string {
  const set = RFLAGS_BITS.filter(([bit]) => (rflags >> BigInt(bit)) & 1n).map(([, name]) => name);
  const iopl = Number((rflags >> 12n) & 3n);
  if (iopl !== 0) set.push(`IOPL=${iopl}`);
  return `[ ${set.join(" ")} ]`;
}

function bitNames(value: bigint, bits: [number, string][]): string {
  return bits.filter(([bit]) => (value >> BigInt(bit)) & 1n).map(([, name]) => name).join(" ");
}

/** CR0 flags by name. */
export function decodeCr0(cr0: bigint): string {
  return bitNames(cr0, [
    [0, "PE"],
    [1, "MP"],
    [2, "EM"],
    [3, "TS"],
    [4, "ET"],
    [5, "NE"],
    [16, "WP"],
    [18, "AM"],
    [
      29,
      "NW",
    ],
    [30, "CD"],
    [31, "PG"],
  ]);
}

/** CR4 flags by name. */
export function decodeCr4(cr4: bigint): string {
  return bitNames(cr4, [
    [0, "VME"],
    [1, "PVI"],
    [2, "TSD"],
    [3, "DE"],
    [4, "PSE"],
    [5, "PAE"],
    [6, "MCE"],
    [7, "PGE"],
    [8, "PCE"],
    [9, "OSFXSR"],
    [10, "OSXMMEXCPT"],
    [11, "UMIP"],
    [12, "LA57"],
    [13, "VMXE"],
    [16, "FSGSBASE"],
    [17, "PCIDE"],
    [18, "OSXSAVE"],
    [20, "SMEP"],
    [21, "SMAP"],
    [22, "PKE"],
  ]);
}

/** EFER flags by name. */
export function decodeEfer(efer: bigint): string {
  return bitNames(efer, [[0, "SCE"], [8, "LME"], [10, "LMA"], [11, "NXE"], [12, "SVME"], [14, "FFXSR"]]);
}

/** The general registers, 3 per line, changed ones highlighted. */
export function formatRegisters(regs: Registers, previous: Registers | undefined, style: Style): string {
  const cells = GPR_ORDER.map((name) => {
    const text = `${name.padStart(3)} ${regs[name].toString(16).padStart(16, "0")}`;
    return previous !== undefined && previous[name] !== regs[name] ? style.yellow(style.bold(text)) : text;
  });
  const lines: string[] = [];
  for (let i = 0; i < cells.length; i += 3) lines.push(cells.slice(i, i + 3).join("  "));
  lines.push(`rflags ${regs.rflags.toString(16).padStart(8, "0")} ${decodeRflags(regs.rflags)}`);
  return lines.join("\n");
}

function formatSegment(name: string, seg: Segment): string {
  const kind = !seg.present
    ? "not present"
    : seg.s
    ? `${seg.type & 8 ? "code" : "data"}${seg.l ? " 64-bit" : seg.db ? " 32-bit" : " 16-bit"}`
    : `system type ${seg.type}`;
  return `${name.padEnd(4)} ${hex(seg.selector).padEnd(7)} base ${hex(seg.base).padEnd(12)} limit ${
    hex(seg.limit).padEnd(11)
  } dpl ${seg.dpl} ${kind}`;
}

/** Segments, descriptor tables, control registers and EFER, decoded. */
export function formatSpecialRegisters(sregs: SpecialRegisters): string {
  const lines = (["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const).map((n) => formatSegment(n, sregs[n]));
  lines.push(`gdt  base ${hex(sregs.gdt.base)} limit ${hex(sregs.gdt.limit)}`);
  lines.push(`idt  base ${hex(sregs.idt.base)} limit ${hex(sregs.idt.limit)}`);
  lines.push(`cr0  ${hex(sregs.cr0).padEnd(12)} ${decodeCr0(sregs.cr0)}`);
  lines.push(`cr2  ${hex(sregs.cr2)}`);
  lines.push(`cr3  ${hex(sregs.cr3)}`);
  lines.push(`cr4  ${hex(sregs.cr4).padEnd(12)} ${decodeCr4(sregs.cr4)}`);
  lines.push(`cr8  ${hex(sregs.cr8)}`);
  lines.push(`efer ${hex(sregs.efer).padEnd(12)} ${decodeEfer(sregs.efer)}`);
  lines.push(`apic_base ${hex(sregs.apicBase)}`);
  return lines.join("\n");
}

/** Options of the context view. */
export interface ContextOptions {
  /** Instructions shown from rip on. */
  instructions: number;
  /** Stack words shown. */
  stack: number;
  /** Show registers. */
  registers: boolean;
}

/** The view printed at every stop: reason, registers (changes highlighted), code at rip, top of the stack. */
export function formatContext(
  vm: Vm,
  stop: StopEvent | undefined,
  previous: Registers | undefined,
  options: ContextOptions,
  style: Style,
): string {
  const lines: string[] = [];
  if (stop !== undefined) lines.push(style.bold(style.cyan(`[${describeStop(stop)}]`)));
  const cpu = vm.cpu(stop?.cpu ?? 0);
  const regs = cpu.regs;
  if (options.registers) lines.push(formatRegisters(regs, previous, style));
  if (options.instructions > 0) {
    try {
      lines.push(style.dim("code:"));
      lines.push(
        vm.debug.disassemble(undefined, options.instructions).split("\n").map((l) =>
          l.startsWith("=>") ? style.green(l) : l
        ).join("\n"),
      );
    } catch (error) {
      lines.push(style.red(`  (cannot disassemble: ${(error as Error).message})`));
    }
  }
  if (options.stack > 0) {
    const width = cpu.bitness === 64 ? 8 : cpu.bitness === 32 ? 4 : 2;
    const rsp = cpu.bitness === 16 ? cpu.sregs.ss.base + (regs.rsp & 0xffffn) : regs.rsp;
    try {
      const bytes = vm.debug.readVirtual(rsp, width * options.stack, cpu);
      const view = new DataView(bytes.buffer);
      lines.push(style.dim("stack:"));
      const words: string[] = [];
      for (let i = 0; i < options.stack; i++) {
        const value = width === 8
          ? view.getBigUint64(i * 8, true)
          : BigInt(width === 4 ? view.getUint32(i * 4, true) : view.getUint16(i * 2, true));
        const symbol = vm.debug.symbolize(value);
        words.push(`  ${hex(rsp + BigInt(i * width))}: ${hex(value)}${symbol === undefined ? "" : ` <${symbol}>`}`);
      }
      lines.push(...words);
    } catch {
      lines.push(style.dim(`stack: ${hex(rsp)} not readable`));
    }
  }
  return lines.join("\n");
}

/** Bytes as a classic hexdump: address, 16 hex bytes, ASCII. */
export function hexdump(address: bigint, bytes: Uint8Array): string {
  const lines: string[] = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const row = bytes.subarray(i, i + 16);
    const hexBytes = [...row].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${(address + BigInt(i)).toString(16).padStart(16, "0")}  ${hexBytes.padEnd(47)}  ${ascii}`);
  }
  return lines.join("\n");
}

/** The parts of a gdb `/NFU` format; letters may come in any order after the count (`/4gx` = `/4xg`). */
export interface ExamineSpec {
  count?: number;
  format?: string;
  size?: string;
}

/** Parses `/NFU` (`/4xg`, `/4gx`, `/i`, `/s`, or empty); throws a SyntaxError naming the text. */
export function parseExamineSpec(spec: string): ExamineSpec {
  const match = /^\/?(\d*)([a-z]*)$/.exec(spec);
  const fail = () => {
    throw new SyntaxError(`Cannot parse examine format ${JSON.stringify(spec)}: expected /NFU, e.g. /4xg, /10i, /s`);
  };
  if (match === null) fail();
  const out: ExamineSpec = {};
  if (match![1] !== "") out.count = Number(match![1]);
  for (const letter of match![2]!) {
    if ("xduotcais".includes(letter) && out.format === undefined) out.format = letter;
    else if ("bhwg".includes(letter) && out.size === undefined) out.size = letter;
    else fail();
  }
  return out;
}

/**
 * gdb's rule for `x` without some letters: format and size stay as the last
 * `x` left them, the count is 1. Returns the spec as `/NFU`.
 */
export function mergeExamineSpec(given: string, last: string | undefined): string {
  const now = parseExamineSpec(given);
  const before = last === undefined ? {} : parseExamineSpec(last);
  const format = now.format ?? before.format ?? "x";
  const size = now.size ?? (now.format === undefined || format === before.format ? before.size : undefined) ?? "";
  return `/${now.count ?? 1}${format}${size}`;
}

/** gdb's `x/NFU`: N units of size U (b, h, w, g) in format F (x, d, u, o, t, c, a, i, s). */
export function examine(
  spec: string,
  address: bigint,
  read: (address: bigint, length: number) => Uint8Array,
  disassemble: (address: bigint, count: number) => string,
  symbolize: (address: bigint) => string | undefined,
): string {
  return examineAt(spec, address, read, undefined, disassemble, symbolize).text;
}

/** {@link examine}, also returning the address after the last unit shown (where a following `x` goes on). */
export function examineAt(
  spec: string,
  address: bigint,
  read: (address: bigint, length: number) => Uint8Array,
  instructions: ((address: bigint, count: number) => { address: bigint; length: number }[]) | undefined,
  disassemble: (address: bigint, count: number) => string,
  symbolize: (address: bigint) => string | undefined,
): { text: string; next: bigint } {
  const parsed = parseExamineSpec(spec);
  const match = ["", String(parsed.count ?? ""), parsed.format ?? "", parsed.size ?? ""];
  const count = match[1] === "" ? 1 : Number(match[1]);
  const format = match[2] === "" ? "x" : match[2]!;
  if (format === "i") {
    const decoded = instructions?.(address, count) ?? [];
    const last = decoded.at(-1);
    return {
      text: disassemble(address, count),
      next: last === undefined ? address : last.address + BigInt(last.length),
    };
  }
  if (format === "s") {
    const lines: string[] = [];
    let at = address;
    for (let n = 0; n < count; n++) {
      const bytes = read(at, 256);
      const end = bytes.indexOf(0);
      const text = new TextDecoder().decode(bytes.subarray(0, end < 0 ? 256 : end));
      lines.push(`${hex(at)}: ${JSON.stringify(text)}`);
      at += BigInt((end < 0 ? 256 : end) + 1);
    }
    return { text: lines.join("\n"), next: at };
  }
  const unit = { b: 1, h: 2, w: 4, g: 8, "": format === "a" ? 8 : format === "c" ? 1 : 4 }[match[3]!]!;
  const bytes = read(address, unit * count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const perLine = unit === 8 ? 2 : unit === 4 ? 4 : 8;
  const lines: string[] = [];
  for (let i = 0; i < count; i += perLine) {
    const cells: string[] = [];
    for (let j = i; j < Math.min(count, i + perLine); j++) {
      const raw = unit === 8 ? view.getBigUint64(j * 8, true) : BigInt(
        unit === 4 ? view.getUint32(j * 4, true) : unit === 2 ? view.getUint16(j * 2, true) : view.getUint8(j),
      );
      const bits = BigInt(unit * 8);
      const signed = BigInt.asIntN(Number(bits), raw);
      cells.push(
        format === "x"
          ? `0x${raw.toString(16).padStart(unit * 2, "0")}`
          : format === "d"
          ? signed.toString()
          : format === "u"
          ? raw.toString()
          : format === "o"
          ? `0${raw.toString(8)}`
          : format === "t"
          ? raw.toString(2).padStart(unit * 8, "0")
          : format === "c"
          ? JSON.stringify(String.fromCharCode(Number(raw & 0xffn)))
          : `${hex(raw)}${symbolize(raw) === undefined ? "" : ` <${symbolize(raw)}>`}`,
      );
    }
    const at = address + BigInt(i * unit);
    const label = symbolize(at);
    lines.push(`${hex(at)}${label === undefined ? "" : ` <${label}>`}:\t${cells.join("\t")}`);
  }
  return { text: lines.join("\n"), next: address + BigInt(unit * count) };
}
