/**
 * What the gdbstub needs from a debuggee, and its implementation over a
 * hvsh {@link Vm} through the debug engine (`vm.debug`).
 *
 * The interface speaks hvsh's own types (register values by name, bigint
 * addresses, {@link StopEvent}s), never protocol packets: the stub
 * (stub.ts) translates. Threads are vCPUs, numbered from 1 as GDB numbers
 * threads (thread 1 is vCPU 0).
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import { Debugger, NoDebugRegisterError } from "../debug/debugger.ts";
import type { Vcpu } from "../vcpu.ts";
import type { StopEvent } from "../stop.ts";
import type { FpuState, Segment, SpecialRegisters } from "../kvm/structs.ts";
import { abridgedTagWord, fullTagWord, type RegisterValue, type X86Registers } from "./arch_x86.ts";
import { DISPLAY_REGISTER_ORDER } from "../kvm/structs.ts";
import { hex } from "../hex.ts";
import { CR0 } from "../x86.ts";

/** Which addresses memory accesses use: guest virtual (through the page tables) or guest physical. */
export type MemorySpace = "virtual" | "physical";

/** Breakpoint kinds GDB can insert (Z0, Z1). */
export type BreakKind = "software" | "hardware";

/** Watchpoint kinds GDB can insert (Z2 write, Z3 read, Z4 access). */
export type WatchKind = "write" | "read" | "access";

/** A stop as the stub needs it: what kind, which thread, and the event behind it. */
export type TargetStop =
  | { kind: "breakpoint"; thread: number; hardware: boolean; event: StopEvent }
  | { kind: "watchpoint"; thread: number; access: WatchKind; address: bigint; event: StopEvent }
  | { kind: "step"; thread: number; event: StopEvent }
  /** Paused (GDB's Ctrl-C, the REPL, a timeout). */
  | { kind: "interrupted"; thread: number; event: StopEvent }
  /** Reverse execution reached the start of the recorded history (`replaylog:begin`). */
  | { kind: "history-begin"; thread: number; event: StopEvent }
  /** The guest ended: debug-exit (status as `hvsh boot` gives it) or a final HLT (status 0). */
  | { kind: "exited"; status: number; event: StopEvent }
  /** A stop GDB should see as a signal (crash, emulation failure, unclaimed access). */
  | { kind: "signal"; thread: number; signal: number; event: StopEvent };

/** Signal numbers as GDB's remote protocol numbers them. */
export const SIGNALS = { SIGINT: 2, SIGILL: 4, SIGTRAP: 5, SIGSEGV: 11 } as const;

/** Why a target operation was refused: the stub answers each kind with its errno reply. */
export type TargetErrorKind = "no-space" | "fault" | "invalid";

/**
 * A refused target operation. `kind` says why (the gdbstub crate's
 * `TargetError` idea): `"no-space"` (no debug register left: ENOSPC),
 * `"fault"` (memory not mapped or not RAM: EFAULT), `"invalid"` (a bad
 * register, value or thread: EINVAL). The message names what was refused.
 */
export class TargetError extends Error {
  /** Why the operation was refused. */
  readonly kind: TargetErrorKind;
  constructor(kind: TargetErrorKind, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TargetError";
    this.kind = kind;
  }
}

/** Runs `action`, turning any error it throws into a {@link TargetError} of `kind` (one already typed keeps its kind). */
function refusedAs<T>(kind: TargetErrorKind, action: () => T): T {
  try {
    return action();
  } catch (error) {
    if (error instanceof TargetError) throw error;
    const typed = error instanceof NoDebugRegisterError ? "no-space" : kind;
    throw new TargetError(typed, (error as Error).message, { cause: error });
  }
}

/**
 * The debuggee interface of the gdbstub: debuggee operations only. A refused
 * operation throws a {@link TargetError}.
 */
export interface GdbTarget {
  /** True while the guest runs. */
  readonly running: boolean;
  /** True once the guest has ended (debug-exit, or halted for good): a detach leaves it stopped. */
  readonly ended: boolean;
  /** Thread ids (1-based). */
  threads(): number[];
  /** A short description of a thread for `info threads`, e.g. "vCPU 0 (long mode)". */
  describeThread(thread: number): string;
  /** Every register of the layout in arch_x86.ts. */
  readRegisters(thread: number): X86Registers;
  /**
   * The core registers (general, rip, eflags, segment selectors) from the
   * vCPU's cached state: no ioctl after a stop, for expedited stop replies.
   */
  readCoreRegisters(thread: number): Record<string, bigint>;
  /** Writes the registers given (only those whose values differ from the current ones). */
  writeRegisters(thread: number, values: X86Registers): void;
  /** Reads up to `length` bytes; may return fewer when the range runs into unmapped memory; throws when none can be read. */
  readMemory(address: bigint, length: number, space: MemorySpace, thread: number): Uint8Array;
  /** Writes bytes; throws (writing nothing) when any byte is unmapped. */
  writeMemory(address: bigint, data: Uint8Array, space: MemorySpace, thread: number): void;
  /** Inserts a breakpoint (idempotent: inserting one twice keeps one). */
  insertBreakpoint(kind: BreakKind, address: bigint): void;
  /** Removes a breakpoint (idempotent). */
  removeBreakpoint(kind: BreakKind, address: bigint): void;
  /** Inserts a watchpoint on `[address, address + length)` (idempotent). */
  insertWatchpoint(kind: WatchKind, address: bigint, length: number): void;
  /** Removes a watchpoint (idempotent). */
  removeWatchpoint(kind: WatchKind, address: bigint, length: number): void;
  /** Removes every breakpoint and watchpoint inserted through this target. */
  removeAll(): void;
  /**
   * Starts the guest; resolves when it stops (the stop also reaches
   * {@link onStop}). A step executes one instruction of `thread` (default 1)
   * while the others stay stopped; a continue runs every thread, or only
   * `thread` when given.
   */
  resume(step: boolean, thread?: number): Promise<StopEvent>;
  /**
   * Runs the guest backwards (gdb's `bs`/`bc`): one instruction of thread 1,
   * or to the last breakpoint or write watchpoint before now. Rejects when
   * the guest is not recorded or cannot go back; the stop also reaches
   * {@link onStop}.
   */
  reverse(step: boolean): Promise<StopEvent>;
  /** Stops a running guest (whoever runs it); resolves once stopped. The stop says gdb paused it. */
  interrupt(): Promise<void>;
  /** Calls `observer` for every stop, whoever ran the guest. Returns an unsubscribe function. */
  onStop(observer: (stop: TargetStop) => void): () => void;
  /** Forgets everything (unsubscribes from the VM). */
  dispose(): void;
}

const GPR_NAMES = DISPLAY_REGISTER_ORDER;
const SEGMENT_NAMES = ["cs", "ss", "ds", "es", "fs", "gs"] as const;
const CONTROL_NAMES = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer"] as const;

function sameValue(a: RegisterValue | undefined, b: RegisterValue): boolean {
  if (a === undefined) return false;
  if (typeof a === "bigint" || typeof b === "bigint") return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function asBigint(name: string, value: RegisterValue): bigint {
  if (typeof value !== "bigint") throw new TypeError(`Cannot set ${name}: expected an integer value`);
  return value;
}

function asBytes(name: string, value: RegisterValue, size: number): Uint8Array {
  if (typeof value === "bigint") {
    const out = new Uint8Array(size);
    let v = value;
    for (let i = 0; i < size; i++, v >>= 8n) out[i] = Number(v & 0xffn);
    return out;
  }
  if (value.length !== size) throw new RangeError(`Cannot set ${name}: got ${value.length} bytes, want ${size}`);
  return value;
}

/** Decodes a segment descriptor (8 bytes) into a loaded segment register with `selector`. */
function segmentFromDescriptor(selector: number, d: Uint8Array): Segment {
  const access = d[5]!;
  const flags = d[6]! >> 4;
  let limit = d[0]! | (d[1]! << 8) | ((d[6]! & 0xf) << 16);
  const g = (flags & 8) !== 0;
  if (g) limit = ((limit << 12) | 0xfff) >>> 0;
  return {
    base: BigInt((d[2]! | (d[3]! << 8) | (d[4]! << 16) | (d[7]! << 24)) >>> 0),
    limit,
    selector,
    type: access & 0xf,
    present: (access & 0x80) !== 0,
    dpl: (access >> 5) & 3,
    db: (flags & 4) !== 0,
    s: (access & 0x10) !== 0,
    l: (flags & 2) !== 0,
    g,
    avl: (flags & 1) !== 0,
    unusable: (access & 0x80) === 0,
  };
}

/**
 * The {@link GdbTarget} of a hvsh machine: registers through the vCPU API,
 * memory through the debugger's `readVirtual`/`writeVirtual` (or the
 * machine's memory for physical), breakpoints and watchpoints through the
 * machine's shared debugger, execution through `run()` / `debug.step()`,
 * stops through `onStop` (so stops caused by another front end reach GDB
 * too).
 *
 * @example
 * ```ts ignore
 * const target = new VmTarget(vm);
 * target.insertBreakpoint("software", vm.debug.symbol("bump"));
 * const stop = await target.resume(false); // { reason: "breakpoint", ... }
 * ```
 */
export class VmTarget implements GdbTarget {
  readonly #machine: Machine;
  readonly #debug: Debugger;
  /** gdb's breakpoints and watchpoints: key -> debugger id. */
  #inserted = new Map<string, number>();
  /** Debugger watchpoint id -> the kind GDB asked for. */
  #watchKinds = new Map<number, WatchKind>();
  #observers = new Set<(stop: TargetStop) => void>();
  #unsubscribe: () => void;

  constructor(machine: Machine, debug: Debugger = Debugger.for(machine)) {
    this.#machine = machine;
    this.#debug = debug;
    this.#unsubscribe = machine.onStop((event) => {
      const stop = this.classify(event);
      for (const observer of this.#observers) observer(stop);
    });
  }

  get running(): boolean {
    return this.#machine.running;
  }

  get ended(): boolean {
    const last = this.#machine.lastStop;
    return last !== undefined && (last.reason === "exit" || last.reason === "halt");
  }

  threads(): number[] {
    return this.#machine.cpus.map((_, i) => i + 1);
  }

  #cpu(thread: number): Vcpu {
    const count = this.#machine.cpus.length;
    if (!Number.isInteger(thread) || thread < 1 || thread > count) {
      throw new TargetError("invalid", `No thread ${thread}: threads are vCPUs 1-${count}`);
    }
    return this.#machine.cpu(thread - 1);
  }

  readCoreRegisters(thread: number): Record<string, bigint> {
    const cpu = this.#cpu(thread);
    const regs = cpu.regs;
    const sregs = cpu.sregsView;
    const values: Record<string, bigint> = { ...regs, eflags: regs.rflags };
    for (const name of SEGMENT_NAMES) values[name] = BigInt(sregs[name].selector);
    return values;
  }

  describeThread(thread: number): string {
    const cpu = this.#cpu(thread);
    return `vCPU ${cpu.index} (${cpu.mode} mode)`;
  }

  readRegisters(thread: number): X86Registers {
    const cpu = this.#cpu(thread);
    const regs = cpu.regs;
    const sregs = cpu.sregsView; // read only: the copy cpu.sregs makes cost ~12 µs of each `g`
    const fpu = cpu.fpu;
    const values: X86Registers = {};
    for (const name of GPR_NAMES) values[name] = regs[name];
    values.eflags = regs.rflags & 0xffff_ffffn;
    for (const name of SEGMENT_NAMES) values[name] = BigInt(sregs[name].selector);
    fpu.fpr.forEach((bytes, i) => values[`st${i}`] = bytes);
    values.fctrl = BigInt(fpu.fcw);
    values.fstat = BigInt(fpu.fsw);
    values.ftag = BigInt(fullTagWord(fpu.ftwx, fpu.fsw, fpu.fpr));
    values.fiseg = (fpu.lastIp >> 32n) & 0xffffn;
    values.fioff = fpu.lastIp & 0xffff_ffffn;
    values.foseg = (fpu.lastDp >> 32n) & 0xffffn;
    values.fooff = fpu.lastDp & 0xffff_ffffn;
    values.fop = BigInt(fpu.lastOpcode & 0x7ff);
    fpu.xmm.forEach((bytes, i) => values[`xmm${i}`] = bytes);
    values.mxcsr = BigInt(fpu.mxcsr);
    values.fs_base = sregs.fs.base;
    values.gs_base = sregs.gs.base;
    for (const name of CONTROL_NAMES) values[name] = sregs[name];
    return values;
  }

  writeRegisters(thread: number, values: X86Registers): void {
    refusedAs("invalid", () => this.#writeRegisters(thread, values));
  }

  #writeRegisters(thread: number, values: X86Registers): void {
    const cpu = this.#cpu(thread);
    const current = this.readRegisters(thread);
    const changed = Object.entries(values).filter(([name, value]) => !sameValue(current[name], value));
    if (changed.length === 0) return;
    const gprs: Record<string, bigint> = {};
    let sregs: SpecialRegisters | undefined;
    let fpu: FpuState | undefined;
    const getSregs = () => sregs ??= cpu.sregs;
    const getFpu = () => fpu ??= cpu.fpu;
    // Selectors before bases, so that `fs` then `fs_base` in one G packet keeps the base GDB sent.
    const order = (name: string) => (SEGMENT_NAMES as readonly string[]).includes(name) ? 0 : 1;
    changed.sort((a, b) => order(a[0]) - order(b[0]));
    for (const [name, value] of changed) {
      if ((GPR_NAMES as readonly string[]).includes(name)) {
        gprs[name] = asBigint(name, value);
      } else if (name === "eflags") {
        gprs.rflags = asBigint(name, value) & 0xffff_ffffn;
      } else if ((SEGMENT_NAMES as readonly string[]).includes(name)) {
        const segment = name as typeof SEGMENT_NAMES[number];
        getSregs()[segment] = this.#loadSegment(cpu, getSregs(), segment, Number(asBigint(name, value) & 0xffffn));
      } else if (name === "fs_base" || name === "gs_base") {
        const s = getSregs();
        const segment = name === "fs_base" ? "fs" : "gs";
        s[segment] = { ...s[segment], base: asBigint(name, value) };
      } else if ((CONTROL_NAMES as readonly string[]).includes(name)) {
        getSregs()[name as typeof CONTROL_NAMES[number]] = asBigint(name, value);
      } else if (/^st[0-7]$/.test(name)) {
        getFpu().fpr[Number(name.slice(2))] = asBytes(name, value, 10);
      } else if (/^xmm([0-9]|1[0-5])$/.test(name)) {
        getFpu().xmm[Number(name.slice(3))] = asBytes(name, value, 16);
      } else {
        const v = asBigint(name, value);
        const f = getFpu();
        switch (name) {
          case "fctrl":
            f.fcw = Number(v & 0xffffn);
            break;
          case "fstat":
            f.fsw = Number(v & 0xffffn);
            break;
          case "ftag":
            f.ftwx = abridgedTagWord(Number(v & 0xffffn));
            break;
          case "fiseg":
            f.lastIp = (f.lastIp & 0xffff_ffffn) | ((v & 0xffffn) << 32n);
            break;
          case "fioff":
            f.lastIp = (f.lastIp & ~0xffff_ffffn) | (v & 0xffff_ffffn);
            break;
          case "foseg":
            f.lastDp = (f.lastDp & 0xffff_ffffn) | ((v & 0xffffn) << 32n);
            break;
          case "fooff":
            f.lastDp = (f.lastDp & ~0xffff_ffffn) | (v & 0xffff_ffffn);
            break;
          case "fop":
            f.lastOpcode = Number(v & 0x7ffn);
            break;
          case "mxcsr":
            f.mxcsr = Number(v & 0xffff_ffffn);
            break;
          default:
            throw new RangeError(`Cannot set register ${JSON.stringify(name)}: not in the x86-64 layout`);
        }
      }
    }
    if (sregs !== undefined) cpu.setSregs(sregs);
    if (fpu !== undefined) cpu.setFpu(fpu);
    if (Object.keys(gprs).length > 0) cpu.setRegs(gprs);
  }

  /** A segment register loaded with `selector` as the CPU would: base = selector * 16 in real mode, the GDT descriptor otherwise. */
  #loadSegment(cpu: Vcpu, sregs: SpecialRegisters, name: string, selector: number): Segment {
    const current = sregs[name as typeof SEGMENT_NAMES[number]];
    if ((sregs.cr0 & CR0.PE) === 0n) return { ...current, selector, base: BigInt(selector << 4) };
    if (selector < 4) {
      if (name === "cs" || name === "ss") {
        throw new RangeError(`Cannot load ${name} with the null selector ${hex(selector)}`);
      }
      return { ...current, selector, unusable: true, present: false };
    }
    if (selector & 4) {
      throw new RangeError(`Cannot load ${name} with selector ${hex(selector)}: LDT selectors are not supported`);
    }
    const offset = selector & ~7;
    if (offset + 7 > sregs.gdt.limit) {
      throw new RangeError(
        `Cannot load ${name} with selector ${hex(selector)}: beyond the GDT limit ${hex(sregs.gdt.limit)}`,
      );
    }
    const descriptor = this.#debug.readVirtual(sregs.gdt.base + BigInt(offset), 8, cpu);
    return segmentFromDescriptor(selector, descriptor);
  }

  readMemory(address: bigint, length: number, space: MemorySpace, thread: number): Uint8Array {
    const cpu = this.#cpu(thread);
    const out = new Uint8Array(length);
    let done = 0;
    let failure: Error | undefined;
    while (done < length) {
      const at = address + BigInt(done);
      const chunk = Math.min(length - done, 0x1000 - Number(at & 0xfffn));
      try {
        out.set(this.#readChunk(at, chunk, space, cpu), done);
      } catch (error) {
        failure = error as Error;
        break;
      }
      done += chunk;
    }
    if (done === 0 && length > 0) {
      throw new TargetError("fault", failure?.message ?? `Cannot read ${space} ${hex(address)}`, { cause: failure });
    }
    return out.subarray(0, done);
  }

  #readChunk(address: bigint, length: number, space: MemorySpace, cpu: Vcpu): Uint8Array {
    if (space === "virtual") return this.#debug.readVirtual(address, length, cpu);
    if (address > BigInt(Number.MAX_SAFE_INTEGER) || !this.#machine.memory.isRam(Number(address), length)) {
      throw new RangeError(`Cannot read physical ${hex(address)}: not RAM`);
    }
    return this.#machine.memory.read(Number(address), length);
  }

  writeMemory(address: bigint, data: Uint8Array, space: MemorySpace, thread: number): void {
    const cpu = this.#cpu(thread);
    refusedAs("fault", () => this.#writeMemory(address, data, space, cpu));
  }

  #writeMemory(address: bigint, data: Uint8Array, space: MemorySpace, cpu: Vcpu): void {
    if (space === "virtual") return this.#debug.writeVirtual(address, data, cpu);
    if (address > BigInt(Number.MAX_SAFE_INTEGER) || !this.#machine.memory.isRam(Number(address), data.length)) {
      throw new RangeError(`Cannot write ${data.length} bytes at physical ${hex(address)}: not RAM`);
    }
    this.#machine.memory.write(Number(address), data);
  }

  insertBreakpoint(kind: BreakKind, address: bigint): void {
    const key = `${kind}:${address}`;
    if (this.#inserted.has(key)) return;
    const bp = refusedAs("fault", () => kind === "software" ? this.#debug.break(address) : this.#debug.hbreak(address));
    this.#inserted.set(key, bp.id);
  }

  removeBreakpoint(kind: BreakKind, address: bigint): void {
    this.#remove(`${kind}:${address}`);
  }

  insertWatchpoint(kind: WatchKind, address: bigint, length: number): void {
    const key = `watch-${kind}:${address}:${length}`;
    if (this.#inserted.has(key)) return;
    if (length < 1) throw new TargetError("invalid", `Cannot watch ${length} bytes at ${hex(address)}`);
    const wp = refusedAs("fault", () => this.#debug.watch(address, length, kind));
    this.#inserted.set(key, wp.id);
    this.#watchKinds.set(wp.id, kind);
  }

  removeWatchpoint(kind: WatchKind, address: bigint, length: number): void {
    this.#remove(`watch-${kind}:${address}:${length}`);
  }

  #remove(key: string): void {
    const id = this.#inserted.get(key);
    if (id === undefined) return;
    this.#inserted.delete(key);
    this.#watchKinds.delete(id);
    try {
      this.#debug.delete(id);
    } catch {
      // deleted by another front end already
    }
  }

  removeAll(): void {
    for (const key of [...this.#inserted.keys()]) this.#remove(key);
  }

  async resume(step: boolean, thread?: number): Promise<StopEvent> {
    if (step) return await this.#debug.step(1, { cpu: this.#cpu(thread ?? 1) });
    return await (thread === undefined ? this.#machine.run() : this.#machine.run({ only: this.#cpu(thread).index }));
  }

  async reverse(step: boolean): Promise<StopEvent> {
    return await (step ? this.#debug.reverseStep() : this.#debug.reverseContinue());
  }

  async interrupt(): Promise<void> {
    await this.#machine.pause("gdb");
  }

  onStop(observer: (stop: TargetStop) => void): () => void {
    this.#observers.add(observer);
    return () => this.#observers.delete(observer);
  }

  /** How the stub should report a stop event. */
  classify(event: StopEvent): TargetStop {
    const thread = event.cpu + 1;
    switch (event.reason) {
      case "breakpoint":
        return { kind: "breakpoint", thread, hardware: event.kind === "hardware", event };
      case "watchpoint": {
        const asked = event.id === undefined ? undefined : this.#watchKinds.get(event.id);
        const access: WatchKind = asked ?? (event.access === "read" ? "read" : "write");
        return { kind: "watchpoint", thread, access, address: event.address, event };
      }
      case "step":
        return { kind: "step", thread, event };
      case "paused":
      case "timeout":
        return { kind: "interrupted", thread, event };
      case "history":
        return { kind: "history-begin", thread, event };
      case "exit":
        return { kind: "exited", status: event.code & 0xff, event };
      case "halt":
        return { kind: "exited", status: 0, event };
      case "shutdown":
        return { kind: "signal", thread, signal: SIGNALS.SIGSEGV, event };
      case "internal-error":
        return { kind: "signal", thread, signal: SIGNALS.SIGILL, event };
      default:
        return { kind: "signal", thread, signal: SIGNALS.SIGTRAP, event };
    }
  }

  dispose(): void {
    this.#unsubscribe();
    this.#observers.clear();
  }
}
