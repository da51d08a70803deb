/**
 * KVM struct layouts for x86-64, encoded and decoded to plain objects.
 * Offsets and sizes were checked against `<linux/kvm.h>` with a C program
 * (`offsetof`/`sizeof`); each size constant below is the C `sizeof`.
 *
 * @module
 */

/** General-purpose registers in `struct kvm_regs` order. */
export const REGISTER_NAMES = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
  "rflags",
] as const;

/** Name of a general-purpose register. */
export type RegisterName = typeof REGISTER_NAMES[number];

/**
 * The general registers in the x86 convention gdb, QEMU and the REPL show
 * (rbp before rsp), rip last; rflags is not included.
 */
export const DISPLAY_REGISTER_ORDER = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rbp",
  "rsp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
] as const satisfies readonly RegisterName[];

/** `struct kvm_regs`: every value a 64-bit bigint. */
export type Registers = Record<RegisterName, bigint>;

/** sizeof(struct kvm_regs). */
export const KVM_REGS_SIZE = 144;

/** Decodes `struct kvm_regs`. */
export function decodeRegs(bytes: Uint8Array): Registers {
  const view = new DataView(bytes.buffer, bytes.byteOffset, KVM_REGS_SIZE);
  const regs = {} as Registers;
  REGISTER_NAMES.forEach((name, i) => regs[name] = view.getBigUint64(i * 8, true));
  return regs;
}

/** Encodes `struct kvm_regs`. */
export function encodeRegs(regs: Registers): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(KVM_REGS_SIZE);
  const view = new DataView(bytes.buffer);
  REGISTER_NAMES.forEach((name, i) => view.setBigUint64(i * 8, BigInt.asUintN(64, regs[name]), true));
  return bytes;
}

/** `struct kvm_segment`: a segment register with its hidden descriptor cache. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  /** Descriptor type field (e.g. 0xb: code, execute/read, accessed). */
  type: number;
  present: boolean;
  dpl: number;
  /** Default operation size: true for 32-bit code/stack. */
  db: boolean;
  /** Code/data (true) or system (false) descriptor. */
  s: boolean;
  /** 64-bit code segment. */
  l: boolean;
  /** Limit granularity in 4 KiB pages. */
  g: boolean;
  avl: boolean;
  unusable: boolean;
}

/** `struct kvm_dtable`: GDTR or IDTR. */
export interface DescriptorTable {
  base: bigint;
  limit: number;
}

/** Segment registers in `struct kvm_sregs` order. */
export const SEGMENT_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
/** Name of a segment register. */
export type SegmentName = typeof SEGMENT_NAMES[number];

/** `struct kvm_sregs`. */
export interface SpecialRegisters extends Record<SegmentName, Segment> {
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** Pending external interrupt bitmap (256 bits as four u64). */
  interruptBitmap: bigint[];
}

/** sizeof(struct kvm_sregs). */
export const KVM_SREGS_SIZE = 312;
const SEGMENT_SIZE = 24;

function decodeSegment(view: DataView, at: number): Segment {
  return {
    base: view.getBigUint64(at, true),
    limit: view.getUint32(at + 8, true),
    selector: view.getUint16(at + 12, true),
    type: view.getUint8(at + 14),
    present: view.getUint8(at + 15) !== 0,
    dpl: view.getUint8(at + 16),
    db: view.getUint8(at + 17) !== 0,
    s: view.getUint8(at + 18) !== 0,
    l: view.getUint8(at + 19) !== 0,
    g: view.getUint8(at + 20) !== 0,
    avl: view.getUint8(at + 21) !== 0,
    unusable: view.getUint8(at + 22) !== 0,
  };
}

function encodeSegment(view: DataView, at: number, seg: Segment): void {
  view.setBigUint64(at, BigInt.asUintN(64, seg.base), true);
  view.setUint32(at + 8, seg.limit >>> 0, true);
  view.setUint16(at + 12, seg.selector, true);
  view.setUint8(at + 14, seg.type);
  view.setUint8(at + 15, seg.present ? 1 : 0);
  view.setUint8(at + 16, seg.dpl);
  view.setUint8(at + 17, seg.db ? 1 : 0);
  view.setUint8(at + 18, seg.s ? 1 : 0);
  view.setUint8(at + 19, seg.l ? 1 : 0);
  view.setUint8(at + 20, seg.g ? 1 : 0);
  view.setUint8(at + 21, seg.avl ? 1 : 0);
  view.setUint8(at + 22, seg.unusable ? 1 : 0);
}

/** Decodes `struct kvm_sregs`. */
export function decodeSregs(bytes: Uint8Array): SpecialRegisters {
  const view = new DataView(bytes.buffer, bytes.byteOffset, KVM_SREGS_SIZE);
  const out = {} as SpecialRegisters;
  SEGMENT_NAMES.forEach((name, i) => out[name] = decodeSegment(view, i * SEGMENT_SIZE));
  out.gdt = { base: view.getBigUint64(192, true), limit: view.getUint16(200, true) };
  out.idt = { base: view.getBigUint64(208, true), limit: view.getUint16(216, true) };
  out.cr0 = view.getBigUint64(224, true);
  out.cr2 = view.getBigUint64(232, true);
  out.cr3 = view.getBigUint64(240, true);
  out.cr4 = view.getBigUint64(248, true);
  out.cr8 = view.getBigUint64(256, true);
  out.efer = view.getBigUint64(264, true);
  out.apicBase = view.getBigUint64(272, true);
  out.interruptBitmap = [0, 1, 2, 3].map((i) => view.getBigUint64(280 + i * 8, true));
  return out;
}

/** Encodes `struct kvm_sregs`. */
export function encodeSregs(sregs: SpecialRegisters): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(KVM_SREGS_SIZE);
  const view = new DataView(bytes.buffer);
  SEGMENT_NAMES.forEach((name, i) => encodeSegment(view, i * SEGMENT_SIZE, sregs[name]));
  view.setBigUint64(192, BigInt.asUintN(64, sregs.gdt.base), true);
  view.setUint16(200, sregs.gdt.limit, true);
  view.setBigUint64(208, BigInt.asUintN(64, sregs.idt.base), true);
  view.setUint16(216, sregs.idt.limit, true);
  view.setBigUint64(224, sregs.cr0, true);
  view.setBigUint64(232, sregs.cr2, true);
  view.setBigUint64(240, sregs.cr3, true);
  view.setBigUint64(248, sregs.cr4, true);
  view.setBigUint64(256, sregs.cr8, true);
  view.setBigUint64(264, sregs.efer, true);
  view.setBigUint64(272, sregs.apicBase, true);
  sregs.interruptBitmap.forEach((word, i) => view.setBigUint64(280 + i * 8, word, true));
  return bytes;
}

/** `struct kvm_fpu`: x87 and SSE state. */
export interface FpuState {
  /** Eight x87 registers, 10 significant bytes each (ST order as KVM stores them). */
  fpr: Uint8Array[];
  fcw: number;
  fsw: number;
  /** Abridged tag word. */
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  /** Sixteen 16-byte XMM registers. */
  xmm: Uint8Array[];
  mxcsr: number;
}

/** sizeof(struct kvm_fpu). */
export const KVM_FPU_SIZE = 416;

/** Decodes `struct kvm_fpu`. */
export function decodeFpu(bytes: Uint8Array): FpuState {
  const view = new DataView(bytes.buffer, bytes.byteOffset, KVM_FPU_SIZE);
  const at = bytes.byteOffset;
  return {
    fpr: Array.from({ length: 8 }, (_, i) => bytes.slice(i * 16, i * 16 + 10)),
    fcw: view.getUint16(128, true),
    fsw: view.getUint16(130, true),
    ftwx: view.getUint8(132),
    lastOpcode: view.getUint16(134, true),
    lastIp: view.getBigUint64(136, true),
    lastDp: view.getBigUint64(144, true),
    xmm: Array.from({ length: 16 }, (_, i) => new Uint8Array(bytes.buffer.slice(at + 152 + i * 16, at + 168 + i * 16))),
    mxcsr: view.getUint32(408, true),
  };
}

/** Encodes `struct kvm_fpu`. */
export function encodeFpu(fpu: FpuState): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(KVM_FPU_SIZE);
  const view = new DataView(bytes.buffer);
  fpu.fpr.forEach((reg, i) => bytes.set(reg.subarray(0, 10), i * 16));
  view.setUint16(128, fpu.fcw, true);
  view.setUint16(130, fpu.fsw, true);
  view.setUint8(132, fpu.ftwx);
  view.setUint16(134, fpu.lastOpcode, true);
  view.setBigUint64(136, fpu.lastIp, true);
  view.setBigUint64(144, fpu.lastDp, true);
  fpu.xmm.forEach((reg, i) => bytes.set(reg.subarray(0, 16), 152 + i * 16));
  view.setUint32(408, fpu.mxcsr, true);
  return bytes;
}

/** `struct kvm_debugregs`. */
export interface DebugRegisters {
  /** DR0-DR3. */
  db: bigint[];
  dr6: bigint;
  dr7: bigint;
}

/** sizeof(struct kvm_debugregs). */
export const KVM_DEBUGREGS_SIZE = 128;

/** Decodes `struct kvm_debugregs`. */
export function decodeDebugRegs(bytes: Uint8Array): DebugRegisters {
  const view = new DataView(bytes.buffer, bytes.byteOffset, KVM_DEBUGREGS_SIZE);
  return {
    db: [0, 1, 2, 3].map((i) => view.getBigUint64(i * 8, true)),
    dr6: view.getBigUint64(32, true),
    dr7: view.getBigUint64(40, true),
  };
}

/** Encodes `struct kvm_debugregs`. */
export function encodeDebugRegs(regs: DebugRegisters): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(KVM_DEBUGREGS_SIZE);
  const view = new DataView(bytes.buffer);
  regs.db.forEach((value, i) => view.setBigUint64(i * 8, value, true));
  view.setBigUint64(32, regs.dr6, true);
  view.setBigUint64(40, regs.dr7, true);
  return bytes;
}

/** sizeof(struct kvm_guest_debug). */
export const KVM_GUEST_DEBUG_SIZE = 72;

/** Encodes `struct kvm_guest_debug` (control flags and DR0-3, DR6, DR7 in `debugreg[8]`). */
export function encodeGuestDebug(control: number, debugreg: readonly bigint[]): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(KVM_GUEST_DEBUG_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, control, true);
  debugreg.slice(0, 8).forEach((value, i) => view.setBigUint64(8 + i * 8, value, true));
  return bytes;
}

/** One `struct kvm_cpuid_entry2`. */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** sizeof(struct kvm_cpuid_entry2). */
export const KVM_CPUID_ENTRY2_SIZE = 40;

/** Decodes `struct kvm_cpuid2` with its entries. */
export function decodeCpuid(bytes: Uint8Array): CpuidEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  const entries: CpuidEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 8 + i * KVM_CPUID_ENTRY2_SIZE;
    entries.push({
      function: view.getUint32(at, true),
      index: view.getUint32(at + 4, true),
      flags: view.getUint32(at + 8, true),
      eax: view.getUint32(at + 12, true),
      ebx: view.getUint32(at + 16, true),
      ecx: view.getUint32(at + 20, true),
      edx: view.getUint32(at + 24, true),
    });
  }
  return entries;
}

/** Encodes `struct kvm_cpuid2` with its entries. */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(8 + entries.length * KVM_CPUID_ENTRY2_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const at = 8 + i * KVM_CPUID_ENTRY2_SIZE;
    view.setUint32(at, e.function, true);
    view.setUint32(at + 4, e.index, true);
    view.setUint32(at + 8, e.flags, true);
    view.setUint32(at + 12, e.eax >>> 0, true);
    view.setUint32(at + 16, e.ebx >>> 0, true);
    view.setUint32(at + 20, e.ecx >>> 0, true);
    view.setUint32(at + 24, e.edx >>> 0, true);
  });
  return bytes;
}

/** Encodes `struct kvm_msrs` with `{index, data}` entries (16 bytes each after an 8-byte header). */
export function encodeMsrs(entries: readonly { index: number; data: bigint }[]): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(8 + entries.length * 16);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    view.setUint32(8 + i * 16, e.index, true);
    view.setBigUint64(8 + i * 16 + 8, BigInt.asUintN(64, e.data), true);
  });
  return bytes;
}

/** Decodes the data fields of `struct kvm_msrs`. */
export function decodeMsrs(bytes: Uint8Array): { index: number; data: bigint }[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  return Array.from({ length: count }, (_, i) => ({
    index: view.getUint32(8 + i * 16, true),
    data: view.getBigUint64(8 + i * 16 + 8, true),
  }));
}

/** Encodes `struct kvm_userspace_memory_region`. */
export function encodeMemoryRegion(
  slot: number,
  flags: number,
  guestPhysAddr: bigint,
  size: bigint,
  userspaceAddr: bigint,
): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(32);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, slot, true);
  view.setUint32(4, flags, true);
  view.setBigUint64(8, guestPhysAddr, true);
  view.setBigUint64(16, size, true);
  view.setBigUint64(24, userspaceAddr, true);
  return bytes;
}
