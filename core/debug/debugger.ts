/**
 * The debug engine: one interface that the scripting API (`vm.debug`), the
 * REPL and the gdbstub all use.
 *
 * Which path serves which host:
 * - Software breakpoints plant int3 (0xcc). Hardware KVM reports them as
 *   KVM_EXIT_DEBUG #BP (KVM_GUESTDBG_USE_SW_BP); nested/emulated KVM such as
 *   this project's CI host cannot emulate int3 and reports an emulation
 *   failure (KVM_EXIT_INTERNAL_ERROR, suberror 1) with rip at the int3. Both
 *   are recognised at planted addresses.
 * - Hardware breakpoints use DR0-DR3 (KVM_GUESTDBG_USE_HW_BP): #DB exits on
 *   every host seen.
 * - Watchpoints write-protect (write) or unmap (read, access) the watched
 *   pages in the KVM memory slots; the access exits as MMIO and hvsh
 *   completes it on the guest's behalf. This works on every host (DR7 data
 *   breakpoints never reach user space on nested KVM) and has no limit on
 *   count or size. Caveat: a read/access watchpoint unmaps its whole 4 KiB
 *   page, so it cannot sit in a page the guest executes from.
 * - Single-step uses KVM_GUESTDBG_SINGLESTEP, with KVM_GUESTDBG_BLOCKIRQ
 *   (interrupts masked during the step, like QEMU's NOIRQ) where KVM offers it.
 *
 * Every vCPU is debugged (all-stop, as gdb's default mode): breakpoints and
 * watchpoints apply to all of them (the debug registers are set on each
 * vCPU), a stop of any vCPU stops all and names it, and the debugger then
 * selects that vCPU ({@link Debugger.cpu}), which registers, memory
 * translation, stepping and backtraces use unless told another. A step runs
 * only the vCPU it steps, the others stay stopped (gdb's scheduler-locking
 * `step`); `cont`, `finish` and `until` run them all. Stepping one vCPU over
 * a breakpoint lifts the int3 while the others are held, so none runs past
 * it unseen.
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import type { Vcpu } from "../vcpu.ts";
import type { Registers } from "../kvm/structs.ts";
import type { DebugStop, PendingStop, StopEvent } from "../stop.ts";
import { KVM_GUESTDBG } from "../kvm/ioctls.ts";
import {
  type DebugExit,
  KVM_INTERNAL_ERROR,
  type MmioReadExit,
  type MmioWriteExit,
  type VcpuExit,
} from "../kvm/exit.ts";
import { SymbolTable } from "./symbols.ts";
import {
  decodeAccesses,
  type DecodedInstruction,
  decodeInstructions,
  formatListing,
  type InstructionAccesses,
  type MemoryAccess,
} from "./disasm.ts";
import { translate, type Translation } from "./paging.ts";
import { readElfSymbols } from "../loader/elf.ts";
import { hex } from "../hex.ts";
import { evaluateAddress } from "./expr.ts";
import { type Hook, type HookCallbacks, hookFunction } from "./hooks.ts";
import type { BreakCondition, Breakpoint, BreakpointOptions, WatchAccess, Watchpoint } from "./types.ts";
import type { RunOptions } from "../machine.ts";
import { History, type HistoryInfo, type RecordOptions, ReplayDivergenceError } from "./history.ts";
import { REPLAY_TIMEOUT_MS, type ReplayHost, Rewinder } from "./reverse.ts";

export type { BreakCondition, Breakpoint, BreakpointOptions, WatchAccess, Watchpoint } from "./types.ts";

/** A frame of {@link Debugger.backtrace}. */
export interface Frame {
  index: number;
  /** The frame's instruction pointer (return address for outer frames). */
  pc: bigint;
  /** Frame pointer value for this frame, when known. */
  frame: bigint | undefined;
  symbol: string | undefined;
}

/** One record of {@link Debugger.trace}. */
export interface TraceEntry {
  address: bigint;
  bytes: Uint8Array;
  text: string;
  symbol: string | undefined;
}

const INT3 = 0xcc;
const DR6_BS = 0x4000n;
const EMULATION_FAILURE = KVM_INTERNAL_ERROR.EMULATION;
const KVM_CAP_SET_GUEST_DEBUG2 = 195;
const MAX_HW_BREAKPOINTS = 4;
/** x86 legacy prefixes other than rep/repne (lock, operand and address size, segment overrides). */
const OTHER_PREFIXES = new Set([0xf0, 0x66, 0x67, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65]);
/** The guest-debug key of a vCPU nothing was set on. */
const NO_GUEST_DEBUG = "0:0,0,0,0,0,0,0,0";

/**
 * A breakpoint needs a debug register (DR0-DR3) and all four are in use.
 * The gdb stub answers it with ENOSPC, as gdb expects.
 */
export class NoDebugRegisterError extends RangeError {
  // Its name stays "RangeError": the REPL and scripts show it as before, callers branch with instanceof.
}

/** A register's value by its lower-case name (`rsp`, `ebx`, `r8d`, `si`), for computing memory operands. */
function registerValue(name: string | undefined, regs: Registers): bigint {
  if (name === undefined) return 0n;
  if (name in regs) return regs[name as keyof Registers];
  const legacy = /^e?([abcd]x|[sd]i|[sb]p|ip)$/.exec(name);
  if (legacy !== null) {
    const value = regs[`r${legacy[1]}` as keyof Registers];
    return name.startsWith("e") ? value & 0xffff_ffffn : value & 0xffffn;
  }
  const numbered = /^(r\d+)([dw])$/.exec(name);
  if (numbered !== null) {
    const value = regs[numbered[1] as keyof Registers];
    return numbered[2] === "d" ? value & 0xffff_ffffn : value & 0xffffn;
  }
  return 0n;
}

/** The debugger attached to each machine: `Debugger.for(machine)` shares it. */
const attached = new WeakMap<Machine, Debugger<Machine>>();

/** A step(N) in progress: the vCPU stepped, the steps left and taken, and a condition that ends it early. */
interface Stepping {
  cpu: number;
  remaining: number;
  taken: number;
  until?: ((cpu: Vcpu) => boolean) | undefined;
  matched?: boolean;
}

/** Which vCPU an operation acts on: its index or the vCPU itself; default the selected one ({@link Debugger.cpu}). */
export type CpuChoice = number | Vcpu;

/**
 * The debugger of one VM, every vCPU of it. Get it as `vm.debug`.
 *
 * @example
 * ```ts ignore
 * const vm = await Vm.create();
 * await vm.load("tests/guests/build/dbg64.elf");
 * vm.debug.break("bump");
 * const stop = await vm.run(); // { reason: "breakpoint", symbol: "bump", ... }
 * vm.debug.backtrace().map((f) => f.symbol); // ["bump", "level3+..", ...]
 * vm.debug.select(1); // act on vCPU 1: registers, stepping, backtraces
 * await vm.debug.step(); // steps vCPU 1 only; { reason: "step", cpu: 1, ... }
 * ```
 */
export class Debugger<M extends Machine = Machine> {
  /** Symbols of every loaded image and symbol file. */
  readonly symbols: SymbolTable = new SymbolTable();
  readonly #vm: M;
  readonly #detach: (() => void)[];
  #nextId = 1;
  #breakpoints = new Map<number, Breakpoint<M>>();
  #watchpoints = new Map<number, Watchpoint<M>>();
  /** Physical address -> breakpoints planted there. */
  #planted = new Map<number, Set<Breakpoint<M>>>();
  /** The vCPU operations act on by default: the one that stopped last, or the one {@link select}ed. */
  #selected = 0;
  /** vCPU index -> the rip where it reported its last stop: resuming steps it over a breakpoint there. */
  #stoppedAt = new Map<number, bigint>();
  /** The vCPU being stepped (it runs alone) and the instructions left. */
  #stepping: Stepping | undefined;
  /** The recording reverse execution replays (see {@link record}), and the reverse commands over it. */
  #history: History | undefined;
  #rewinder: Rewinder<M> | undefined;
  /** Reverse execution replays: every breakpoint and watchpoint is passed over, none stops the run. */
  #silenced = false;
  /** A vCPU whose breakpoint hit was not a stop (its condition was false): it steps over the breakpoint alone. */
  #passingOver: number | undefined;
  #onStep: ((cpu: Vcpu) => void) | undefined;
  /** A planted breakpoint lifted for one step of one vCPU (the others are held) to execute the instruction under it. */
  #steppingOver: { cpu: number; physical: number | undefined; hardware: boolean; address: bigint } | undefined;
  #blockIrq: number;
  #protectedPages = new Map<number, "readonly" | "none">();
  /**
   * A fetch-through step of one vCPU (the others held): the page mapped for it (once `mapped`), the
   * instruction, and the watched writes to check after.
   */
  #fetching:
    | {
      cpu: number;
      page: number;
      rip: bigint;
      mapped: boolean;
      writes: { wp: Watchpoint<M>; at: number; size: number; before: Uint8Array }[];
    }
    | undefined;
  /** The vCPU and rip of a read reported before a fetch-through: resuming runs it through without reporting it again. */
  #fetchPending: { cpu: number; rip: bigint } | undefined;
  /** vCPU index -> the linear rip its current single step began at (see #afterWrite). */
  readonly #stepFrom = new Map<number, bigint>();
  /** vCPU index -> the KVM_SET_GUEST_DEBUG arguments last given to it. */
  readonly #guestDebugKeys = new Map<number, string>();

  /**
   * The debugger of `machine`, attached on first use and shared by every
   * front end (`vm.debug`, the REPL, the gdb server).
   */
  static for<M extends Machine>(machine: M): Debugger<M> {
    return Debugger.attachedTo(machine) ?? new Debugger(machine);
  }

  /** The debugger attached to `machine`, or undefined when none is. */
  static attachedTo<M extends Machine>(machine: M): Debugger<M> | undefined {
    return attached.get(machine) as Debugger<M> | undefined;
  }

  /**
   * Attaches a debugger to `machine`'s run loop. A machine has one: a second
   * `new Debugger()` is refused with an error; {@link Debugger.for} shares it.
   */
  constructor(vm: M) {
    this.#vm = vm;
    this.#blockIrq = (vm.checkExtension(KVM_CAP_SET_GUEST_DEBUG2) & KVM_GUESTDBG.BLOCKIRQ) !== 0
      ? KVM_GUESTDBG.BLOCKIRQ
      : 0;
    this.#detach = [
      vm.interceptExits({
        beforeResume: (cpu) => this.#beforeResume(cpu),
        onRun: () => this.#history?.noteResume(this.#stepping?.cpu === 0),
        afterWrite: (cpu) => this.#afterWrite(cpu),
        onExit: (cpu, exit) => this.#onExit(cpu, exit),
        describe: (address) => this.symbols.describe(address),
      }),
      vm.onStop((stop) => this.#afterStop(stop)),
    ];
    attached.set(vm, this as unknown as Debugger<Machine>);
  }

  /** Detaches from the machine (breakpoints stay planted until deleted first). */
  detach(): void {
    for (const undo of this.#detach.splice(0)) undo();
    if (attached.get(this.#vm) === (this as unknown as Debugger<Machine>)) attached.delete(this.#vm);
  }

  // ---------------------------------------------------------------- vCPUs

  /**
   * The selected vCPU: the default of every operation that acts on one
   * (registers, translation, stepping, backtraces, disassembly). A stop
   * selects the vCPU that stopped (not a pause or a timeout, which keep the
   * choice); {@link select} picks another.
   */
  get cpu(): Vcpu {
    return this.#vm.cpu(this.#selected);
  }

  /** Selects vCPU `index` (see {@link cpu}); throws a RangeError naming the valid indices. */
  select(index: number): Vcpu {
    const cpu = this.#vm.cpu(index);
    this.#selected = cpu.index;
    return cpu;
  }

  #cpuOf(choice: CpuChoice | undefined): Vcpu {
    if (choice === undefined) return this.cpu;
    return typeof choice === "number" ? this.#vm.cpu(choice) : choice;
  }

  // ---------------------------------------------------------------- locations

  /**
   * Resolves a location: a number or bigint address, a symbol (`"bump"`),
   * `symbol+offset` (`"bump+4"`, `"bump+0x4"`), a hex/decimal string (`"0x100014"`, `"*0x100014"`: a
   * leading `*` is gdb's "the address", as in `break *0x100014`), or any address expression of
   * {@link evaluateAddress} (`"$rsp+8"`, `"*($rsp+8)"`).
   */
  resolve(location: bigint | number | string): bigint {
    if (typeof location === "bigint") return location;
    if (typeof location === "number") {
      if (!Number.isSafeInteger(location) || location < 0) throw new RangeError(`Invalid address ${location}`);
      return BigInt(location);
    }
    const text = location.trim().replace(/^\*/, "");
    if (/^(0x[0-9a-f]+|\d+)$/i.test(text)) return BigInt(text);
    return evaluateAddress(text, this, this.#vm.cpu(0)); // symbols, $registers, + - *, dereferences (expr.ts)
  }

  /** The address of a symbol; throws a RangeError naming an unknown one. */
  symbol(name: string): bigint {
    const address = this.symbols.lookup(name);
    if (address === undefined) throw new RangeError(`Unknown symbol ${JSON.stringify(name)}`);
    return address;
  }

  /** `symbol` or `symbol+offset` for an address, or undefined. */
  symbolize(address: bigint): string | undefined {
    return this.symbols.describe(address);
  }

  /** Loads symbols from an ELF file (e.g. for an image loaded flat); `bias` is added to each address. */
  async loadSymbols(source: string | Uint8Array, bias = 0n): Promise<number> {
    const bytes = typeof source === "string" ? await Deno.readFile(source) : source;
    const symbols = readElfSymbols(bytes, typeof source === "string" ? source : undefined);
    this.symbols.add(symbols.map((s) => ({ ...s, address: s.address + bias })));
    return symbols.length;
  }

  // ---------------------------------------------------------------- memory

  /** Walks the guest page tables for a virtual (linear) address. */
  translate(address: bigint | number | string, cpu: Vcpu = this.cpu): Translation {
    return translate(this.resolve(address), cpu.sregsView, this.#vm.memory);
  }

  /** The physical address of a virtual one; throws a RangeError naming the missing level. */
  physical(address: bigint, cpu: Vcpu = this.cpu): number {
    const t = translate(address, cpu.sregsView, this.#vm.memory);
    if (t.physical === undefined) throw new RangeError(`Cannot access virtual ${hex(address)}: ${t.fault}`);
    return Number(t.physical);
  }

  /** Reads guest memory by virtual address (page by page through the page tables); planted bytes read as originals. */
  readVirtual(address: bigint | number | string, length: number, cpu: Vcpu = this.cpu): Uint8Array {
    const start = this.resolve(address);
    const out = new Uint8Array(length);
    const sregs = cpu.sregsView;
    let done = 0;
    while (done < length) {
      const at = start + BigInt(done);
      const t = translate(at, sregs, this.#vm.memory);
      if (t.physical === undefined) throw new RangeError(`Cannot read virtual ${hex(at)}: ${t.fault}`);
      const chunk = Math.min(length - done, 0x1000 - Number(at & 0xfffn));
      out.set(this.#vm.memory.read(t.physical, chunk), done);
      done += chunk;
    }
    return out;
  }

  /** Writes guest memory by virtual address. */
  writeVirtual(address: bigint | number | string, bytes: Uint8Array, cpu: Vcpu = this.cpu): void {
    const start = this.resolve(address);
    const sregs = cpu.sregs;
    const pieces: [bigint, Uint8Array][] = [];
    let done = 0;
    while (done < bytes.length) {
      const at = start + BigInt(done);
      const t = translate(at, sregs, this.#vm.memory);
      if (t.physical === undefined) throw new RangeError(`Cannot write virtual ${hex(at)}: ${t.fault}`);
      const chunk = Math.min(bytes.length - done, 0x1000 - Number(at & 0xfffn));
      if (!this.#vm.memory.isRam(t.physical, chunk)) {
        throw new RangeError(`Cannot write virtual ${hex(at)}: physical ${hex(t.physical)} is not RAM`);
      }
      pieces.push([t.physical, bytes.subarray(done, done + chunk)]);
      done += chunk;
    }
    for (const [physical, piece] of pieces) this.#vm.memory.write(physical, piece);
  }

  /**
   * Finds a byte pattern (a string is searched as UTF-8) in guest memory:
   * physical RAM by default, or `length` bytes of virtual memory from `start`.
   * Returns up to `limit` (default 100) addresses; planted breakpoints read as
   * the original bytes.
   */
  search(
    pattern: string | Uint8Array | readonly number[],
    options: { start?: bigint | number | string; length?: number; virtual?: boolean; limit?: number } = {},
  ): bigint[] {
    const needle = typeof pattern === "string" ? new TextEncoder().encode(pattern) : Uint8Array.from(pattern);
    if (needle.length === 0) throw new RangeError("Cannot search for an empty pattern");
    const limit = options.limit ?? 100;
    const found: bigint[] = [];
    const scan = (bytes: Uint8Array, base: bigint) => {
      for (
        let at = bytes.indexOf(needle[0]!);
        at >= 0 && found.length < limit;
        at = bytes.indexOf(needle[0]!, at + 1)
      ) {
        if (at + needle.length > bytes.length) break;
        let match = true;
        for (let i = 1; i < needle.length && match; i++) match = bytes[at + i] === needle[i];
        if (match) found.push(base + BigInt(at));
      }
    };
    if (options.virtual) {
      const start = this.resolve(options.start ?? 0n);
      scan(this.readVirtual(start, options.length ?? 0x1000), start);
      return found;
    }
    const memory = this.#vm.memory;
    const chunk = 1 << 20;
    for (const region of memory.regions) {
      const from = options.start === undefined
        ? region.base
        : Math.max(region.base, Number(this.resolve(options.start)));
      const to = Math.min(region.base + region.size, options.length === undefined ? Infinity : from + options.length);
      // Chunks overlap by the pattern's length so a match across a boundary is not missed.
      for (let at = from; at < to && found.length < limit; at += chunk) {
        const length = Math.min(chunk + needle.length - 1, to - at);
        const before = found.length;
        scan(memory.read(at, length), BigInt(at));
        // A match in the overlap is found again by the next chunk: drop the duplicate.
        if (found.length > before && found.at(-1)! >= BigInt(at + chunk)) found.pop();
      }
    }
    return found;
  }

  // ---------------------------------------------------------------- breakpoints

  /**
   * Sets a software breakpoint at an address or symbol. While the vCPU is in
   * real mode a free debug register serves it instead: nested KVM emulates a
   * real-mode int3 as the guest's own INT 3 and never reports it.
   */
  break(location: bigint | number | string, options: BreakpointOptions<M> = {}): Breakpoint<M> {
    const address = this.resolve(location);
    if (this.cpu.mode === "real") {
      if (this.#hardwareBreakpoints().length >= MAX_HW_BREAKPOINTS) {
        throw new NoDebugRegisterError(
          `Cannot set a breakpoint at ${
            hex(address)
          } in real mode: int3 is not reported there on every host and all four debug registers are in use`,
        );
      }
      return this.#addBreakpoint("hardware", address, options, false);
    }
    return this.#addBreakpoint("software", address, options, false);
  }

  /** Sets a hardware breakpoint (DR0-DR3); a fifth one is refused with a RangeError. */
  hbreak(location: bigint | number | string, options: BreakpointOptions<M> = {}): Breakpoint<M> {
    const used = [...this.#breakpoints.values()].filter((b) => b.kind === "hardware").length;
    if (used >= MAX_HW_BREAKPOINTS) {
      throw new NoDebugRegisterError(
        `Cannot set a hardware breakpoint: all ${MAX_HW_BREAKPOINTS} debug registers (DR0-DR3) are in use; delete one or use a software breakpoint`,
      );
    }
    return this.#addBreakpoint("hardware", this.resolve(location), options, false);
  }

  #addBreakpoint(
    kind: "software" | "hardware",
    address: bigint,
    options: BreakpointOptions<M>,
    internal: boolean,
    cpu: Vcpu = this.cpu,
  ): Breakpoint<M> {
    const physical = kind === "software" ? this.physical(address, cpu) : undefined;
    const bp: Breakpoint<M> = {
      id: internal ? -1 : this.#nextId++,
      kind,
      address,
      physical,
      symbol: this.symbols.describe(address),
      enabled: true,
      hits: 0,
      once: options.once ?? false,
      condition: options.condition,
      conditionText: options.conditionText,
      internal,
    };
    if (!internal) this.#breakpoints.set(bp.id, bp);
    if (physical !== undefined) this.#plant(bp);
    this.#applyGuestDebug();
    return bp;
  }

  #plant(bp: Breakpoint<M>): void {
    const physical = bp.physical!;
    let set = this.#planted.get(physical);
    if (set === undefined) {
      set = new Set();
      this.#planted.set(physical, set);
    }
    set.add(bp);
    if (this.#steppingOver?.physical !== physical) this.#vm.memory.plant(physical, INT3);
  }

  #unplant(bp: Breakpoint<M>): void {
    const physical = bp.physical!;
    const set = this.#planted.get(physical);
    if (set === undefined) return;
    set.delete(bp);
    if (set.size === 0) {
      this.#planted.delete(physical);
      this.#vm.memory.unplant(physical);
    }
  }

  /** Deletes a breakpoint or watchpoint by id; throws a RangeError for an unknown id. */
  delete(id: number): void {
    const bp = this.#breakpoints.get(id);
    if (bp !== undefined) {
      this.#breakpoints.delete(id);
      if (bp.physical !== undefined && bp.enabled) this.#unplant(bp);
      this.#applyGuestDebug();
      return;
    }
    const wp = this.#watchpoints.get(id);
    if (wp !== undefined) {
      this.#watchpoints.delete(id);
      this.#updateProtection();
      return;
    }
    throw new RangeError(`No breakpoint or watchpoint ${id}${this.#idsText()}`);
  }

  #idsText(): string {
    const ids = [...this.#breakpoints.keys(), ...this.#watchpoints.keys()].sort((a, b) => a - b);
    return ids.length === 0 ? " (there are none)" : ` (ids: ${ids.join(", ")})`;
  }

  /** Enables or disables a breakpoint or watchpoint. */
  enable(id: number, enabled = true): void {
    const bp = this.#breakpoints.get(id);
    if (bp !== undefined) {
      if (bp.enabled === enabled) return;
      bp.enabled = enabled;
      if (bp.physical !== undefined) enabled ? this.#plant(bp) : this.#unplant(bp);
      this.#applyGuestDebug();
      return;
    }
    const wp = this.#watchpoints.get(id);
    if (wp === undefined) throw new RangeError(`No breakpoint or watchpoint ${id}${this.#idsText()}`);
    wp.enabled = enabled;
    this.#updateProtection();
  }

  /** Disables a breakpoint or watchpoint. */
  disable(id: number): void {
    this.enable(id, false);
  }

  /** Deletes every breakpoint and watchpoint. */
  clear(): void {
    for (const id of [...this.#breakpoints.keys(), ...this.#watchpoints.keys()]) this.delete(id);
  }

  /** Breakpoints in id order. */
  get breakpoints(): Breakpoint<M>[] {
    return [...this.#breakpoints.values()];
  }

  /** Watchpoints in id order. */
  get watchpoints(): Watchpoint<M>[] {
    return [...this.#watchpoints.values()];
  }

  /**
   * Hooks a function without ever stopping the guest (Frida's Interceptor.attach):
   * `onEnter` runs at its entry, `onLeave` when it returns. See hooks.ts.
   *
   * @example
   * ```ts ignore
   * const hook = vm.debug.hook("bump", { onEnter: (ctx) => console.log("bump", ctx.arg(0)) });
   * ```
   */
  hook(location: bigint | number | string, callbacks: HookCallbacks): Hook {
    return hookFunction(this, this.#vm, location, callbacks);
  }

  // ---------------------------------------------------------------- watchpoints

  /**
   * Watches `length` bytes (any size) at an address or symbol for reads,
   * writes or both. Any number of watchpoints may be set.
   */
  watch(
    location: bigint | number | string,
    length = 8,
    access: WatchAccess = "write",
    options: { condition?: BreakCondition<M> } = {},
  ): Watchpoint<M> {
    if (!["read", "write", "access"].includes(access)) {
      throw new RangeError(`Invalid watch access ${JSON.stringify(access)}: expected read, write or access`);
    }
    if (!Number.isInteger(length) || length < 1 || length > 1 << 20) {
      throw new RangeError(`Invalid watch length ${length}: expected 1 to 1 MiB`);
    }
    if (access === "write" && !this.#vm.supportsReadonlyPages) {
      throw new Error("Cannot watch writes: this KVM has no read-only memory slots (KVM_CAP_READONLY_MEM)");
    }
    const address = this.resolve(location);
    const physical = this.physical(address);
    for (let page = physical & ~0xfff; page < physical + length; page += 0x1000) {
      if (!this.#vm.memory.isRam(page, 0x1000)) throw new RangeError(`Cannot watch ${hex(address)}: not in RAM`);
    }
    const wp: Watchpoint<M> = {
      id: this.#nextId++,
      address,
      physical,
      length,
      access,
      symbol: this.symbols.describe(address),
      enabled: true,
      hits: 0,
      condition: options.condition,
    };
    this.#watchpoints.set(wp.id, wp);
    this.#updateProtection();
    return wp;
  }

  #updateProtection(): void {
    const pages = new Map<number, "readonly" | "none">();
    for (const wp of this.#watchpoints.values()) {
      if (!wp.enabled) continue;
      for (let page = wp.physical & ~0xfff; page < wp.physical + wp.length; page += 0x1000) {
        if (wp.access !== "write") pages.set(page, "none");
        else if (!pages.has(page)) pages.set(page, "readonly");
      }
    }
    const same = pages.size === this.#protectedPages.size &&
      [...pages].every(([page, kind]) => this.#protectedPages.get(page) === kind);
    if (same) return;
    this.#vm.setPageProtection(pages);
    this.#protectedPages = pages;
  }

  /** Completes an access to a protected page and decides whether it stops. */
  #onWatchedAccess(cpu: Vcpu, exit: MmioReadExit | MmioWriteExit): PendingStop | "resume" | undefined {
    const address = exit.address;
    const page = Number(address & ~0xfffn);
    if (!this.#protectedPages.has(page)) return undefined;
    const size = exit.size;
    const isWrite = exit.kind === "mmio-write";
    if (isWrite && cpu.index === 0) this.#history?.noteEmulatedWrite();
    const at = Number(address);
    const memory = this.#vm.memory;
    const hits = [...this.#watchpoints.values()].filter((wp) =>
      !this.#silenced && wp.enabled && (isWrite ? wp.access !== "read" : wp.access !== "write") &&
      at < wp.physical + wp.length && wp.physical < at + size
    );
    const before = hits.map((wp) => memory.readRaw(wp.physical, Math.min(wp.length, 8)));
    if (exit.kind === "mmio-write") {
      memory.view(at, size).set(exit.bytes);
    } else {
      exit.reply(memory.view(at, size).reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n));
    }
    for (let i = 0; i < hits.length; i++) {
      const wp = hits[i]!;
      if (wp.condition !== undefined && !this.#evaluate(wp.condition, cpu, `watchpoint ${wp.id}`)) continue;
      cpu.invalidate();
      // A read exits before the instruction completes (rip is on it); a write exits after it.
      const site = exit.kind === "mmio-write" ? this.#writeSite(cpu, at, exit.bytes) : { pc: this.#ripLinear(cpu) };
      return this.#watchStop(wp, isWrite ? "write" : "read", at, size, before[i]!, site);
    }
    return "resume";
  }

  /** The stop of watchpoint `wp`: the access, its values before and now, and the instruction that made it. */
  #watchStop(
    wp: Watchpoint<M>,
    access: "read" | "write",
    at: number,
    size: number,
    before: Uint8Array,
    site: { pc: bigint } | { unknown: string },
  ): PendingStop {
    wp.hits++;
    const toValue = (bytes: Uint8Array) => bytes.reduceRight((v, b) => (v << 8n) | BigInt(b), 0n);
    const stop: DebugStop = {
      reason: "watchpoint",
      id: wp.id,
      address: wp.address,
      access,
      dataAddress: BigInt(at),
      size,
      oldValue: toValue(before),
      newValue: toValue(this.#vm.memory.readRaw(wp.physical, Math.min(wp.length, 8))),
    } as DebugStop;
    if ("pc" in site) stop.pc = site.pc;
    else stop.pcUnknown = site.unknown;
    return stop as PendingStop;
  }

  /**
   * The guest fetched an instruction from a page a read/access watchpoint
   * unmapped (tiny kernels keep code and data in the same pages). The
   * instruction's own accesses are computed from its operands before it
   * runs: a watched read stops now, at that instruction. Otherwise the page
   * is mapped for one single step and unmapped again; a watched write the
   * step made to that page stops after it, naming the instruction.
   */
  #fetchThrough(cpu: Vcpu, page: number, rip: bigint): PendingStop | "alone" {
    const pending = this.#fetchPending?.cpu === cpu.index ? this.#fetchPending.rip : undefined;
    this.#fetchPending = undefined;
    const writes: { wp: Watchpoint<M>; at: number; size: number; before: Uint8Array }[] = [];
    let insn: InstructionAccesses | undefined;
    try {
      insn = decodeAccesses(this.readVirtual(rip, 15, cpu), rip, cpu.bitness);
    } catch {
      insn = undefined;
    }
    for (const access of insn?.accesses ?? []) {
      const range = this.#operandRange(cpu, insn!, access);
      if (range === undefined) continue;
      for (const wp of this.#watchpoints.values()) {
        if (
          this.#silenced || !wp.enabled || !(range.at < wp.physical + wp.length && wp.physical < range.at + range.size)
        ) continue;
        const reads = access.kind !== "write" && wp.access !== "write";
        const writes_ = access.kind !== "read" && wp.access !== "read";
        if (reads && pending !== rip) {
          if (wp.condition !== undefined && !this.#evaluate(wp.condition, cpu, `watchpoint ${wp.id}`)) continue;
          // Resuming from this stop runs the instruction through without reporting the read again.
          this.#fetchPending = { cpu: cpu.index, rip };
          const before = this.#vm.memory.readRaw(wp.physical, Math.min(wp.length, 8));
          return this.#watchStop(wp, "read", Math.max(range.at, wp.physical), range.size, before, { pc: rip });
        }
        if (writes_) {
          writes.push({
            wp,
            at: Math.max(range.at, wp.physical),
            size: range.size,
            before: this.#vm.memory.readRaw(wp.physical, Math.min(wp.length, 8)),
          });
        }
      }
    }
    // The page is mapped by beforeResume, once the other vCPUs are held: none of them may access it unseen.
    this.#fetching = { cpu: cpu.index, page, rip, writes, mapped: false };
    return "alone";
  }

  /** Ends a fetch-through step: the page is unmapped again; a watched write the step made stops here. */
  #endFetchThrough(cpu: Vcpu): PendingStop | undefined {
    const fetching = this.#fetching;
    if (fetching?.cpu !== cpu.index) return undefined;
    this.#fetching = undefined;
    if (fetching.mapped) this.#vm.setPageProtection(this.#protectedPages);
    for (const { wp, at, size, before } of fetching.writes) {
      const now = this.#vm.memory.readRaw(wp.physical, Math.min(wp.length, 8));
      if (now.every((byte, i) => byte === before[i])) continue;
      if (wp.condition !== undefined && !this.#evaluate(wp.condition, cpu, `watchpoint ${wp.id}`)) continue;
      return this.#watchStop(wp, "write", at, size, before, { pc: fetching.rip });
    }
    return undefined;
  }

  /** The guest-physical bytes an operand of the instruction at rip will access (registers as they are before it runs). */
  #operandRange(cpu: Vcpu, insn: InstructionAccesses, access: MemoryAccess): { at: number; size: number } | undefined {
    const regs = cpu.regs;
    const sregs = cpu.sregsView;
    const long = cpu.bitness === 64;
    const mask = long ? 0xffff_ffff_ffff_ffffn : cpu.bitness === 32 ? 0xffff_ffffn : 0xffffn;
    const size = access.size || insn.elementSize || 1;
    const index = access.index === undefined ? 0n : registerValue(access.index, regs) * BigInt(access.scale);
    const segment = access.segment === undefined || (long && !["fs", "gs"].includes(access.segment))
      ? 0n
      : sregs[access.segment as "fs" | "gs"].base;
    const offset = (registerValue(access.base, regs) + index + access.displacement) & mask;
    const t = translate(segment + offset, sregs, this.#vm.memory);
    return t.physical === undefined ? undefined : { at: Number(t.physical), size };
  }

  /**
   * The instruction that wrote `written` at guest-physical `physical`, found
   * exactly or not at all. A write to a watched page exits after the
   * instruction (rip is past it, or at a call's target, or still on a `rep`
   * string instruction with iterations left), so rip alone does not say
   * which instruction wrote. Each candidate (the string instruction at rip,
   * every decoding that ends at rip, a call that ends at the return address
   * being pushed) is checked by computing its memory operands from the
   * registers it left; only a single candidate that wrote exactly there is
   * named. Writes by interrupt or exception delivery, and ambiguous
   * decodings, are reported as unknown.
   */
  #writeSite(cpu: Vcpu, physical: number, written: Uint8Array): { pc: bigint } | { unknown: string } {
    const rip = this.#ripLinear(cpu);
    const candidates: { insn: InstructionAccesses; mustCall: boolean }[] = [];
    const decodeAt = (address: bigint, length: number | undefined, mustCall: boolean) => {
      try {
        const insn = decodeAccesses(this.readVirtual(address, 15, cpu), address, cpu.bitness);
        if (insn !== undefined && (length === undefined || insn.length === length)) candidates.push({ insn, mustCall });
      } catch {
        // unreadable: not a candidate
      }
    };
    decodeAt(rip, undefined, false);
    for (let length = 1; length <= 15; length++) decodeAt(rip - BigInt(length), length, false);
    if (written.length >= 2) {
      // A call writes its return address: the call ends there.
      const returnAddress = written.reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n);
      for (let length = 2; length <= 15; length++) decodeAt(returnAddress - BigInt(length), length, true);
    }
    const sites = new Set<bigint>();
    const calls = new Set<bigint>();
    for (const { insn, mustCall } of candidates) {
      if (mustCall && !insn.isCall) continue;
      if (!mustCall && insn.address === rip && !insn.isString) continue; // not yet executed
      if (!this.#writesAt(cpu, insn, physical, written.length)) continue;
      sites.add(insn.address);
      if (mustCall) calls.add(insn.address);
    }
    // A call that pushed its own end as the return address is conclusive, whatever else decodes before rip.
    if (calls.size === 1) return { pc: [...calls][0]! };
    if (sites.size === 1) return { pc: [...sites][0]! };
    return {
      unknown: sites.size === 0
        ? `no instruction before rip ${
          hex(rip)
        } writes there (an interrupt or exception pushed it, or a jump came first)`
        : `${sites.size} instructions could have written it (${[...sites].map((a) => hex(a)).join(", ")})`,
    };
  }

  /**
   * Whether an instruction that has just run wrote `accessSize` bytes at guest-physical `physical`, by its
   * operands and the registers now (the size tells `mov [x], eax` from the `mov [x], rax` it overlaps).
   */
  #writesAt(cpu: Vcpu, insn: InstructionAccesses, physical: number, accessSize: number): boolean {
    const regs = cpu.regs;
    const sregs = cpu.sregsView;
    const long = cpu.bitness === 64;
    const mask = long ? 0xffff_ffff_ffff_ffffn : cpu.bitness === 32 ? 0xffff_ffffn : 0xffffn;
    for (const access of insn.accesses) {
      if (access.kind === "read") continue;
      const size = access.size || insn.elementSize || 1;
      // KVM splits an access that crosses a page; otherwise it reports the operand's size.
      if (accessSize !== 0 && size !== accessSize && (physical & 0xfff) + size <= 0x1000) continue;
      let bases = [registerValue(access.base, regs)];
      if (access.base !== undefined && /^[re]?sp$/.test(access.base)) {
        // The stack pointer the instruction started with.
        bases = [bases[0]! - BigInt(insn.stackPointerIncrement)];
      } else if (insn.isString) {
        // rdi has moved by one element after each iteration, either way (DF).
        bases = [bases[0]!, bases[0]! - BigInt(size), bases[0]! + BigInt(size)];
      }
      const index = access.index === undefined ? 0n : registerValue(access.index, regs) * BigInt(access.scale);
      const segment = access.segment === undefined || (long && !["fs", "gs"].includes(access.segment))
        ? 0n
        : sregs[access.segment as "fs" | "gs"].base;
      for (const base of bases) {
        const offset = (base + index + access.displacement) & mask;
        const t = translate(segment + offset, sregs, this.#vm.memory);
        if (t.physical === undefined) continue;
        const start = Number(t.physical);
        if (start <= physical && physical < start + size) return true;
      }
    }
    return false;
  }

  // ---------------------------------------------------------------- execution

  /** Continues the guest, every vCPU (same as `vm.run()`). */
  cont(options: { timeout?: number } = {}): Promise<StopEvent> {
    return this.#vm.run(options);
  }

  /**
   * Executes `count` instructions on one vCPU (default the selected one);
   * the others stay stopped. Interrupts are masked during steps where KVM
   * allows.
   */
  step(count = 1, options: { cpu?: CpuChoice } = {}): Promise<StopEvent> {
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`Invalid step count ${count}: expected >= 1`);
    const cpu = this.#cpuOf(options.cpu);
    this.#stepping = { cpu: cpu.index, remaining: count, taken: 0 };
    return this.#vm.run({ only: cpu.index }).catch((error) => {
      this.#stepping = undefined;
      throw error;
    });
  }

  /**
   * Steps one instruction of a vCPU (default the selected one), stepping
   * over calls and rep-prefixed string instructions; the others stay stopped.
   */
  async next(options: { cpu?: CpuChoice } = {}): Promise<StopEvent> {
    const cpu = this.#cpuOf(options.cpu);
    const rip = this.#ripLinear(cpu);
    const insn = this.#instructionAt(cpu, rip);
    if (insn === undefined || !(insn.isCall || insn.isRep)) return this.step(1, { cpu });
    const rsp = cpu.regs.rsp;
    return await this.#runTo(rip + BigInt(insn.length), cpu, (c) => c.regs.rsp >= rsp, { only: cpu.index });
  }

  /** Runs (every vCPU) until the current function of a vCPU (default the selected one) returns to its caller. */
  async finish(options: { cpu?: CpuChoice } = {}): Promise<StopEvent> {
    const cpu = this.#cpuOf(options.cpu);
    const { returnAddress, frameRsp } = this.#currentReturn(cpu);
    return await this.#runTo(returnAddress, cpu, (c) => c.regs.rsp > frameRsp, {});
  }

  /** Runs (every vCPU) until a vCPU (default the selected one) reaches `location` (a temporary breakpoint). */
  until(location: bigint | number | string, options: { cpu?: CpuChoice } = {}): Promise<StopEvent> {
    return this.#runTo(this.resolve(location), this.#cpuOf(options.cpu), undefined, {});
  }

  // ---------------------------------------------------------------- reverse execution

  /**
   * Starts recording the guest's run so it can be run backwards
   * ({@link reverseStep}, {@link reverseContinue}, {@link reverseNext},
   * {@link reverseFinish}); the start of the history is the current state.
   * Needs a VM with one vCPU and no virtio devices (see core/debug/history.ts
   * for what a recording can and cannot reproduce).
   *
   * @example
   * ```ts ignore
   * vm.debug.record();
   * vm.debug.break("tick");
   * await vm.run(); await vm.run(); // the second hit of tick
   * await vm.debug.reverseContinue(); // back at the first, memory as it was then
   * await vm.debug.reverseStep(); // the instruction before it
   * ```
   */
  record(options: RecordOptions = {}): HistoryInfo {
    if (this.#history !== undefined && !this.#history.closed) {
      throw new Error(`Already recording ${this.#vm.name} (stopRecording() first)`);
    }
    if (this.#vm.running) throw new Error(`Cannot start recording: ${this.#vm.name} is running (pause it first)`);
    const history = new History(this.#vm, options);
    this.#history = history;
    this.#rewinder = new Rewinder(this.#replayHost(), history);
    this.#applyGuestDebug();
    return history.info();
  }

  /** What the recording holds, or undefined when nothing is recorded. */
  get recording(): HistoryInfo | undefined {
    return this.#history === undefined || this.#history.closed ? undefined : this.#history.info();
  }

  /**
   * Stops recording and drops the history. When the guest is in the past,
   * it first goes back to where the recording ended (the devices are there).
   */
  stopRecording(): void {
    const history = this.#history;
    if (history === undefined || history.closed) return;
    if (this.#vm.running) throw new Error(`Cannot stop recording: ${this.#vm.name} is running (pause it first)`);
    this.#history = undefined;
    this.#rewinder = undefined;
    try {
      if (history.replaying) history.restore(history.checkpointCount - 1);
    } finally {
      history.close();
      this.#applyGuestDebug();
    }
  }

  /**
   * Runs backwards `count` instructions of the guest (vCPU 0): registers and
   * memory become what they were before them. At the start of the history
   * the stop is `{ reason: "history", edge: "begin" }`.
   */
  reverseStep(count = 1): Promise<StopEvent> {
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`Invalid step count ${count}: expected >= 1`);
    return this.#reverse((rewinder) => rewinder.step(count));
  }

  /**
   * Runs backwards until a breakpoint would have stopped the guest, or a
   * write watchpoint's memory changed: "who last wrote this?" stops before
   * the instruction that wrote it, with rip on it. Without either, or when
   * nothing matches, it stops at the start of the history.
   */
  reverseContinue(): Promise<StopEvent> {
    return this.#reverse((rewinder) => rewinder.continue());
  }

  /**
   * Runs backwards one instruction, over calls: when the instruction before
   * is a callee's `ret`, it goes back to the call.
   */
  reverseNext(): Promise<StopEvent> {
    return this.#reverse((rewinder) => rewinder.next());
  }

  /** Runs backwards to the call of the current function (gdb's `reverse-finish`). */
  reverseFinish(): Promise<StopEvent> {
    return this.#reverse((rewinder) => rewinder.finish());
  }

  /** What the reverse commands use of this debugger (core/debug/reverse.ts). */
  #replayHost(): ReplayHost<M> {
    return {
      machine: this.#vm,
      quietRun: (options, silenced) => this.#quietRun(options, silenced),
      quietStep: (count, until) => this.#quietStep(count, until),
      ripLinear: (cpu) => this.#ripLinear(cpu),
      instructionAt: (cpu, address) => this.#instructionAt(cpu, address),
      currentReturn: (cpu) => this.#currentReturn(cpu),
      evaluate: (condition, cpu, what) => this.#evaluate(condition, cpu, what),
      breakpoints: () => [...this.#breakpoints.values()],
      watchpoints: () => [...this.#watchpoints.values()],
      forgetStop: (cpu) => this.#stoppedAt.delete(cpu),
    };
  }

  /** Runs a reverse command: the machine must be stopped and recording; a divergence puts the guest back at the end. */
  async #reverse(action: (rewinder: Rewinder<M>) => Promise<PendingStop>): Promise<StopEvent> {
    const history = this.#history;
    const rewinder = this.#rewinder;
    if (history === undefined || history.closed || rewinder === undefined) {
      throw new Error(
        `Cannot run ${this.#vm.name} backwards: it is not being recorded (vm.debug.record(), .record in the REPL, ` +
          "monitor record in gdb, or hvsh boot --record)",
      );
    }
    if (history.broken !== undefined) throw new Error(`Cannot run ${this.#vm.name} backwards: ${history.broken}`);
    if (this.#vm.running) throw new Error(`Cannot run ${this.#vm.name} backwards: it is running (pause it first)`);
    let pending: PendingStop;
    try {
      pending = await action(rewinder);
    } catch (error) {
      if (error instanceof ReplayDivergenceError || history.broken !== undefined) {
        // Back to where the recording ended: the devices are in that moment's state.
        if (history.checkpointCount > 0) history.restore(history.checkpointCount - 1);
        this.#vm.reportStop(0, { reason: "paused", by: "history" });
      }
      throw error;
    }
    return this.#vm.reportStop(0, pending);
  }

  /** A run of hvsh's own: nobody is told of its stop; every breakpoint and watchpoint is passed over unless not `silenced`. */
  async #quietRun(options: RunOptions, silenced = true): Promise<StopEvent> {
    this.#silenced = silenced;
    // The stops the devices asked for when recorded (the debug-exit port) belong to the user's runs, not these.
    this.#history?.reproduceStops(false);
    let stop: StopEvent;
    try {
      stop = await this.#vm.run({ ...options, quiet: true });
    } catch (error) {
      this.#stepping = undefined;
      throw error;
    } finally {
      this.#silenced = false;
      this.#history?.reproduceStops(true);
    }
    this.#afterStop(stop);
    return stop;
  }

  /** Single-steps vCPU 0 silently, at most `count` instructions or until `until` holds after one; true when it did. */
  async #quietStep(count: number, until?: (cpu: Vcpu) => boolean): Promise<boolean> {
    const stepping: Stepping = { cpu: 0, remaining: count, taken: 0, until };
    this.#stepping = stepping;
    const stop = await this.#quietRun({ only: 0, timeout: REPLAY_TIMEOUT_MS });
    if (stop.reason !== "step") return false;
    return until === undefined ? stepping.remaining === 0 : stepping.matched === true;
  }

  /**
   * Whether the instruction at a linear address starts with a rep or repne
   * prefix among its prefixes: a test of a few bytes before decoding it
   * (iced-x86 took ~7 µs a call, paid on every hit of a breakpoint on a
   * `jmp .`).
   */
  #hasRepPrefix(cpu: Vcpu, address: bigint): boolean {
    let bytes: Uint8Array;
    try {
      bytes = this.readVirtual(address, 15, cpu);
    } catch {
      return false;
    }
    const rex = cpu.bitness === 64;
    for (const byte of bytes) {
      if (byte === 0xf2 || byte === 0xf3) return true;
      if (!OTHER_PREFIXES.has(byte) && !(rex && (byte & 0xf0) === 0x40)) return false;
    }
    return false;
  }

  /** The instruction at a linear address as `cpu` sees it, or undefined when unreadable. */
  #instructionAt(cpu: Vcpu, address: bigint): DecodedInstruction | undefined {
    try {
      return decodeInstructions(this.readVirtual(address, 15, cpu), address, cpu.bitness, 1)[0];
    } catch {
      return undefined;
    }
  }

  /** Runs until `cpu` reaches `address` with `condition` true (other vCPUs pass there as if nothing were set). */
  async #runTo(
    address: bigint,
    cpu: Vcpu,
    condition: BreakCondition<M> | undefined,
    runOptions: { only?: number },
  ): Promise<StopEvent> {
    const mine: BreakCondition<M> = (c, vm) => c === cpu && (condition === undefined || condition(c, vm));
    const options: BreakpointOptions<M> = { condition: mine };
    // A free debug register serves every host and mode (int3 in real mode is emulated as INT 3 on nested KVM).
    const hardware = this.#hardwareBreakpoints().length < MAX_HW_BREAKPOINTS;
    const temp = this.#addBreakpoint(hardware ? "hardware" : "software", address, options, true, cpu);
    if (hardware) this.#internalHardware = temp;
    try {
      return await this.#vm.run(runOptions);
    } finally {
      if (hardware) {
        this.#internalHardware = undefined;
        this.#applyGuestDebug();
      } else {
        this.#unplant(temp);
      }
    }
  }

  #currentReturn(cpu: Vcpu): { returnAddress: bigint; frameRsp: bigint } {
    const regs = cpu.regs;
    const width = cpu.bitness === 64 ? 8 : 4;
    const read = (address: bigint) => this.#readWord(address, width);
    const found = this.symbols.find(regs.rip);
    if (found !== undefined && found.offset === 0n) {
      return { returnAddress: read(regs.rsp), frameRsp: regs.rsp };
    }
    const firstByte = found === undefined ? undefined : this.readVirtual(found.symbol.address, 1, cpu)[0];
    if (found !== undefined && found.offset === 1n && firstByte === 0x55) {
      return { returnAddress: read(regs.rsp + BigInt(width)), frameRsp: regs.rsp + BigInt(width) };
    }
    if (regs.rbp === 0n) {
      throw new RangeError("Cannot finish: no frame pointer (rbp is 0) and rip is not at a function entry");
    }
    return { returnAddress: read(regs.rbp + BigInt(width)), frameRsp: regs.rbp + BigInt(width) };
  }

  #readWord(address: bigint, width: number): bigint {
    const bytes = this.readVirtual(address, width);
    return bytes.reduceRight((v, b) => (v << 8n) | BigInt(b), 0n);
  }

  /**
   * Records `count` instructions by single-stepping: address, bytes, text.
   * With `file`, also writes one line per instruction there.
   */
  async trace(
    count: number,
    options: { file?: string; cpu?: CpuChoice } = {},
  ): Promise<{ entries: TraceEntry[]; stop: StopEvent }> {
    const entries: TraceEntry[] = [];
    const record = (cpu: Vcpu) => {
      const rip = this.#ripLinear(cpu);
      let bytes: Uint8Array = new Uint8Array(0);
      try {
        bytes = this.readVirtual(rip, 15, cpu);
      } catch {
        // unmapped rip: record the address alone
      }
      const [insn] = bytes.length > 0
        ? decodeInstructions(bytes, rip, cpu.bitness, 1, (a) => this.symbols.describe(a))
        : [];
      entries.push({
        address: rip,
        bytes: insn?.bytes ?? bytes,
        text: insn?.text ?? "(unreadable)",
        symbol: this.symbols.describe(rip),
      });
    };
    const first = this.#cpuOf(options.cpu);
    record(first);
    this.#onStep = record;
    let stop: StopEvent;
    try {
      stop = await this.step(count, { cpu: first });
    } finally {
      this.#onStep = undefined;
    }
    if (stop.reason === "step") entries.pop(); // the last record is where the trace stopped, not executed
    if (options.file !== undefined) {
      const lines = entries.map((e) =>
        `${hex(e.address)}${e.symbol === undefined ? "" : ` <${e.symbol}>`}: ${
          [...e.bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ")
        }  ${e.text}`
      );
      await Deno.writeTextFile(options.file, lines.join("\n") + "\n");
    }
    return { entries, stop };
  }

  /** Addresses executed in a trace, as a coverage set. */
  static coverage(entries: readonly TraceEntry[]): Set<bigint> {
    return new Set(entries.map((e) => e.address));
  }

  // ---------------------------------------------------------------- inspection

  /** Decodes `count` instructions at a location (default: rip) in the vCPU's mode, or `bitness` forced. */
  instructions(location?: bigint | number | string, count = 10, bitness?: 16 | 32 | 64): DecodedInstruction[] {
    const cpu = this.cpu;
    const address = location === undefined ? this.#ripLinear(cpu) : this.resolve(location);
    const bits = bitness ?? cpu.bitness;
    let bytes: Uint8Array | undefined;
    for (let length = count * 15; length > 0 && bytes === undefined; length = length >> 1) {
      try {
        bytes = this.readVirtual(address, Math.min(length, 0x1000 - Number(address & 0xfffn) + 0x1000), cpu);
      } catch {
        if (length <= 15) throw new RangeError(`Cannot disassemble at ${hex(address)}: not mapped`);
      }
    }
    return decodeInstructions(bytes!, address, bits, count, (a) => this.symbols.describe(a));
  }

  /** Disassembly text (aligned columns): one line per instruction, `address <symbol+off>: bytes  text`, rip marked `=>`. */
  disassemble(location?: bigint | number | string, count = 10, bitness?: 16 | 32 | 64): string {
    const cpu = this.cpu;
    const rip = this.#ripLinear(cpu);
    return formatListing(this.instructions(location, count, bitness), {
      current: rip,
      symbolize: (address) => this.symbols.describe(address),
    });
  }

  #ripLinear(cpu: Vcpu): bigint {
    const rip = cpu.regs.rip;
    return cpu.bitness === 64 ? rip : cpu.sregsView.cs.base + rip;
  }

  /** Linear addresses where a breakpoint may sit: a cheap filter before translating on every step. */
  #breakpointAddresses(): Set<bigint> {
    const addresses = new Set<bigint>();
    for (const set of this.#planted.values()) for (const bp of set) addresses.add(bp.address);
    for (const bp of this.#hardwareBreakpoints()) addresses.add(bp.address);
    return addresses;
  }

  /** Frames by following frame pointers, with symbols; stops safely at a bad frame (64 frames at most). */
  backtrace(cpu: Vcpu = this.cpu): Frame[] {
    const regs = cpu.regs;
    const width = cpu.bitness === 64 ? 8 : 4;
    const frames: Frame[] = [{ index: 0, pc: regs.rip, frame: regs.rbp, symbol: this.symbols.describe(regs.rip) }];
    let rbp = regs.rbp;
    try {
      const { returnAddress } = this.#currentReturn(cpu);
      const found = this.symbols.find(regs.rip);
      const inPrologue = found !== undefined && found.offset <= 1n;
      // At an entry with no caller (rsp is whatever the loader left), the word there is no return address.
      const plausible = this.symbols.size === 0 || this.symbols.find(returnAddress) !== undefined;
      if (inPrologue && plausible) {
        // rbp still belongs to the caller: the first return address came from rsp.
        frames.push({ index: 1, pc: returnAddress, frame: rbp, symbol: this.symbols.describe(returnAddress) });
      }
    } catch {
      // no usable return address at the top: follow rbp alone
    }
    const seen = new Set<bigint>();
    while (frames.length < 64 && rbp !== 0n && !seen.has(rbp)) {
      seen.add(rbp);
      let next: bigint;
      let pc: bigint;
      try {
        next = this.#readWord(rbp, width);
        pc = this.#readWord(rbp + BigInt(width), width);
      } catch {
        break;
      }
      if (pc === 0n) break;
      frames.push({ index: frames.length, pc, frame: next, symbol: this.symbols.describe(pc) });
      if (next !== 0n && next <= rbp) break; // frames must move up the stack
      rbp = next;
    }
    return frames;
  }

  // ---------------------------------------------------------------- run-loop hooks

  #evaluate(condition: BreakCondition<M>, cpu: Vcpu, what: string): boolean {
    try {
      return Boolean(condition(cpu, this.#vm));
    } catch (error) {
      throw new Error(`The condition of ${what} threw: ${(error as Error).message}`, { cause: error });
    }
  }

  #internalHardware: Breakpoint<M> | undefined;

  #hardwareBreakpoints(): Breakpoint<M>[] {
    const user = [...this.#breakpoints.values()].filter((b) => b.kind === "hardware" && b.enabled);
    return this.#internalHardware === undefined ? user : [...user, this.#internalHardware];
  }

  /**
   * Whether vCPU 0's next exit should leave the registers in kvm_run (KVM_CAP_SYNC_REGS): when it
   * will be read for a stop (the last step of a step(N), a breakpoint hit), sparing two ioctls (~13 µs).
   * Not during the rest of a long step(N): syncing costs ~0.15 µs on every exit. (An application
   * processor's registers are read through ioctls: its exits are decoded on another thread.)
   */
  #wantSyncedRegisters(): boolean {
    // A recording compares rip at every port and MMIO exit: kvm_run must hold it.
    if (this.#history !== undefined && !this.#history.closed) return true;
    const steps = this.#stepping?.cpu === 0 ? this.#stepping.remaining : 0;
    return steps === 1 || (steps === 0 && (this.#planted.size > 0 || this.#hardwareBreakpoints().length > 0));
  }

  /**
   * Brings KVM_SET_GUEST_DEBUG up to date: on `only`, or on every vCPU (the
   * application processors parked for it when the guest runs: a vCPU's
   * ioctls wait while it is inside KVM_RUN).
   */
  #applyGuestDebug(only?: Vcpu): void {
    if (this.#vm.state === "closed") return;
    if (only !== undefined) return this.#applyGuestDebugTo(only);
    this.#vm.withApplicationProcessorsParked(() => {
      for (const cpu of this.#vm.cpus) this.#applyGuestDebugTo(cpu);
    });
  }

  #applyGuestDebugTo(cpu: Vcpu): void {
    const index = cpu.index;
    const over = this.#steppingOver?.cpu === index ? this.#steppingOver : undefined;
    const stepping = (this.#stepping?.cpu === index && this.#stepping.remaining > 0) || over !== undefined ||
      this.#fetching?.cpu === index;
    const hardware = over?.hardware ? [] : this.#hardwareBreakpoints();
    let control = 0;
    if (this.#planted.size > 0) control |= KVM_GUESTDBG.USE_SW_BP;
    if (hardware.length > 0) control |= KVM_GUESTDBG.USE_HW_BP;
    // While recording, steps let interrupts in where a free run would take them: a replay runs freely to the
    // last access, then steps, and both must see the guest take an interrupt at the same instruction.
    const recording = this.#history !== undefined && !this.#history.closed;
    if (stepping) control |= KVM_GUESTDBG.SINGLESTEP | (recording ? 0 : this.#blockIrq);
    const debugreg = [0n, 0n, 0n, 0n, 0n, 0n, 0n, 0n];
    let dr7 = 0n;
    hardware.forEach((bp, i) => {
      debugreg[i] = bp.address;
      dr7 |= 1n << BigInt(i * 2); // local enable, RW=00 (execute), LEN=00
    });
    debugreg[7] = dr7 | (dr7 === 0n ? 0n : 0x400n);
    if (index === 0) cpu.fd.setSyncRegs(this.#wantSyncedRegisters());
    const flags = control === 0 ? 0 : control | KVM_GUESTDBG.ENABLE;
    const key = `${flags}:${debugreg.join(",")}`;
    if (key === (this.#guestDebugKeys.get(index) ?? NO_GUEST_DEBUG)) return; // unchanged: skip the ioctl
    cpu.fd.setGuestDebug(flags, debugreg);
    this.#guestDebugKeys.set(index, key);
  }

  /**
   * Prepares a vCPU that is about to run: maps the page of a fetch-through
   * step, or lifts the breakpoint under rip for one step. Both are done here,
   * once the machine holds the other vCPUs, and answer `"alone"`. A vCPU
   * steps over the breakpoint under rip when it stopped there, is selected,
   * is being stepped, or hit it with a false condition; any other vCPU at a
   * breakpoint (one whose hit lost the race to another stop) hits it again.
   */
  #beforeResume(cpu: Vcpu): "alone" | undefined {
    const index = cpu.index;
    const fetching = this.#fetching;
    if (fetching?.cpu === index && !fetching.mapped) {
      const pages = new Map(this.#protectedPages);
      pages.delete(fetching.page);
      this.#vm.setPageProtection(pages);
      fetching.mapped = true;
      this.#applyGuestDebug(cpu);
      return "alone";
    }
    if (this.#steppingOver?.cpu === index) {
      this.#applyGuestDebug(cpu);
      return "alone";
    }
    const rip = this.#ripLinear(cpu);
    this.#stepFrom.set(index, rip);
    if (this.#fetchPending?.cpu === index && this.#fetchPending.rip !== rip) this.#fetchPending = undefined;
    const stoppedHere = this.#stoppedAt.get(index) === rip;
    this.#stoppedAt.delete(index);
    const passing = this.#passingOver === index;
    this.#passingOver = undefined;
    const underRip = this.#breakpointAt(cpu, rip);
    if (
      underRip !== undefined &&
      (stoppedHere || passing || index === this.#selected || this.#stepping?.cpu === index)
    ) {
      this.#startStepOver({ ...underRip, cpu: index, address: rip });
      this.#applyGuestDebug(cpu);
      return "alone";
    }
    this.#applyGuestDebug(cpu);
    return undefined;
  }

  #breakpointAt(cpu: Vcpu, linear: bigint): { physical: number | undefined; hardware: boolean } | undefined {
    const hardware = this.#hardwareBreakpoints().some((b) => b.address === linear);
    let physical: number | undefined;
    if (this.#planted.size > 0) {
      const t = translate(linear, cpu.sregsView, this.#vm.memory);
      if (t.physical !== undefined && this.#planted.has(Number(t.physical))) physical = Number(t.physical);
    }
    return hardware || physical !== undefined ? { physical, hardware } : undefined;
  }

  #startStepOver(target: { cpu: number; physical: number | undefined; hardware: boolean; address: bigint }): void {
    if (target.physical !== undefined) this.#vm.memory.unplant(target.physical);
    this.#steppingOver = target;
  }

  #endStepOver(): void {
    const over = this.#steppingOver;
    if (over === undefined) return;
    this.#steppingOver = undefined;
    if (over.physical !== undefined && this.#planted.has(over.physical)) this.#vm.memory.plant(over.physical, INT3);
  }

  #afterStop(stop: StopEvent): void {
    this.#history?.noteStop();
    this.#endStepOver();
    // A stop in the middle of a fetch-through step (another watched page, a pause): unmap the page again.
    const fetching = this.#fetching;
    if (fetching !== undefined) {
      this.#fetching = undefined;
      if (fetching.mapped) this.#vm.setPageProtection(this.#protectedPages);
    }
    this.#stepping = undefined;
    this.#passingOver = undefined;
    if (this.#vm.state !== "closed") this.#stoppedAt.set(stop.cpu, this.#ripLinear(this.#vm.cpu(stop.cpu)));
    if (stop.reason !== "paused" && stop.reason !== "timeout") this.#selected = stop.cpu;
    // The guest-debug flags are brought up to date before the next run (beforeResume): a run of single
    // steps then leaves KVM_GUESTDBG_SINGLESTEP set throughout instead of two ioctls per step.
  }

  #onExit(cpu: Vcpu, exit: VcpuExit): PendingStop | "resume" | "alone" | undefined {
    if (exit.kind === "mmio-read" || exit.kind === "mmio-write") {
      return this.#protectedPages.size > 0 ? this.#onWatchedAccess(cpu, exit) : undefined;
    }
    if (exit.kind === "debug") return this.#onDebugExit(cpu, exit);
    if (exit.kind === "internal-error" && exit.suberror === EMULATION_FAILURE) {
      // Nested/emulated KVM: an int3 the emulator cannot run. Ours when rip is at a planted byte.
      const rip = this.#ripLinear(cpu);
      const at = this.#breakpointAt(cpu, rip);
      if (at?.physical !== undefined) return this.#onBreakpointHit(cpu, rip, at.physical, "software");
      // Fetching from a page a read/access watchpoint unmapped fails on every host: fetch it through.
      const t = translate(rip, cpu.sregsView, this.#vm.memory);
      const page = t.physical === undefined ? undefined : Number(t.physical) & ~0xfff;
      if (page !== undefined && this.#protectedPages.get(page) === "none" && this.#fetching === undefined) {
        return this.#fetchThrough(cpu, page, rip);
      }
    }
    return undefined;
  }

  #onDebugExit(cpu: Vcpu, exit: DebugExit): PendingStop | "resume" | "alone" | undefined {
    const { exception, dr6 } = exit;
    if (exception === 1 && (dr6 & DR6_BS) !== 0n) return this.#onSingleStep(cpu, exit.pc);
    if (exception === 1 && (dr6 & 0xfn) !== 0n) {
      const index = Number(dr6 & 0xfn).toString(2).split("").reverse().indexOf("1");
      const bp = this.#hardwareBreakpoints()[index];
      if (bp !== undefined) return this.#onBreakpointHit(cpu, bp.address, undefined, "hardware");
    }
    if (exception === 3) {
      // Hardware KVM: #BP. rip may point at the int3 or just past it.
      let rip = this.#ripLinear(cpu);
      let at = this.#breakpointAt(cpu, rip);
      if (at?.physical === undefined) {
        at = this.#breakpointAt(cpu, rip - 1n);
        if (at?.physical !== undefined) {
          cpu.regs.rip = cpu.regs.rip - 1n;
          rip -= 1n;
        }
      }
      if (at?.physical !== undefined) return this.#onBreakpointHit(cpu, rip, at.physical, "software");
      // The guest's own int3: give it back to the guest.
      cpu.fd.setGuestDebug(KVM_GUESTDBG.ENABLE | KVM_GUESTDBG.INJECT_BP);
      this.#guestDebugKeys.set(cpu.index, "");
      this.#applyGuestDebug(cpu);
      return "resume";
    }
    return undefined;
  }

  /** `pc` is the debug exit's linear rip after the step (kvm_run's debug.arch.pc): no register ioctl per step. */
  #onSingleStep(cpu: Vcpu, pc: bigint): PendingStop | "resume" | "alone" {
    const index = cpu.index;
    this.#stepFrom.set(index, pc);
    if (index === 0) this.#history?.noteStep();
    const fetched = this.#endFetchThrough(cpu);
    if (fetched !== undefined) {
      this.#stepping = undefined;
      return fetched;
    }
    const over = this.#steppingOver?.cpu === index ? this.#steppingOver : undefined;
    const stepping = this.#stepping?.cpu === index && this.#stepping.remaining > 0 ? this.#stepping : undefined;
    if (over !== undefined) this.#endStepOver();
    if (over !== undefined && stepping === undefined && over.address === pc) {
      // A rep string instruction under the lifted breakpoint has not finished (one
      // iteration per step on hardware; this emulated host leaves rip on it with rcx 0):
      // keep the breakpoint lifted until rip leaves it, the other vCPUs still held.
      if (this.#hasRepPrefix(cpu, over.address) && this.#instructionAt(cpu, over.address)?.isRep) {
        this.#startStepOver(over);
        return "alone";
      }
    }
    if (stepping !== undefined) {
      stepping.remaining--;
      stepping.taken++;
      if (index === 0) cpu.fd.setSyncRegs(this.#wantSyncedRegisters());
      this.#onStep?.(cpu);
      if (stepping.until?.(cpu)) {
        stepping.matched = true;
        return { reason: "step", address: pc };
      }
      if (stepping.remaining === 0) return { reason: "step", address: pc };
      // Only this vCPU runs while it is stepped: lifting the breakpoint ahead needs no other held.
      const mayHit = (this.#planted.size > 0 || this.#hardwareBreakpoints().length > 0) &&
        this.#breakpointAddresses().has(pc);
      const next = mayHit ? this.#breakpointAt(cpu, this.#ripLinear(cpu)) : undefined;
      if (next !== undefined) {
        this.#startStepOver({ ...next, cpu: index, address: pc });
        this.#applyGuestDebug(cpu);
      } else if (over !== undefined) {
        this.#applyGuestDebug(cpu);
      }
      return "resume";
    }
    this.#applyGuestDebug(cpu);
    return "resume";
  }

  /**
   * A port or MMIO write exit of a vCPU being single-stepped. KVM completes
   * a write before the exit (rip is past it) and then reports no single
   * step for it, on this nested host: the guest would run one more
   * instruction before the next debug exit, so `stepi` over an `out` would
   * run two. The step ends here instead, as if its debug exit had come.
   * Where KVM reports the step (rip still on the instruction), nothing is
   * done here.
   */
  #afterWrite(cpu: Vcpu): PendingStop | undefined {
    const index = cpu.index;
    const stepping = (this.#stepping?.cpu === index && this.#stepping.remaining > 0) ||
      this.#steppingOver?.cpu === index || this.#fetching?.cpu === index;
    if (!stepping) return undefined;
    const from = this.#stepFrom.get(index);
    if (index !== 0) cpu.invalidate();
    const rip = this.#ripLinear(cpu);
    if (from === undefined || rip === from) return undefined;
    const outcome = this.#onSingleStep(cpu, rip);
    return outcome === "resume" || outcome === "alone" ? undefined : outcome;
  }

  #onBreakpointHit(
    cpu: Vcpu,
    address: bigint,
    physical: number | undefined,
    kind: "software" | "hardware",
  ): PendingStop | "alone" {
    if (cpu.index === 0) this.#history?.noteHit(address);
    if (this.#silenced) {
      this.#passingOver = cpu.index;
      return "alone";
    }
    const candidates = physical !== undefined
      ? [...(this.#planted.get(physical) ?? [])].filter((b) => b.enabled)
      : this.#hardwareBreakpoints().filter((b) => b.address === address);
    for (const bp of candidates) {
      if (bp.condition !== undefined && !this.#evaluate(bp.condition, cpu, `breakpoint ${bp.id}`)) continue;
      bp.hits++;
      if (bp.internal) return { reason: "step", address };
      if (bp.once) this.delete(bp.id);
      return { reason: "breakpoint", id: bp.id, address, kind };
    }
    // No condition held: this vCPU executes the instruction under the breakpoint by itself (beforeResume lifts it).
    this.#passingOver = cpu.index;
    return "alone";
  }
}
