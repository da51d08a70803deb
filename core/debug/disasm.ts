/**
 * Disassembly with the npm package iced-x86 (Rust compiled to wasm). It is
 * loaded on first use with a synchronous require (~20 ms, plus Node
 * compatibility's first use), so `hvsh` starts without paying for it and
 * disassembly stays a synchronous call.
 *
 * @module
 */

type Iced = typeof import("npm:iced-x86@1.21.0");
let iced: Iced | undefined;

/** Deno's Node-compatible `process`, reached only here so start-up never pays for Node compatibility (~15 ms). */
interface NodeProcess {
  getBuiltinModule(name: "node:module"): typeof import("node:module");
}

function loadIced(): Iced {
  if (iced !== undefined) return iced;
  const process = (globalThis as unknown as { process: NodeProcess }).process;
  return iced = process.getBuiltinModule("node:module").createRequire(import.meta.url)("iced-x86") as Iced;
}

/** One decoded instruction. */
export interface DecodedInstruction {
  address: bigint;
  bytes: Uint8Array;
  length: number;
  /** Intel syntax; branch targets annotated with `<symbol+offset>` when known. */
  text: string;
  /** A near or far call. */
  isCall: boolean;
  /** Has a rep/repe/repne prefix on a string instruction. */
  isRep: boolean;
  /** A return instruction. */
  isReturn: boolean;
  /** Direct branch target, if any. */
  target?: bigint;
  /** Decoding failed (bytes are not a valid instruction). */
  invalid: boolean;
  /** Has an explicit memory operand or is a string instruction. */
  accessesMemory: boolean;
  /** The address a memory operand names outright (absolute or rip-relative), if any. */
  memoryAddress?: bigint;
}

/**
 * Decodes up to `count` instructions from `bytes` starting at `address`.
 * `symbolize` turns addresses into names for annotations.
 *
 * @example
 * ```ts
 * import { decodeInstructions } from "./disasm.ts";
 * const [push] = decodeInstructions(new Uint8Array([0x55, 0xc3]), 0x1000n, 64, 1);
 * push!.text; // "push rbp"
 * ```
 */
export function decodeInstructions(
  bytes: Uint8Array,
  address: bigint,
  bitness: 16 | 32 | 64,
  count: number,
  symbolize?: (address: bigint) => string | undefined,
): DecodedInstruction[] {
  const x86 = loadIced();
  const decoder = new x86.Decoder(bitness, bytes, x86.DecoderOptions.None);
  decoder.ip = address;
  const formatter = new x86.Formatter(x86.FormatterSyntax.Intel);
  formatter.hexPrefix = "0x";
  formatter.hexSuffix = "";
  formatter.uppercaseHex = false;
  formatter.leadingZeros = false;
  formatter.branchLeadingZeros = false;
  formatter.spaceAfterOperandSeparator = true;
  const out: DecodedInstruction[] = [];
  try {
    while (decoder.canDecode && out.length < count) {
      const instruction = decoder.decode();
      try {
        const offset = Number(instruction.ip - address);
        const invalid = instruction.isInvalid;
        const length = instruction.length;
        if (invalid && offset + length > bytes.length) break; // ran off the end of the bytes
        const flow = instruction.flowControl;
        let target: bigint | undefined;
        if (
          flow === x86.FlowControl.Call || flow === x86.FlowControl.UnconditionalBranch ||
          flow === x86.FlowControl.ConditionalBranch
        ) {
          const kind = instruction.op0Kind;
          if (
            kind === x86.OpKind.NearBranch16 || kind === x86.OpKind.NearBranch32 || kind === x86.OpKind.NearBranch64
          ) {
            target = instruction.nearBranchTarget;
          }
        }
        let text = invalid ? "(bad)" : formatter.format(instruction);
        const name = target === undefined ? undefined : symbolize?.(target);
        if (name !== undefined) text += ` <${name}>`;
        const data = invalid ? undefined : absoluteMemoryOperand(x86, instruction);
        const entry: DecodedInstruction = {
          address: instruction.ip,
          bytes: bytes.slice(offset, offset + length),
          length,
          text,
          isCall: flow === x86.FlowControl.Call || flow === x86.FlowControl.IndirectCall,
          isRep: (instruction.hasRepPrefix || instruction.hasRepePrefix || instruction.hasRepnePrefix) &&
            instruction.isStringInstruction,
          isReturn: flow === x86.FlowControl.Return,
          invalid,
          accessesMemory: instruction.isStringInstruction ||
            Array.from({ length: instruction.opCount }, (_, i) => instruction.opKind(i)).includes(x86.OpKind.Memory),
        };
        if (target !== undefined) entry.target = target;
        if (data !== undefined) entry.memoryAddress = data;
        out.push(entry);
      } finally {
        instruction.free();
      }
    }
  } finally {
    decoder.free();
    formatter.free();
  }
  return out;
}

/** A memory access an instruction makes, as its operands describe it (before the instruction runs). */
export interface MemoryAccess {
  /** Conditional accesses (a `rep` with rcx 0, cmov) count as the access they may make. */
  kind: "read" | "write" | "read-write";
  /** Lower-case register names (`rsp`, `ebx`, `r8d`), undefined when the operand has none. */
  base: string | undefined;
  index: string | undefined;
  scale: number;
  /** A RIP-relative operand's displacement is already the absolute address (with no base). */
  displacement: bigint;
  /** Bytes accessed; 0 when the operand's size varies (string instructions take it from the instruction). */
  size: number;
  /** The segment register whose base applies (`fs`, `gs`; others are flat in long mode). */
  segment: string | undefined;
}

/** What {@link decodeAccesses} finds in one instruction. */
export interface InstructionAccesses {
  address: bigint;
  length: number;
  text: string;
  accesses: MemoryAccess[];
  /** How the instruction moves the stack pointer (push: -8 in 64-bit mode; 0 for most). */
  stackPointerIncrement: number;
  /** A string instruction (movs, stos...); `elementSize` is its element's size. */
  isString: boolean;
  elementSize: number;
  isCall: boolean;
}

/**
 * Decodes the instruction at the start of `bytes` and lists its memory
 * accesses; undefined when the bytes are not a valid instruction.
 *
 * @example
 * ```ts
 * import { decodeAccesses } from "./disasm.ts";
 * const push = decodeAccesses(new Uint8Array([0x50]), 0x1000n, 64)!; // push rax
 * push.accesses[0]!.base; // "rsp"
 * push.stackPointerIncrement; // -8
 * ```
 */
export function decodeAccesses(
  bytes: Uint8Array,
  address: bigint,
  bitness: 16 | 32 | 64,
): InstructionAccesses | undefined {
  const x86 = loadIced();
  const decoder = new x86.Decoder(bitness, bytes, x86.DecoderOptions.None);
  decoder.ip = address;
  const factory = new x86.InstructionInfoFactory();
  const formatter = new x86.Formatter(x86.FormatterSyntax.Intel);
  const instruction = decoder.decode();
  try {
    if (instruction.isInvalid || instruction.length > bytes.length) return undefined;
    const info = factory.info(instruction);
    const register = (value: number) =>
      value === x86.Register.None ? undefined : (x86.Register[value] as string).toLowerCase();
    const kinds: Partial<Record<number, MemoryAccess["kind"]>> = {
      [x86.OpAccess.Read]: "read",
      [x86.OpAccess.CondRead]: "read",
      [x86.OpAccess.Write]: "write",
      [x86.OpAccess.CondWrite]: "write",
      [x86.OpAccess.ReadWrite]: "read-write",
      [x86.OpAccess.ReadCondWrite]: "read-write",
    };
    const accesses: MemoryAccess[] = [];
    for (const used of info.usedMemory() as InstanceType<Iced["UsedMemory"]>[]) {
      try {
        const kind = kinds[used.access];
        if (kind === undefined) continue;
        const segment = register(used.segment);
        accesses.push({
          kind,
          base: register(used.base),
          index: register(used.index),
          scale: used.scale,
          displacement: used.displacement,
          size: x86.MemorySizeExt.size(used.memorySize),
          segment: segment === "fs" || segment === "gs" ? segment : undefined,
        });
      } finally {
        used.free();
      }
    }
    info.free();
    const flow = instruction.flowControl;
    return {
      address,
      length: instruction.length,
      text: formatter.format(instruction),
      accesses,
      stackPointerIncrement: instruction.stackPointerIncrement,
      isString: instruction.isStringInstruction,
      elementSize: x86.MemorySizeExt.size(instruction.memorySize),
      isCall: flow === x86.FlowControl.Call || flow === x86.FlowControl.IndirectCall,
    };
  } finally {
    instruction.free();
    decoder.free();
    factory.free();
    formatter.free();
  }
}

/** The address of a memory operand that names one outright (absolute or rip-relative), else undefined. */
function absoluteMemoryOperand(x86: Iced, instruction: import("npm:iced-x86@1.21.0").Instruction): bigint | undefined {
  let memory = false;
  for (let i = 0; i < instruction.opCount && !memory; i++) memory = instruction.opKind(i) === x86.OpKind.Memory;
  if (!memory || instruction.memoryIndex !== x86.Register.None) return undefined;
  const base = instruction.memoryBase;
  if (base !== x86.Register.None && base !== x86.Register.RIP && base !== x86.Register.EIP) return undefined;
  return instruction.memoryDisplacementU64;
}

/** `mov rax, [0x1001d8]` -> `mov rax, [0x1001d8 <ticks>]` when the operand's address has a symbol. */
function withDataSymbol(insn: DecodedInstruction, symbolize?: (address: bigint) => string | undefined): string {
  const address = insn.memoryAddress;
  const name = address === undefined ? undefined : symbolize?.(address);
  if (name === undefined) return insn.text;
  const literal = `[0x${address!.toString(16)}]`;
  return insn.text.replace(literal, `[0x${address!.toString(16)} <${name}>]`);
}

/** What {@link formatListing} needs besides the instructions. */
export interface ListingOptions {
  /** The address marked `=>` (the vCPU's rip). */
  current?: bigint;
  /** `symbol+offset` of an address, or undefined. */
  symbolize?: (address: bigint) => string | undefined;
}

/**
 * A disassembly listing with aligned columns: `=>` at the current
 * instruction, the address and its symbol, the bytes, the text (with the
 * symbol of a memory operand's address: `mov rax, [0x1001d8 <ticks>]`).
 *
 * @example
 * ```ts
 * import { decodeInstructions, formatListing } from "./disasm.ts";
 * const code = decodeInstructions(new Uint8Array([0x55, 0x48, 0x89, 0xe5]), 0x1000n, 64, 2);
 * formatListing(code, { current: 0x1000n });
 * // "=> 0x1000: 55        push rbp\n   0x1001: 48 89 e5  mov rbp, rsp"
 * ```
 */
export function formatListing(instructions: readonly DecodedInstruction[], options: ListingOptions = {}): string {
  const rows = instructions.map((insn) => {
    const symbol = options.symbolize?.(insn.address);
    return {
      marker: insn.address === options.current ? "=> " : "   ",
      where: `0x${insn.address.toString(16)}${symbol === undefined ? "" : ` <${symbol}>`}:`,
      bytes: [...insn.bytes].map((b) => b.toString(16).padStart(2, "0")).join(" "),
      text: withDataSymbol(insn, options.symbolize),
    };
  });
  const whereWidth = Math.max(0, ...rows.map((r) => r.where.length));
  const bytesWidth = Math.max(0, ...rows.map((r) => r.bytes.length));
  return rows.map((r) => `${r.marker}${r.where.padEnd(whereWidth)} ${r.bytes.padEnd(bytesWidth)}  ${r.text}`)
    .join("\n");
}
