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

/** `chip_id` of each in-kernel interrupt controller in `struct kvm_irqchip`. */
export const KVM_IRQCHIP_IDS = { "pic-master": 0, "pic-slave": 1, "ioapic": 2 } as const;

/** Name of an in-kernel interrupt controller. */
export type IrqchipName = keyof typeof KVM_IRQCHIP_IDS;

/** sizeof(struct kvm_irqchip): chip_id, pad, then a 512-byte union of the chip states. */
export const KVM_IRQCHIP_SIZE = 520;
/** sizeof(struct kvm_pic_state). */
export const KVM_PIC_STATE_SIZE = 16;
/** sizeof(struct kvm_ioapic_state). */
export const KVM_IOAPIC_STATE_SIZE = 216;
/** KVM_IOAPIC_NUM_PINS: entries in the IOAPIC's redirection table. */
export const KVM_IOAPIC_NUM_PINS = 24;
/** sizeof(struct kvm_pit_state2). */
export const KVM_PIT_STATE2_SIZE = 112;
/** sizeof(struct kvm_pit_channel_state). */
export const KVM_PIT_CHANNEL_STATE_SIZE = 24;

/** `struct kvm_pit_state2` flags. */
export const KVM_PIT_FLAGS = {
  /** KVM_PIT_FLAGS_HPET_LEGACY: the HPET's legacy mode has taken over the PIT's interrupt. */
  hpetLegacy: 0x1,
  /** KVM_PIT_FLAGS_SPEAKER_DATA_ON: port 0x61 bit 1 as the in-kernel speaker port holds it. */
  speakerDataOn: 0x2,
} as const;

/**
 * `struct kvm_pic_state`: one 8259A as KVM models it (every field a u8, in
 * C order). Plain numbers, so it goes through JSON as is.
 */
export interface PicState {
  /** The IRQ lines' levels at the last edge detection. */
  lastIrr: number;
  /** Interrupt request register. */
  irr: number;
  /** Interrupt mask register (OCW1). */
  imr: number;
  /** In-service register. */
  isr: number;
  /** The lowest-priority IRQ + 1 (rotation). */
  priorityAdd: number;
  /** The vector of IRQ 0 (ICW2). */
  irqBase: number;
  /** OCW3 read selection: 1 = ISR, 0 = IRR. */
  readRegSelect: number;
  /** OCW3 poll command pending. */
  poll: number;
  /** Special mask mode. */
  specialMask: number;
  /** Initialisation step: 0 = initialised, 1-3 = waiting for ICW2-ICW4. */
  initState: number;
  /** Automatic end of interrupt (ICW4). */
  autoEoi: number;
  rotateOnAutoEoi: number;
  /** Special fully nested mode (ICW4). */
  specialFullyNestedMode: number;
  /** Whether ICW4 is expected (ICW1 bit 0). */
  init4: number;
  /** Edge/level control (PIIX ELCR): bit n = IRQ n level-triggered. */
  elcr: number;
  /** The ELCR bits the guest may change. */
  elcrMask: number;
}

/** `struct kvm_pic_state`'s fields in C order, one byte each. */
const PIC_FIELDS = [
  "lastIrr",
  "irr",
  "imr",
  "isr",
  "priorityAdd",
  "irqBase",
  "readRegSelect",
  "poll",
  "specialMask",
  "initState",
  "autoEoi",
  "rotateOnAutoEoi",
  "specialFullyNestedMode",
  "init4",
  "elcr",
  "elcrMask",
] as const satisfies readonly (keyof PicState)[];

/**
 * `struct kvm_ioapic_state` (the `pad` word is left out: encoded as 0).
 * `baseAddress` and the redirection entries are u64 bigints: a JSON
 * snapshot must write them as strings (e.g. `value.toString(16)`).
 */
export interface IoapicState {
  /** Where the IOAPIC's registers sit (0xfec00000). */
  baseAddress: bigint;
  /** IOREGSEL: the register the window at +0x10 selects. */
  ioregsel: number;
  /** The IOAPIC ID. */
  id: number;
  /** Pins whose interrupt is requested: bit n = pin n. */
  irr: number;
  /** The 24 redirection entries as 64-bit words; {@link decodeRedirectionEntry} names their fields. */
  redirtbl: bigint[];
}

/** The fields of one IOAPIC redirection entry (the `fields` view of `redirtbl[n]`). */
export interface RedirectionEntry {
  vector: number;
  /** 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT. */
  deliveryMode: number;
  /** 0 physical, 1 logical. */
  destMode: number;
  /** 1 while the interrupt is being sent. */
  deliveryStatus: number;
  /** 0 active high, 1 active low. */
  polarity: number;
  /** Set while a level-triggered interrupt waits for its EOI. */
  remoteIrr: number;
  /** 0 edge, 1 level. */
  trigMode: number;
  /** 1 = masked. */
  mask: number;
  /** Destination APIC ID (or logical set). */
  destId: number;
}

/** `struct kvm_irqchip`: the master or slave PIC's state, or the IOAPIC's, as `chip` says. */
export type IrqchipState =
  | { chip: "pic-master" | "pic-slave"; pic: PicState }
  | { chip: "ioapic"; ioapic: IoapicState };

/**
 * `struct kvm_pit_channel_state`: one 8254 channel as KVM models it.
 * `countLoadTime` is the host kernel's ktime (ns) when the count was loaded:
 * meaningless in another process or on another host, and ignored by
 * KVM_SET_PIT2, which reloads each channel's count at the time of the call.
 */
export interface PitChannelState {
  /** The initial count; 0 stands for 65536 as written, and KVM may report 65536. */
  count: number;
  /** The count latched by a counter-latch command. */
  latchedCount: number;
  /** Which bytes of the latched count remain to be read (a `read_state` value), 0 when none. */
  countLatched: number;
  /** Whether a read-back status byte is latched. */
  statusLatched: number;
  /** The latched status byte. */
  status: number;
  /** Which byte of the count the next read returns (RW_STATE_LSB 1, MSB 2, WORD0 3, WORD1 4). */
  readState: number;
  /** Which byte of the count the next write sets (same values as `readState`). */
  writeState: number;
  /** The low byte written, waiting for the high one. */
  writeLatch: number;
  /** The access mode (1 LSB, 2 MSB, 3 LSB then MSB). */
  rwMode: number;
  /** The counter mode (0-5). */
  mode: number;
  /** Whether the count is BCD. */
  bcd: number;
  /** The gate input (channel 2: port 0x61 bit 0). */
  gate: number;
  /** Host ktime in ns when the count was loaded (s64). */
  countLoadTime: bigint;
}

/** `struct kvm_pit_state2` (the `reserved` words are left out: encoded as 0). */
export interface PitState {
  /** Channels 0-2. */
  channels: PitChannelState[];
  /** {@link KVM_PIT_FLAGS} bits. */
  flags: number;
}

/** The `[name, offset, size]` of each number field of `struct kvm_pit_channel_state` except count_load_time. */
const PIT_CHANNEL_FIELDS = [
  ["count", 0, 4],
  ["latchedCount", 4, 2],
  ["countLatched", 6, 1],
  ["statusLatched", 7, 1],
  ["status", 8, 1],
  ["readState", 9, 1],
  ["writeState", 10, 1],
  ["writeLatch", 11, 1],
  ["rwMode", 12, 1],
  ["mode", 13, 1],
  ["bcd", 14, 1],
  ["gate", 15, 1],
] as const satisfies readonly (readonly [keyof PitChannelState, number, 1 | 2 | 4])[];
const PIT_COUNT_LOAD_TIME = 16;
const PIT_FLAGS = 72;

/** Where the chip's state starts in `struct kvm_irqchip` (after chip_id and pad). */
const IRQCHIP_UNION = 8;
const IOAPIC_BASE_ADDRESS = 0;
const IOAPIC_IOREGSEL = 8;
const IOAPIC_ID = 12;
const IOAPIC_IRR = 16;
const IOAPIC_REDIRTBL = 24;

function checkLength(what: string, bytes: Uint8Array, size: number): DataView {
  if (bytes.byteLength < size) {
    throw new RangeError(`Cannot decode ${what}: ${bytes.byteLength} bytes given, ${size} needed`);
  }
  return new DataView(bytes.buffer, bytes.byteOffset, size);
}

/** Writes an unsigned field of `size` bytes, refusing a value that does not fit. */
function setField(view: DataView, at: number, size: 1 | 2 | 4, value: number, what: string): void {
  const max = 2 ** (size * 8) - 1;
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`Cannot encode ${what}: ${value} is not an integer in 0-${max}`);
  }
  if (size === 1) view.setUint8(at, value);
  else if (size === 2) view.setUint16(at, value, true);
  else view.setUint32(at, value, true);
}

function decodePic(view: DataView, at: number): PicState {
  const pic = {} as PicState;
  PIC_FIELDS.forEach((name, i) => pic[name] = view.getUint8(at + i));
  return pic;
}

function decodeIoapic(view: DataView, at: number): IoapicState {
  return {
    baseAddress: view.getBigUint64(at + IOAPIC_BASE_ADDRESS, true),
    ioregsel: view.getUint32(at + IOAPIC_IOREGSEL, true),
    id: view.getUint32(at + IOAPIC_ID, true),
    irr: view.getUint32(at + IOAPIC_IRR, true),
    redirtbl: Array.from(
      { length: KVM_IOAPIC_NUM_PINS },
      (_, pin) => view.getBigUint64(at + IOAPIC_REDIRTBL + pin * 8, true),
    ),
  };
}

/**
 * Decodes `struct kvm_irqchip` (as KVM_GET_IRQCHIP fills it). Throws a
 * RangeError for a buffer shorter than 520 bytes or an unknown `chip_id`.
 *
 * @example
 * ```ts
 * import { decodeIrqchip, encodeIrqchip, KVM_IRQCHIP_SIZE } from "./structs.ts";
 * import assert from "node:assert/strict";
 * const bytes = new Uint8Array(KVM_IRQCHIP_SIZE); // chip_id 0: the master PIC
 * bytes[8 + 5] = 0x08; // irq_base
 * const state = decodeIrqchip(bytes);
 * assert.equal(state.chip === "pic-master" && state.pic.irqBase, 0x08);
 * assert.deepEqual(encodeIrqchip(state), bytes);
 * ```
 */
export function decodeIrqchip(bytes: Uint8Array): IrqchipState {
  const view = checkLength("struct kvm_irqchip", bytes, KVM_IRQCHIP_SIZE);
  const chipId = view.getUint32(0, true);
  switch (chipId) {
    case KVM_IRQCHIP_IDS["pic-master"]:
      return { chip: "pic-master", pic: decodePic(view, IRQCHIP_UNION) };
    case KVM_IRQCHIP_IDS["pic-slave"]:
      return { chip: "pic-slave", pic: decodePic(view, IRQCHIP_UNION) };
    case KVM_IRQCHIP_IDS.ioapic:
      return { chip: "ioapic", ioapic: decodeIoapic(view, IRQCHIP_UNION) };
    default:
      throw new RangeError(`Cannot decode struct kvm_irqchip: chip_id ${chipId} is not 0, 1 or 2`);
  }
}

/**
 * Encodes `struct kvm_irqchip` for KVM_SET_IRQCHIP (520 bytes; padding and
 * the union's unused bytes zero). Throws a RangeError naming the field for
 * a value that does not fit it.
 */
export function encodeIrqchip(state: IrqchipState): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(KVM_IRQCHIP_SIZE);
  const view = new DataView(bytes.buffer);
  const chipId = KVM_IRQCHIP_IDS[state.chip];
  if (chipId === undefined) throw new RangeError(`Cannot encode struct kvm_irqchip: unknown chip ${state.chip}`);
  view.setUint32(0, chipId, true);
  if (state.chip === "ioapic") {
    const { ioapic } = state;
    const at = IRQCHIP_UNION;
    view.setBigUint64(at + IOAPIC_BASE_ADDRESS, BigInt.asUintN(64, ioapic.baseAddress), true);
    setField(view, at + IOAPIC_IOREGSEL, 4, ioapic.ioregsel, "ioapic.ioregsel");
    setField(view, at + IOAPIC_ID, 4, ioapic.id, "ioapic.id");
    setField(view, at + IOAPIC_IRR, 4, ioapic.irr, "ioapic.irr");
    if (ioapic.redirtbl.length !== KVM_IOAPIC_NUM_PINS) {
      throw new RangeError(
        `Cannot encode ioapic.redirtbl: ${ioapic.redirtbl.length} entries, not ${KVM_IOAPIC_NUM_PINS}`,
      );
    }
    ioapic.redirtbl.forEach((entry, pin) =>
      view.setBigUint64(at + IOAPIC_REDIRTBL + pin * 8, BigInt.asUintN(64, entry), true)
    );
  } else {
    PIC_FIELDS.forEach((name, i) => setField(view, IRQCHIP_UNION + i, 1, state.pic[name], `pic.${name}`));
  }
  return bytes;
}

/** Names the fields of an IOAPIC redirection entry (`kvm_ioapic_state.redirtbl[n]`). */
export function decodeRedirectionEntry(bits: bigint): RedirectionEntry {
  const low = Number(bits & 0xffff_ffffn);
  return {
    vector: low & 0xff,
    deliveryMode: (low >>> 8) & 0x7,
    destMode: (low >>> 11) & 1,
    deliveryStatus: (low >>> 12) & 1,
    polarity: (low >>> 13) & 1,
    remoteIrr: (low >>> 14) & 1,
    trigMode: (low >>> 15) & 1,
    mask: (low >>> 16) & 1,
    destId: Number((bits >> 56n) & 0xffn),
  };
}

/** Packs a redirection entry's fields into its 64-bit word (reserved bits zero). */
export function encodeRedirectionEntry(entry: RedirectionEntry): bigint {
  const low = (entry.vector & 0xff) |
    ((entry.deliveryMode & 0x7) << 8) |
    ((entry.destMode & 1) << 11) |
    ((entry.deliveryStatus & 1) << 12) |
    ((entry.polarity & 1) << 13) |
    ((entry.remoteIrr & 1) << 14) |
    ((entry.trigMode & 1) << 15) |
    ((entry.mask & 1) << 16);
  return (BigInt(entry.destId & 0xff) << 56n) | BigInt(low >>> 0);
}

/**
 * Decodes `struct kvm_pit_state2` (as KVM_GET_PIT2 fills it). Throws a
 * RangeError for a buffer shorter than 112 bytes.
 *
 * @example
 * ```ts
 * import { decodePitState, encodePitState, KVM_PIT_STATE2_SIZE } from "./structs.ts";
 * import assert from "node:assert/strict";
 * const pit = decodePitState(new Uint8Array(KVM_PIT_STATE2_SIZE));
 * pit.channels[0]!.mode = 3; // square wave
 * assert.equal(encodePitState(pit)[13], 3); // channels[0].mode
 * ```
 */
export function decodePitState(bytes: Uint8Array): PitState {
  const view = checkLength("struct kvm_pit_state2", bytes, KVM_PIT_STATE2_SIZE);
  const channels = [0, 1, 2].map((i) => {
    const at = i * KVM_PIT_CHANNEL_STATE_SIZE;
    const channel = { countLoadTime: view.getBigInt64(at + PIT_COUNT_LOAD_TIME, true) } as PitChannelState;
    for (const [name, offset, size] of PIT_CHANNEL_FIELDS) {
      channel[name] = size === 1
        ? view.getUint8(at + offset)
        : size === 2
        ? view.getUint16(at + offset, true)
        : view.getUint32(at + offset, true);
    }
    return channel;
  });
  return { channels, flags: view.getUint32(PIT_FLAGS, true) };
}

/**
 * Encodes `struct kvm_pit_state2` for KVM_SET_PIT2 (112 bytes, reserved
 * words zero). Throws a RangeError naming the field for a value that does
 * not fit it, or for other than 3 channels.
 */
export function encodePitState(pit: PitState): Uint8Array<ArrayBuffer> {
  if (pit.channels.length !== 3) {
    throw new RangeError(`Cannot encode struct kvm_pit_state2: ${pit.channels.length} channels, not 3`);
  }
  const bytes = new Uint8Array(KVM_PIT_STATE2_SIZE);
  const view = new DataView(bytes.buffer);
  pit.channels.forEach((channel, i) => {
    const at = i * KVM_PIT_CHANNEL_STATE_SIZE;
    for (const [name, offset, size] of PIT_CHANNEL_FIELDS) {
      setField(view, at + offset, size, channel[name], `channels[${i}].${name}`);
    }
    view.setBigInt64(at + PIT_COUNT_LOAD_TIME, BigInt.asIntN(64, channel.countLoadTime), true);
  });
  setField(view, PIT_FLAGS, 4, pit.flags, "flags");
  return bytes;
}
