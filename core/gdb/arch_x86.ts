/**
 * The x86-64 register layout hvsh shows GDB, and its target description
 * (`qXfer:features:read:target.xml`).
 *
 * One layout serves every CPU mode: real, 16/32-bit protected, compatibility
 * and long mode all report the same 65 registers (the 64-bit forms, like
 * QEMU's qemu-system-x86_64), so a guest that switches from real to long mode
 * never makes GDB fail with "Remote 'g' packet reply is too long".
 *
 * Registers, in `g` packet order (GDB's remote register numbers):
 *
 * | numbers | feature | registers |
 * | --- | --- | --- |
 * | 0-23 | org.gnu.gdb.i386.core | rax rbx rcx rdx rsi rdi rbp rsp r8-r15 rip eflags cs ss ds es fs gs |
 * | 24-39 | org.gnu.gdb.i386.core | st0-st7, fctrl fstat ftag fiseg fioff foseg fooff fop |
 * | 40-56 | org.gnu.gdb.i386.sse | xmm0-xmm15, mxcsr |
 * | 57-58 | org.gnu.gdb.i386.segments | fs_base gs_base |
 * | 59-64 | org.hvsh.x86.system | cr0 cr2 cr3 cr4 cr8 efer |
 *
 * Debugging 16- and 32-bit code (checked with GDB 13):
 * - With a 32-bit ELF (or a 16-bit one such as tests/guests/build/hello16.elf)
 *   run `set architecture i386:x86-64` *before* `target remote`; otherwise
 *   GDB takes i386 from the file, rejects the x86-64 description and fails
 *   with "Remote 'g' packet reply is too long" (QEMU's qemu-system-x86_64
 *   behaves the same).
 * - Registers show their 64-bit forms: `$rip` holds IP/EIP, `$cs` the
 *   selector. Memory addresses (`x`, breakpoints) are linear, as in QEMU:
 *   segment base + offset, so in real mode with CS != 0 use
 *   `x/8xb $cs*16+$rip`.
 * - `x/i` decodes as 64-bit code. `monitor disas [ADDR [COUNT]]` disassembles
 *   in the vCPU's current mode. `set architecture i8086` (or `i386`) decodes
 *   16-bit (32-bit) code only while no target is connected (e.g.
 *   `x/10i _start` on the file); set while connected, GDB warns that it "is
 *   not compatible with reported target architecture i386:x86-64" and keeps
 *   decoding as before.
 *
 * @module
 */

import { DISPLAY_REGISTER_ORDER } from "../kvm/structs.ts";

/** One register of the layout. */
export interface RegisterInfo {
  /** GDB's name (`rax`, `eflags`, `st0`, `xmm3`, `cr3`, ...). */
  readonly name: string;
  /** Size in bits (32, 64, 80 or 128). */
  readonly bits: number;
  /** GDB type in the target description. */
  readonly type: string;
  /** GDB register group, when not the feature's default. */
  readonly group?: string;
  /** The feature (target description section) it belongs to. */
  readonly feature: string;
}

/** Feature names of the target description. */
export const FEATURES = {
  core: "org.gnu.gdb.i386.core",
  sse: "org.gnu.gdb.i386.sse",
  segments: "org.gnu.gdb.i386.segments",
  system: "org.hvsh.x86.system",
} as const;

function reg(feature: string, name: string, bits: number, type: string, group?: string): RegisterInfo {
  return group === undefined ? { name, bits, type, feature } : { name, bits, type, group, feature };
}

const GPRS: readonly string[] = DISPLAY_REGISTER_ORDER.slice(0, 16);

/** The registers in GDB's remote numbering (index = register number). */
export const X86_64_REGISTERS: readonly RegisterInfo[] = [
  ...GPRS.map((name) => reg(FEATURES.core, name, 64, name === "rbp" || name === "rsp" ? "data_ptr" : "int64")),
  reg(FEATURES.core, "rip", 64, "code_ptr"),
  reg(FEATURES.core, "eflags", 32, "i386_eflags"),
  ...["cs", "ss", "ds", "es", "fs", "gs"].map((name) => reg(FEATURES.core, name, 32, "int32")),
  ...Array.from({ length: 8 }, (_, i) => reg(FEATURES.core, `st${i}`, 80, "i387_ext")),
  ...["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"].map((name) =>
    reg(FEATURES.core, name, 32, "int", "float")
  ),
  ...Array.from({ length: 16 }, (_, i) => reg(FEATURES.sse, `xmm${i}`, 128, "vec128")),
  reg(FEATURES.sse, "mxcsr", 32, "i386_mxcsr", "vector"),
  reg(FEATURES.segments, "fs_base", 64, "int"),
  reg(FEATURES.segments, "gs_base", 64, "int"),
  reg(FEATURES.system, "cr0", 64, "i386_cr0"),
  reg(FEATURES.system, "cr2", 64, "int64"),
  reg(FEATURES.system, "cr3", 64, "i386_cr3"),
  reg(FEATURES.system, "cr4", 64, "i386_cr4"),
  reg(FEATURES.system, "cr8", 64, "int64"),
  reg(FEATURES.system, "efer", 64, "i386_efer"),
];

/** Register number by name. */
export const REGISTER_NUMBERS: ReadonlyMap<string, number> = new Map(X86_64_REGISTERS.map((r, i) => [r.name, i]));

/** Bytes of a `g` reply: the same in every CPU mode (600). */
export const REGISTERS_SIZE: number = X86_64_REGISTERS.reduce((n, r) => n + r.bits / 8, 0);

/** A register's value: a bigint for integer registers, the raw little-endian bytes for st0-7 and xmm0-15. */
export type RegisterValue = bigint | Uint8Array;

/** Register values by GDB name. */
export type X86Registers = Record<string, RegisterValue>;

/** Encodes one register's value as its little-endian bytes. */
export function encodeRegister(info: RegisterInfo, value: RegisterValue): Uint8Array {
  const size = info.bits / 8;
  const out = new Uint8Array(size);
  if (value instanceof Uint8Array) {
    out.set(value.subarray(0, size));
    return out;
  }
  // One DataView store instead of a BigInt shift per byte (this runs for every expedited stop reply).
  const view = new DataView(out.buffer);
  if (size === 8) view.setBigUint64(0, BigInt.asUintN(64, value), true);
  else if (size === 4) view.setUint32(0, Number(BigInt.asUintN(32, value)), true);
  else {
    let v = BigInt.asUintN(info.bits, value);
    for (let i = 0; i < size; i++, v >>= 8n) out[i] = Number(v & 0xffn);
  }
  return out;
}

/** Decodes one register from its little-endian bytes (80- and 128-bit registers stay bytes). */
export function decodeRegister(info: RegisterInfo, bytes: Uint8Array): RegisterValue {
  if (info.bits > 64) return bytes.slice(0, info.bits / 8);
  let v = 0n;
  for (let i = info.bits / 8 - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i] ?? 0);
  return v;
}

/**
 * The `g` packet body: every register in order.
 *
 * @example
 * ```ts
 * import { encodeRegisters, REGISTERS_SIZE } from "./arch_x86.ts";
 * encodeRegisters({ rax: 1n }).length === REGISTERS_SIZE; // true (missing registers are zero)
 * ```
 */
export function encodeRegisters(values: X86Registers): Uint8Array {
  // Stored in place, not through encodeRegister's array per register: a `g` reply took ~30 µs that way here.
  const out = new Uint8Array(REGISTERS_SIZE);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const info of X86_64_REGISTERS) {
    const size = info.bits / 8;
    const value = values[info.name] ?? 0n;
    if (value instanceof Uint8Array) out.set(value.subarray(0, size), at);
    else if (size === 8) view.setBigUint64(at, BigInt.asUintN(64, value), true);
    else if (size === 4) view.setUint32(at, Number(BigInt.asUintN(32, value)), true);
    else out.set(encodeRegister(info, value), at);
    at += size;
  }
  return out;
}

/** Splits a `G` packet body into registers; throws a RangeError when its size is not {@link REGISTERS_SIZE}. */
export function decodeRegisters(bytes: Uint8Array): X86Registers {
  if (bytes.length !== REGISTERS_SIZE) {
    throw new RangeError(`Cannot write registers: got ${bytes.length} bytes, want ${REGISTERS_SIZE}`);
  }
  const values: X86Registers = {};
  let at = 0;
  for (const info of X86_64_REGISTERS) {
    const size = info.bits / 8;
    values[info.name] = decodeRegister(info, bytes.subarray(at, at + size));
    at += size;
  }
  return values;
}

function flags(id: string, size: number, fields: [string, number, number?][]): string {
  const lines = fields.map(([name, start, end]) =>
    `    <field name="${name}" start="${start}" end="${end ?? start}"/>`
  );
  return `  <flags id="${id}" size="${size}">\n${lines.join("\n")}\n  </flags>`;
}

function regXml(info: RegisterInfo, regnum: number): string {
  const group = info.group === undefined ? "" : ` group="${info.group}"`;
  return `  <reg name="${info.name}" bitsize="${info.bits}" type="${info.type}" regnum="${regnum}"${group}/>`;
}

function featureXml(name: string, types: string[]): string {
  const regs = X86_64_REGISTERS.map((info, i) => info.feature === name ? regXml(info, i) : undefined).filter((s) =>
    s !== undefined
  );
  return `<feature name="${name}">\n${[...types, ...regs].join("\n")}\n</feature>`;
}

const EFLAGS: [string, number][] = [
  ["CF", 0],
  ["", 1],
  ["PF", 2],
  ["AF", 4],
  ["ZF", 6],
  ["SF", 7],
  ["TF", 8],
  ["IF", 9],
  ["DF", 10],
  ["OF", 11],
  ["NT", 14],
  ["RF", 16],
  ["VM", 17],
  ["AC", 18],
  ["VIF", 19],
  ["VIP", 20],
  ["ID", 21],
];

const MXCSR: [string, number][] = [
  ["IE", 0],
  ["DE", 1],
  ["ZE", 2],
  ["OE", 3],
  ["UE", 4],
  ["PE", 5],
  ["DAZ", 6],
  ["IM", 7],
  ["DM", 8],
  ["ZM", 9],
  ["OM", 10],
  ["UM", 11],
  ["PM", 12],
  ["FZ", 15],
];

const VECTOR_TYPES = [
  `  <vector id="v4f" type="ieee_single" count="4"/>`,
  `  <vector id="v2d" type="ieee_double" count="2"/>`,
  `  <vector id="v16i8" type="int8" count="16"/>`,
  `  <vector id="v8i16" type="int16" count="8"/>`,
  `  <vector id="v4i32" type="int32" count="4"/>`,
  `  <vector id="v2i64" type="int64" count="2"/>`,
  `  <union id="vec128">`,
  `    <field name="v4_float" type="v4f"/>`,
  `    <field name="v2_double" type="v2d"/>`,
  `    <field name="v16_int8" type="v16i8"/>`,
  `    <field name="v8_int16" type="v8i16"/>`,
  `    <field name="v4_int32" type="v4i32"/>`,
  `    <field name="v2_int64" type="v2i64"/>`,
  `    <field name="uint128" type="uint128"/>`,
  `  </union>`,
];

const SYSTEM_TYPES = [
  flags("i386_cr0", 8, [
    ["PE", 0],
    ["MP", 1],
    ["EM", 2],
    ["TS", 3],
    ["ET", 4],
    ["NE", 5],
    ["WP", 16],
    ["AM", 18],
    [
      "NW",
      29,
    ],
    ["CD", 30],
    ["PG", 31],
  ]),
  flags("i386_cr3", 8, [["PWT", 3], ["PCD", 4]]),
  flags("i386_cr4", 8, [
    ["VME", 0],
    ["PVI", 1],
    ["TSD", 2],
    ["DE", 3],
    ["PSE", 4],
    ["PAE", 5],
    ["MCE", 6],
    ["PGE", 7],
    ["PCE", 8],
    ["OSFXSR", 9],
    ["OSXMMEXCPT", 10],
    ["UMIP", 11],
    ["LA57", 12],
    ["VMXE", 13],
    ["SMXE", 14],
    ["FSGSBASE", 16],
    ["PCIDE", 17],
    ["OSXSAVE", 18],
    ["SMEP", 20],
    ["SMAP", 21],
    ["PKE", 22],
  ]),
  flags("i386_efer", 8, [["SCE", 0], ["LME", 8], ["LMA", 10], ["NXE", 11], ["SVME", 12], ["LMSLE", 13], ["FFXSR", 14]]),
];

/**
 * The target description GDB reads with `qXfer:features:read:target.xml`.
 *
 * @example
 * ```ts
 * import { targetXml } from "./arch_x86.ts";
 * targetXml().includes("<architecture>i386:x86-64</architecture>"); // true
 * ```
 */
export function targetXml(): string {
  return [
    `<?xml version="1.0"?>`,
    `<!DOCTYPE target SYSTEM "gdb-target.dtd">`,
    `<target version="1.0">`,
    `<architecture>i386:x86-64</architecture>`,
    featureXml(FEATURES.core, [flags("i386_eflags", 4, EFLAGS)]),
    featureXml(FEATURES.sse, [...VECTOR_TYPES, flags("i386_mxcsr", 4, MXCSR)]),
    featureXml(FEATURES.segments, []),
    featureXml(FEATURES.system, SYSTEM_TYPES),
    `</target>`,
    ``,
  ].join("\n");
}

/** The documents served by `qXfer:features:read`, by annex. */
export const TARGET_DOCUMENTS: ReadonlyMap<string, string> = new Map([["target.xml", targetXml()]]);

// ---------------------------------------------------------------- x87 tag word

/**
 * The full x87 tag word (2 bits per physical register: 0 valid, 1 zero,
 * 2 special, 3 empty) from FXSAVE's abridged one (1 bit: not empty), the
 * status word (TOP) and the registers in stack order, as GDB's `ftag` shows it.
 */
export function fullTagWord(abridged: number, fsw: number, st: readonly Uint8Array[]): number {
  const top = (fsw >> 11) & 7;
  let tag = 0;
  for (let physical = 0; physical < 8; physical++) {
    let t = 3;
    if (abridged & (1 << physical)) {
      const raw = st[(physical - top + 8) & 7] ?? new Uint8Array(10);
      const exponent = ((raw[9] ?? 0) << 8 | (raw[8] ?? 0)) & 0x7fff;
      const integer = ((raw[7] ?? 0) & 0x80) !== 0;
      const fractionZero = raw.subarray(0, 8).every((b, i) => (i === 7 ? b & 0x7f : b) === 0);
      if (exponent === 0x7fff) t = 2;
      else if (exponent === 0) t = fractionZero && !integer ? 1 : 2;
      else t = integer ? 0 : 2;
    }
    tag |= t << (physical * 2);
  }
  return tag;
}

/** FXSAVE's abridged tag byte from a full tag word (a register is in use unless its tag is 3). */
export function abridgedTagWord(full: number): number {
  let abridged = 0;
  for (let physical = 0; physical < 8; physical++) {
    if (((full >> (physical * 2)) & 3) !== 3) abridged |= 1 << physical;
  }
  return abridged;
}
