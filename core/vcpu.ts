/**
 * A virtual CPU as the scripting API sees it: registers as objects of
 * bigints, segments, control registers, MSRs, FPU state, CPU mode helpers.
 *
 * @module
 */

import type { VcpuFd } from "./kvm/kvm.ts";
import {
  type CpuidEntry,
  type DebugRegisters,
  type FpuState,
  REGISTER_NAMES,
  type RegisterName,
  type Registers,
  type Segment,
  type SpecialRegisters,
} from "./kvm/structs.ts";
import type { GuestMemory } from "./memory.ts";
import { CR0, CR4, EFER } from "./x86.ts";

/** The CPU's execution mode. */
export type CpuMode = "real" | "protected16" | "protected" | "compat" | "long";

/** Register values accepted from users: numbers or bigints. */
export type RegisterValues = Partial<Record<RegisterName, number | bigint>>;

/** Where the boot helpers place their structures in guest RAM (below 0x7c00, above the real-mode IVT/BDA). */
export const BOOT_LAYOUT = {
  gdt: 0x500,
  pml4: 0x1000,
  pdpt: 0x2000,
  /** Four page directories for the first 4 GiB (2 MiB pages). */
  pageDirectories: 0x3000,
  /** Segment selectors in the boot GDT. */
  selectors: { code64: 0x08, data: 0x10, code32: 0x18, code16: 0x20, data16: 0x28 },
} as const;

/** Well-known MSRs by name (lower case), for `getMsr("efer")`. */
export const MSR_NAMES: Record<string, number> = {
  tsc: 0x10,
  apic_base: 0x1b,
  sysenter_cs: 0x174,
  sysenter_esp: 0x175,
  sysenter_eip: 0x176,
  pat: 0x277,
  efer: 0xc000_0080,
  star: 0xc000_0081,
  lstar: 0xc000_0082,
  cstar: 0xc000_0083,
  fmask: 0xc000_0084,
  fs_base: 0xc000_0100,
  gs_base: 0xc000_0101,
  kernel_gs_base: 0xc000_0102,
  tsc_aux: 0xc000_0103,
};

function flatSegment(selector: number, code: boolean, bits: 16 | 32 | 64): Segment {
  return {
    base: 0n,
    limit: bits === 16 ? 0xffff : 0xffff_ffff,
    selector,
    type: code ? 0xb : 0x3,
    present: true,
    dpl: 0,
    db: bits === 32,
    s: true,
    l: bits === 64 && code,
    g: bits !== 16,
    avl: false,
    unusable: false,
  };
}

function taskSegment(): Segment {
  return {
    base: 0n,
    limit: 0x67,
    selector: 0,
    type: 0xb,
    present: true,
    dpl: 0,
    db: false,
    s: false,
    l: false,
    g: false,
    avl: false,
    unusable: false,
  };
}

function resolveMsr(msr: number | string): number {
  if (typeof msr === "number") return msr;
  const index = MSR_NAMES[msr.toLowerCase()];
  if (index === undefined) {
    throw new RangeError(`Unknown MSR name ${JSON.stringify(msr)} (known: ${Object.keys(MSR_NAMES).join(", ")})`);
  }
  return index;
}

/** Converts a user's register value to a 64-bit bigint, naming the register on bad input. */
export function toRegisterValue(name: string, value: unknown): bigint {
  if (typeof value === "bigint") return BigInt.asUintN(64, value);
  if (typeof value === "number" && Number.isInteger(value)) return BigInt.asUintN(64, BigInt(value));
  throw new TypeError(`Cannot set ${name} to ${String(value)}: expected an integer (number or bigint)`);
}

/**
 * One virtual CPU.
 *
 * `cpu.regs` reads the general registers (KVM_GET_REGS, cached until the
 * vCPU runs again); assigning a property writes it through:
 * `cpu.regs.rax = 5` or `cpu.setRegs({ rax: 5, rip: 0x7c00n })`.
 */
export class Vcpu {
  /** vCPU index (also its APIC id). */
  readonly index: number;
  readonly #fd: VcpuFd;
  readonly #memory: GuestMemory;
  readonly #assertStopped: ((cpu: Vcpu) => void) | undefined;
  #regs: Registers | undefined;
  #sregs: SpecialRegisters | undefined;
  /** The run generation the caches belong to (see VcpuFd.generation). */
  #regsGeneration = -1;
  #sregsGeneration = -1;
  /** A write after this generation's run made kvm_run's synced copy stale. */
  #writtenGeneration = -1;

  /**
   * @internal Created by the Vm. `assertStopped` throws while the vCPU runs
   * on another thread: a state ioctl would wait until it leaves KVM_RUN,
   * which a guest that makes no exits may never do.
   */
  constructor(fd: VcpuFd, memory: GuestMemory, assertStopped?: (cpu: Vcpu) => void) {
    this.index = fd.id;
    this.#fd = fd;
    this.#memory = memory;
    this.#assertStopped = assertStopped;
  }

  /** The handle for a state ioctl, once this vCPU is known not to be running elsewhere. */
  #stopped(): VcpuFd {
    this.#assertStopped?.(this);
    return this.#fd;
  }

  /** @internal The KVM handle, for the machine and debugger layers. */
  get fd(): VcpuFd {
    return this.#fd;
  }

  /** @internal Forgets cached state: called by the run loop after KVM_RUN. */
  invalidate(): void {
    this.#regs = undefined;
    this.#sregs = undefined;
  }

  #synced(): boolean {
    const fd = this.#fd;
    return fd.syncedGeneration === fd.generation && this.#writtenGeneration !== fd.generation;
  }

  #loadRegs(): Registers {
    const fd = this.#fd;
    if (this.#regs === undefined || this.#regsGeneration !== fd.generation) {
      this.#regs = this.#synced() ? fd.syncedRegs() : this.#stopped().getRegs();
      this.#regsGeneration = fd.generation;
    }
    return this.#regs;
  }

  #loadSregs(): SpecialRegisters {
    const fd = this.#fd;
    if (this.#sregs === undefined || this.#sregsGeneration !== fd.generation) {
      this.#sregs = this.#synced() ? fd.syncedSregs() : this.#stopped().getSregs();
      this.#sregsGeneration = fd.generation;
    }
    return this.#sregs;
  }

  /**
   * General-purpose registers, rip and rflags; property assignment writes
   * through (`cpu.regs.rax = 5n`; at run time numbers work too, and `setRegs` takes them typed).
   */
  get regs(): Registers {
    const regs = this.#loadRegs();
    return new Proxy(regs, {
      set: (target, key, value) => {
        if (typeof key !== "string" || !(REGISTER_NAMES as readonly string[]).includes(key)) {
          throw new RangeError(`Unknown register ${String(key)} (registers: ${REGISTER_NAMES.join(", ")})`);
        }
        target[key as RegisterName] = toRegisterValue(key, value);
        this.#stopped().setRegs(target);
        this.#writtenGeneration = this.#fd.generation;
        return true;
      },
    });
  }

  /** Replaces all general registers, or the ones named (other registers keep their values). */
  set regs(values: RegisterValues) {
    this.setRegs(values);
  }

  /** Writes the named registers; the others keep their values. */
  setRegs(values: RegisterValues): void {
    const regs = { ...this.#loadRegs() };
    for (const [name, value] of Object.entries(values)) {
      if (!(REGISTER_NAMES as readonly string[]).includes(name)) {
        throw new RangeError(`Unknown register ${name} (registers: ${REGISTER_NAMES.join(", ")})`);
      }
      regs[name as RegisterName] = toRegisterValue(name, value);
    }
    this.#stopped().setRegs(regs);
    this.#regs = regs;
    this.#writtenGeneration = this.#fd.generation;
  }

  /** Segment registers, descriptor tables, control registers, EFER, APIC base. */
  get sregs(): SpecialRegisters {
    return structuredClone(this.#loadSregs());
  }

  /**
   * The special registers without a defensive copy, for hot internal paths
   * (mode checks on every single-step). Callers must not modify it.
   */
  get sregsView(): Readonly<SpecialRegisters> {
    return this.#loadSregs();
  }

  /** Writes the special registers given; the others keep their values. */
  setSregs(values: Partial<SpecialRegisters>): void {
    const sregs = { ...this.#loadSregs(), ...values };
    this.#stopped().setSregs(sregs);
    this.#sregs = structuredClone(sregs);
    this.#writtenGeneration = this.#fd.generation;
  }

  /** x87 and SSE state. */
  get fpu(): FpuState {
    return this.#stopped().getFpu();
  }

  /** Writes the x87/SSE fields given; the others keep their values. */
  setFpu(values: Partial<FpuState>): void {
    this.#stopped().setFpu({ ...this.#fd.getFpu(), ...values });
  }

  /** The CPUID table this vCPU reports (KVM_GET_CPUID2); set it with `Vm.create({ cpuid })`. */
  get cpuid(): CpuidEntry[] {
    return this.#fd.getCpuid();
  }

  /** Debug registers DR0-3, DR6, DR7 as the guest sees them. */
  get debugRegs(): DebugRegisters {
    return this.#stopped().getDebugRegs();
  }

  /** Reads an MSR by number or name (`"efer"`, `"lstar"`, …). */
  getMsr(msr: number | string): bigint {
    const index = resolveMsr(msr);
    return this.#stopped().getMsrs([index]).get(index)!;
  }

  /** Writes an MSR by number or name. */
  setMsr(msr: number | string, value: number | bigint): void {
    this.#stopped().setMsrs([{ index: resolveMsr(msr), data: toRegisterValue(`MSR ${msr}`, value) }]);
  }

  /** The current execution mode, from CR0.PE, EFER.LMA and CS.L/D. */
  get mode(): CpuMode {
    return modeOf(this.sregsView);
  }

  /** The address width of the current mode: 16, 32 or 64. */
  get bitness(): 16 | 32 | 64 {
    const mode = this.mode;
    return mode === "long" ? 64 : mode === "protected" || mode === "compat" ? 32 : 16;
  }

  /**
   * Puts the vCPU in real mode at `cs:ip` with the other segments equal to
   * `dataSegment` (default `cs`, as a boot sector expects when cs is 0).
   * Without options it enters at 0000:7c00, where a boot sector runs.
   */
  enterRealMode(options: { cs?: number; ip?: number; sp?: number; dataSegment?: number } = {}): void {
    const cs = options.cs ?? 0;
    const data = options.dataSegment ?? cs;
    const segment = (selector: number, code: boolean): Segment => ({
      ...flatSegment(selector, code, 16),
      base: BigInt(selector << 4),
    });
    const sregs = this.#stopped().getSregs();
    this.setSregs({
      cs: segment(cs, true),
      ds: segment(data, false),
      es: segment(data, false),
      fs: segment(data, false),
      gs: segment(data, false),
      ss: segment(data, false),
      cr0: sregs.cr0 & ~(CR0.PE | CR0.PG) | CR0.ET,
      cr4: 0n,
      efer: 0n,
    });
    this.setRegs(this.#cleanRegs({ rip: options.ip ?? 0x7c00, rsp: options.sp ?? 0 }));
  }

  /**
   * Puts the vCPU in flat 32-bit protected mode, paging off, at `entry`. The
   * boot GDT goes to `gdt` (default 0x500; the loader picks a place the image does not use).
   */
  enterProtectedMode(options: { entry: number | bigint; registers?: RegisterValues; gdt?: number }): void {
    const gdt = options.gdt ?? BOOT_LAYOUT.gdt;
    this.#writeBootGdt(gdt);
    this.#enterFlatMode(32, gdt, { cr0: CR0.PE | CR0.ET | CR0.NE, cr3: 0n, cr4: 0n, efer: 0n }, options);
  }

  /**
   * Puts the vCPU in 64-bit long mode at `entry`, with identity page tables
   * covering all RAM (2 MiB pages below 4 GiB, 1 GiB pages above). The GDT
   * goes to `gdt` (default 0x500), the 0x6000 bytes of page tables to
   * `pageTables` (default 0x1000): the loader picks places the image does not use.
   */
  enterLongMode(
    options: { entry: number | bigint; registers?: RegisterValues; gdt?: number; pageTables?: number },
  ): void {
    const gdt = options.gdt ?? BOOT_LAYOUT.gdt;
    const pml4 = options.pageTables ?? BOOT_LAYOUT.pml4;
    this.#writeBootGdt(gdt);
    this.#writeIdentityPageTables(pml4);
    this.#enterFlatMode(64, gdt, {
      cr0: CR0.PE | CR0.ET | CR0.NE | CR0.PG,
      cr3: BigInt(pml4),
      cr4: CR4.PAE,
      efer: EFER.LME | EFER.LMA,
    }, options);
  }

  /** Flat segments from the boot GDT at `gdt` (code of `bits`, 32-bit data), the given control registers, clean registers. */
  #enterFlatMode(
    bits: 32 | 64,
    gdt: number,
    control: Pick<SpecialRegisters, "cr0" | "cr3" | "cr4" | "efer">,
    options: { entry: number | bigint; registers?: RegisterValues },
  ): void {
    const { code32, code64, data } = BOOT_LAYOUT.selectors;
    const dataSegment = flatSegment(data, false, 32);
    this.setSregs({
      cs: bits === 64 ? flatSegment(code64, true, 64) : flatSegment(code32, true, 32),
      ds: dataSegment,
      es: dataSegment,
      fs: dataSegment,
      gs: dataSegment,
      ss: dataSegment,
      tr: taskSegment(),
      gdt: { base: BigInt(gdt), limit: 6 * 8 - 1 },
      idt: { base: 0n, limit: 0 },
      ...control,
    });
    this.setRegs(this.#cleanRegs({ rip: options.entry, ...options.registers }));
  }

  #cleanRegs(values: RegisterValues): RegisterValues {
    const clean: RegisterValues = { rflags: 2 };
    for (const name of REGISTER_NAMES) if (name !== "rflags") clean[name] = 0;
    return { ...clean, ...values };
  }

  #writeBootGdt(base: number): void {
    const gdt = [
      0n,
      0x00af9b000000ffffn, // 0x08: 64-bit code
      0x00cf93000000ffffn, // 0x10: flat data
      0x00cf9b000000ffffn, // 0x18: 32-bit code
      0x008f9b000000ffffn, // 0x20: 16-bit code
      0x008f93000000ffffn, // 0x28: 16-bit data
    ];
    gdt.forEach((entry, i) => this.#memory.writeU64(base + i * 8, entry));
  }

  #writeIdentityPageTables(pml4: number): void {
    const memory = this.#memory;
    // Same shape as BOOT_LAYOUT, wherever it sits: PML4, then PDPT, then four page directories.
    const pdpt = pml4 + 0x1000;
    const pageDirectories = pml4 + 0x2000;
    const present = 0x3n; // present | writable
    const large = 0x80n;
    memory.fill(pml4, 0x1000, 0);
    memory.fill(pdpt, 0x1000, 0);
    memory.writeU64(pml4, BigInt(pdpt) | present);
    const gib = 1n << 30n;
    const covered = (BigInt(memory.end) + gib - 1n) / gib; // GiB of address space to map
    if (covered > 512n) throw new RangeError(`Cannot identity-map ${memory.end} bytes: more than 512 GiB`);
    for (let i = 0n; i < covered; i++) {
      if (i < 4n) {
        const directory = pageDirectories + Number(i) * 0x1000;
        for (let j = 0n; j < 512n; j++) {
          memory.writeU64(directory + Number(j) * 8, (i * gib + j * (2n << 20n)) | present | large);
        }
        memory.writeU64(pdpt + Number(i) * 8, BigInt(directory) | present);
      } else {
        memory.writeU64(pdpt + Number(i) * 8, (i * gib) | present | large);
      }
    }
  }
}

/** The execution mode described by a set of special registers. */
export function modeOf(sregs: Readonly<SpecialRegisters>): CpuMode {
  if ((sregs.cr0 & CR0.PE) === 0n) return "real";
  if ((sregs.efer & EFER.LMA) !== 0n) return sregs.cs.l ? "long" : "compat";
  return sregs.cs.db ? "protected" : "protected16";
}
