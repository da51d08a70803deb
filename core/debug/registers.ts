/**
 * Register names as gdb and the Intel manuals spell them: the 64-bit
 * registers and their 32/16/8-bit parts (`eax`, `ax`, `al`, `ah`, `r8d`,
 * `r8w`, `r8b`), `eip`/`ip`, `eflags`, the control registers, EFER and the
 * segment selectors and bases.
 *
 * @module
 */

import { REGISTER_NAMES, type RegisterName, type Registers, type SpecialRegisters } from "../kvm/structs.ts";

/** Where a register name reads from: the 64-bit register, and the bits of it. */
interface RegisterPart {
  full: RegisterName;
  shift: bigint;
  bits: bigint;
}

const LEGACY: Record<string, RegisterName> = { a: "rax", b: "rbx", c: "rcx", d: "rdx" };
const INDEX: Record<string, RegisterName> = { si: "rsi", di: "rdi", bp: "rbp", sp: "rsp" };

const PARTS = new Map<string, RegisterPart>();
for (const name of REGISTER_NAMES) PARTS.set(name, { full: name, shift: 0n, bits: 64n });
for (const [letter, full] of Object.entries(LEGACY)) {
  PARTS.set(`e${letter}x`, { full, shift: 0n, bits: 32n });
  PARTS.set(`${letter}x`, { full, shift: 0n, bits: 16n });
  PARTS.set(`${letter}l`, { full, shift: 0n, bits: 8n });
  PARTS.set(`${letter}h`, { full, shift: 8n, bits: 8n });
}
for (const [short, full] of Object.entries(INDEX)) {
  PARTS.set(`e${short}`, { full, shift: 0n, bits: 32n });
  PARTS.set(short, { full, shift: 0n, bits: 16n });
  PARTS.set(`${short}l`, { full, shift: 0n, bits: 8n });
}
for (let n = 8; n <= 15; n++) {
  const full = `r${n}` as RegisterName;
  PARTS.set(`r${n}d`, { full, shift: 0n, bits: 32n });
  PARTS.set(`r${n}w`, { full, shift: 0n, bits: 16n });
  PARTS.set(`r${n}b`, { full, shift: 0n, bits: 8n });
  PARTS.set(`r${n}l`, { full, shift: 0n, bits: 8n });
}
PARTS.set("eip", { full: "rip", shift: 0n, bits: 32n });
PARTS.set("ip", { full: "rip", shift: 0n, bits: 16n });
PARTS.set("pc", { full: "rip", shift: 0n, bits: 64n });
PARTS.set("eflags", { full: "rflags", shift: 0n, bits: 32n });

const SPECIAL = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"] as const;
const SEGMENTS = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;

/** Every register name {@link readRegister} knows, for completion and error messages. */
export const ALL_REGISTER_NAMES: readonly string[] = [
  ...PARTS.keys(),
  ...SPECIAL,
  ...SEGMENTS,
  ...SEGMENTS.map((s) => `${s}_base`),
  "fs_base",
  "gs_base",
].filter((name, i, all) => all.indexOf(name) === i);

/** Whether `name` (lower case, no `$`) names a general register or a part of one, which {@link writeRegister} can set. */
export function isWritableRegister(name: string): boolean {
  return PARTS.has(name.toLowerCase());
}

/**
 * Reads a register by name (`rax`, `eax`, `al`, `ah`, `r8d`, `eflags`,
 * `cr3`, `efer`, `cs`, `fs_base`, ...), or undefined for an unknown name.
 *
 * @example
 * ```ts
 * import { readRegister } from "./registers.ts";
 * const regs = { rax: 0x1122334455667788n } as never;
 * readRegister("ah", regs, {} as never); // 0x77n
 * ```
 */
export function readRegister(
  name: string,
  regs: Readonly<Registers>,
  sregs: Readonly<SpecialRegisters> | (() => Readonly<SpecialRegisters>),
): bigint | undefined {
  const lower = name.toLowerCase();
  const part = PARTS.get(lower);
  if (part !== undefined) return (regs[part.full] >> part.shift) & ((1n << part.bits) - 1n);
  const special = typeof sregs === "function" ? () => sregs() : () => sregs;
  switch (lower) {
    case "cr0":
    case "cr2":
    case "cr3":
    case "cr4":
    case "cr8":
    case "efer":
      return special()[lower];
    case "apic_base":
      return special().apicBase;
  }
  if ((SEGMENTS as readonly string[]).includes(lower)) {
    return BigInt(special()[lower as typeof SEGMENTS[number]].selector);
  }
  const base = /^([a-z]+)_base$/.exec(lower);
  if (base !== null && (SEGMENTS as readonly string[]).includes(base[1]!)) {
    return special()[base[1] as typeof SEGMENTS[number]].base;
  }
  return undefined;
}

/**
 * The 64-bit register values after writing `value` into the register or
 * register part `name` (`eax` zero-extends into rax as the CPU does; `ax`,
 * `al` and `ah` keep the other bits). Throws a RangeError for a name that is
 * not a general register.
 */
export function writeRegister(name: string, value: bigint, regs: Readonly<Registers>): Partial<Registers> {
  const part = PARTS.get(name.toLowerCase());
  if (part === undefined) {
    throw new RangeError(
      `Cannot set register ${JSON.stringify(name)}: only general registers and their parts can be set`,
    );
  }
  const mask = ((1n << part.bits) - 1n) << part.shift;
  const field = (BigInt.asUintN(Number(part.bits), value)) << part.shift;
  // A 32-bit write to a general register clears the upper half, as on the CPU.
  const kept = part.bits === 32n && part.full !== "rflags" ? 0n : regs[part.full] & ~mask;
  return { [part.full]: BigInt.asUintN(64, kept | field) };
}
