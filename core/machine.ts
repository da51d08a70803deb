/**
 * The machine: a KVM VM with guest RAM, vCPUs and the run loop that turns
 * exits into typed stop events. It knows no device, loader or front end:
 * port and MMIO exits go to an {@link ExitHandlers} (the buses live above,
 * in core/bus_dispatch.ts), a debugger attaches through
 * {@link Machine.interceptExits}, platforms decide what a reset or a sleep
 * means and use the mechanisms here ({@link Machine.requestStop},
 * {@link Machine.requestSleep}, {@link Machine.requestRestart}).
 *
 * The run loop runs vCPU 0 on the main thread, synchronously through the
 * fast FFI path, so devices, hooks and the debugger are plain closures on
 * this thread. A periodic kick (core/kvm/signals.ts) interrupts KVM_RUN
 * every 10 ms so the loop can yield to the event loop: timers, stdin and
 * sockets stay live while a guest spins without exits. Application
 * processors run KVM_RUN on their own Worker threads and hand the exits
 * that need a device to this thread (core/smp.ts, core/vcpu_thread.ts);
 * with the in-kernel irqchip those are rare.
 *
 * @module
 */

import { Kvm, type VcpuFd, type VmFd } from "./kvm/kvm.ts";
import { KVM_CAP, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY } from "./kvm/ioctls.ts";
import type { VcpuExit } from "./kvm/exit.ts";
import {
  decodeIrqchip,
  decodePitState,
  encodeIrqchip,
  encodePitState,
  type IrqchipName,
  type IrqchipState,
  KVM_IRQCHIP_IDS,
  type PitState,
} from "./kvm/structs.ts";
import { mainThreadKick, prepareKickSignal } from "./kvm/signals.ts";
import { GuestMemory, parseSize } from "./memory.ts";
import { Vcpu } from "./vcpu.ts";
import { cpuidForVcpu, type CpuidOptions } from "./cpuid.ts";
import type { PendingStop, StopContext, StopEvent } from "./stop.ts";
import {
  emulateMmio,
  emulatePortIo,
  type Emulation,
  type ExitHandlers,
  stopForExit,
  type UnhandledPolicy,
} from "./exits.ts";
import { type ApExit, ApplicationProcessors } from "./smp.ts";
import {
  captureMachine,
  type MachineState,
  probeStateCapabilities,
  restoreMachine,
  type StateCapabilities,
} from "./machine_state.ts";

export type { KernelState, MachineState, VcpuState } from "./machine_state.ts";

/** Options of a machine (see `Vm.create`). */
export interface MachineOptions {
  /** Guest RAM, e.g. `"64M"`, `"1G"` or a byte count. Default 64M. */
  memory?: string | number;
  /** Number of vCPUs. Default 1. */
  cpus?: number;
  /**
   * CPUID changes for every vCPU, e.g. `{ hide: ["cx16"] }`, or a function
   * giving each vCPU its own (`(index) => ({ apicId: index * 2 })`).
   */
  cpuid?: CpuidOptions | ((index: number) => CpuidOptions);
  /** What an access to an unclaimed port or MMIO address does: `"ignore"` (default) or `"stop"`. */
  unhandled?: UnhandledPolicy;
  /** A name for listings (default `vm1`, `vm2`, ... in the order VMs are made in this process). */
  name?: string;
  /**
   * The in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and PIT. Default
   * true; false keeps the tiniest guests exiting on HLT (KVM_EXIT_HLT) and
   * gives a single vCPU no interrupt sources at all.
   */
  irqchip?: boolean;
}

/** Options of {@link Machine.run}. */
export interface RunOptions {
  /** Stop with reason "timeout" after this many milliseconds. */
  timeout?: number;
  /** Overrides {@link MachineOptions.unhandled} for this run. */
  unhandled?: UnhandledPolicy;
  /**
   * Runs only this vCPU (an index); the others stay stopped, as with gdb's
   * scheduler locking. The debugger steps one vCPU this way.
   */
  only?: number;
  /**
   * An internal run (reverse execution's replays): its stop reaches no
   * {@link Machine.onStop} observer, no waiter of {@link Machine.pause}, and
   * does not become {@link Machine.lastStop}; the caller reports the outcome.
   */
  quiet?: boolean;
}

/**
 * A front end's hook into the run loop for the exits only it understands
 * (KVM_EXIT_DEBUG, emulation failures at planted breakpoints, accesses to
 * pages it protected). Attach with {@link Machine.interceptExits}.
 */
export interface ExitInterceptor {
  /**
   * Before a vCPU runs after a stop (every vCPU a run lets run, in index
   * order) and after an exit answered `"alone"`. A stop ends the run at
   * once; `"alone"` runs this vCPU by itself first (e.g. stepping over a
   * planted breakpoint that the others must not run past while it is
   * lifted), until the interceptor answers one of its exits with `"resume"`.
   */
  beforeResume?(cpu: Vcpu): PendingStop | "alone" | undefined;
  /**
   * Every exit except port I/O and interrupted runs, of every vCPU. Returns
   * a stop, `"resume"` to re-enter the guest (the exit is dealt with; it also
   * ends this vCPU's `"alone"` stretch), `"alone"` to re-enter with the other
   * vCPUs held (then {@link beforeResume} is called for it), or undefined
   * when the exit is not the interceptor's.
   */
  onExit(cpu: Vcpu, exit: VcpuExit): PendingStop | "resume" | "alone" | undefined;
  /** Names an address in stop events (`symbol+offset`). */
  describe?(address: bigint): string | undefined;
  /** A run begins (once per {@link Machine.run}, before any {@link beforeResume}). */
  onRun?(options: RunOptions): void;
  /**
   * After a port or MMIO write exit was emulated: a single step that KVM
   * completed at the exit ends here (KVM reports no single-step for it, see
   * Debugger). Returns a stop to end the run after this exit.
   */
  afterWrite?(cpu: Vcpu): PendingStop | undefined;
}

/** The kernel devices whose state {@link Machine.kernelDeviceState} reads. */
export type KernelDevice = IrqchipName | "pit";

/** How often the run loop yields to the event loop (the kick timer's period too). */
const TICK_MS = 10;
/** Stopped time after which a run tells the guest's kvm-clock it was paused (see Machine's #tellKvmClockOfStop). */
const KVMCLOCK_TELL_MS = 1000;
const KVM_MP_STATE_HALTED = 3;
const RFLAGS_IF = 0x200n;

/**
 * Lets timers, stdin and sockets run between guest slices. Measured here
 * (a 10 ms busy slice, then the yield; pipe data sent at 200 ms): setImmediate
 * saw the data after ~600 ms (the loop never polls I/O), a MessageChannel
 * never, setTimeout(0) at once but idles ~2 ms per call, and an async op that
 * finishes at once (a stat of "/", ~55 µs) at once. The op on every turn cost
 * ~1.5 % of exit throughput, so three cheap turns (timers, promises) go with
 * each I/O-polling one: I/O waits at most ~40 ms. setImmediate is Deno's
 * global, not node:timers, whose import cost ~15 ms of start-up; setTimeout is
 * the fallback when file reads are not permitted.
 */
class EventLoopYield {
  #turns = 0;
  #statAllowed = true;

  async yield(): Promise<void> {
    if (++this.#turns % 4 !== 0) return await new Promise((resolve) => setImmediate(resolve));
    if (this.#statAllowed) {
      try {
        await Deno.stat("/");
        return;
      } catch {
        this.#statAllowed = false;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}

/** Where a run stopped: the vCPU and its stop, before the context (rip, mode, symbol) is read. */
interface Stopped {
  cpu: Vcpu;
  pending: PendingStop;
}

/** The KVM handles a machine owns, opened together by {@link Machine.open}. */
export interface MachineParts {
  kvm: Kvm;
  vmFd: VmFd;
  memory: GuestMemory;
  vcpuFds: VcpuFd[];
}

/**
 * A machine: RAM, vCPUs, the run loop. `Vm` (core/vm.ts) builds a platform
 * on it; the debugger and gdb server take any machine.
 */
export class Machine {
  /** Machines made in this process: default names vm1, vm2, ... as the REPL's `.vm list` shows them. */
  static #made = 0;
  /** Guest physical RAM. */
  readonly memory: GuestMemory;
  /** The vCPUs. */
  readonly cpus: readonly Vcpu[];
  /** Display name. */
  readonly name: string;
  /** The last stop event. */
  lastStop: StopEvent | undefined;

  // The machine's state, all of it.
  readonly #kvm: Kvm;
  readonly #vmFd: VmFd;
  readonly #vcpuFds: VcpuFd[];
  readonly #irqchip: boolean;
  readonly #canCompleteExits: boolean;
  readonly #aps: ApplicationProcessors;
  readonly #events = new EventLoopYield();
  #handlers: ExitHandlers;
  #unhandled: UnhandledPolicy;
  #interceptor: ExitInterceptor | undefined;
  #closed = false;
  #running = false;
  /** The vCPU a run was asked to run by itself ({@link RunOptions.only}). */
  #only: Vcpu | undefined;
  /** The vCPU the interceptor asked to run by itself for now (`"alone"`), the others held. */
  #alone: Vcpu | undefined;
  readonly #kvmclockCtrl: boolean;
  /** When the last run stopped (performance.now()), or undefined while running or before the first run. */
  #stoppedAt: number | undefined;
  /** Stopped time the guest's kvm-clock has not been told of yet (ms). */
  #untoldStopMs = 0;
  #pauseRequested = false;
  /** Who asked for the pause, for the stop event. */
  #pausedBy: string | undefined;
  /** A stop asked for while an exit is handled; the loop returns it once the exit is complete. */
  #pendingStop: PendingStop | undefined;
  /** The vCPU the pending stop belongs to, when it is not the main thread's. */
  #stopCpu: Vcpu | undefined;
  /** The vCPU whose exit is being handled (devices' stop requests name it). */
  #servicing: Vcpu | undefined;
  #sleep: { wakeAfterMs: number; onWake: () => void } | undefined;
  #restart: (() => void) | undefined;
  #slotCount = 0;
  /** The memory slots as last laid out (for the dirty log). */
  #slots: { base: number; size: number; flags: number }[] = [];
  /** KVM_MEM_LOG_DIRTY_PAGES on the writable slots (migration's pre-copy). */
  #dirtyLogging = false;
  /** The slots were laid out again while logging: their logs restarted, so every page counts as dirty once. */
  #dirtyLogReset = false;
  #stateCaps: StateCapabilities | undefined;
  /** The page protections the slots were last laid out with. */
  #protections: ReadonlyMap<number, "readonly" | "none"> = new Map();
  readonly #stopObservers = new Set<(stop: StopEvent) => void>();
  readonly #runWaiters: ((stop: StopEvent) => void)[] = [];
  readonly #closers = new Set<() => void | Promise<void>>();
  /** A callback to run once the current exit is complete, before the guest re-enters (see requestSafePoint). */
  #safePoint: (() => void) | undefined;
  /** True while a safe-point callback runs: the machine's state may be captured mid-run. */
  #atSafePoint = false;
  #irqObserver: ((irq: number, level: boolean) => void) | undefined;
  /** Eventfds bound to guest writes or interrupt lines (virtio's queues): their traffic never exits to hvsh. */
  #eventfdBindings = 0;

  /** Opens KVM and creates the VM, its RAM and its vCPUs; closes what it made when a step fails. */
  protected static open(options: MachineOptions, ram?: GuestMemory): MachineParts {
    const memorySize = ram?.ramSize ?? parseSize(options.memory ?? "64M");
    const cpuCount = options.cpus ?? 1;
    if (!Number.isInteger(cpuCount) || cpuCount < 1 || cpuCount > 255) {
      throw new RangeError(`Invalid vCPU count ${cpuCount}: expected 1-255`);
    }
    const kvm = Kvm.open();
    let vmFd: VmFd | undefined;
    let memory: GuestMemory | undefined;
    const vcpuFds: VcpuFd[] = [];
    try {
      vmFd = kvm.createVm();
      // Intel's real-mode emulation needs a TSS and an identity-map page; put them just below 4 GiB like QEMU.
      vmFd.setTssAddress(0xfffb_d000);
      vmFd.setIdentityMapAddress(0xfffb_c000n);
      if (options.irqchip ?? true) vmFd.createIrqchip(); // before the vCPUs, as KVM requires
      memory = ram ?? GuestMemory.allocate(memorySize);
      const supported = kvm.supportedCpuid();
      prepareKickSignal();
      for (let id = 0; id < cpuCount; id++) {
        const fd = vmFd.createVcpu(id);
        vcpuFds.push(fd);
        const cpuid = typeof options.cpuid === "function" ? options.cpuid(id) : options.cpuid;
        fd.setCpuid(cpuidForVcpu(supported, id, cpuCount, cpuid));
      }
      if (options.irqchip ?? true) vmFd.createPit2();
      return { kvm, vmFd, memory, vcpuFds };
    } catch (error) {
      for (const fd of vcpuFds) fd.close();
      memory?.close();
      vmFd?.close();
      kvm.close();
      throw error;
    }
  }

  protected constructor(parts: MachineParts, handlers: ExitHandlers, options: MachineOptions) {
    this.#kvm = parts.kvm;
    this.#vmFd = parts.vmFd;
    this.#vcpuFds = parts.vcpuFds;
    this.memory = parts.memory;
    this.cpus = parts.vcpuFds.map((fd) => new Vcpu(fd, parts.memory, (cpu) => this.#assertCpuStopped(cpu)));
    this.name = options.name ?? `vm${++Machine.#made}`;
    this.#irqchip = options.irqchip ?? true;
    this.#unhandled = options.unhandled ?? "ignore";
    this.#handlers = handlers;
    this.#canCompleteExits = this.#kvm.checkExtension(KVM_CAP.IMMEDIATE_EXIT) > 0;
    this.#aps = new ApplicationProcessors(this.cpus[0]!, this.#canCompleteExits);
    this.#kvmclockCtrl = this.#kvm.checkExtension(KVM_CAP.KVMCLOCK_CTRL) > 0;
    this.setPageProtection(new Map());
  }

  /** Throws when `cpu` runs on its own thread (its state ioctls would wait for it to leave KVM_RUN). */
  #assertCpuStopped(cpu: Vcpu): void {
    if (cpu.index === 0 || !this.#running || !this.#aps.isRunning(cpu)) return;
    throw new Error(`Cannot access vCPU ${cpu.index}'s state: it is running (pause the VM ${this.name} first)`);
  }

  /** Starts the application processors' threads (each parked until the first run). */
  protected async startApplicationProcessors(): Promise<void> {
    await this.#aps.start(this.cpus.slice(1));
  }

  /** vCPU `index` (default 0); throws a RangeError for a missing one. */
  cpu(index = 0): Vcpu {
    const cpu = this.cpus[index];
    if (cpu === undefined) {
      throw new RangeError(`No vCPU ${index}: this VM has ${this.cpus.length} (0-${this.cpus.length - 1})`);
    }
    return cpu;
  }

  /** `"stopped"`, `"running"` or `"closed"`. */
  get state(): "stopped" | "running" | "closed" {
    return this.#closed ? "closed" : this.#running ? "running" : "stopped";
  }

  /** True while `run()` is executing guest code. */
  get running(): boolean {
    return this.#running;
  }

  /** True when the VM has the in-kernel PIC, IOAPIC, LAPICs and PIT. */
  get hasIrqchip(): boolean {
    return this.#irqchip;
  }

  /** Sets the level of an interrupt line (ISA IRQ / GSI) of the in-kernel irqchip. */
  irqLine(irq: number, level: boolean): void {
    if (!this.#irqchip) {
      throw new Error(`Cannot raise IRQ ${irq}: this VM has no irqchip (Vm.create({ irqchip: true }))`);
    }
    this.#irqObserver?.(irq, level);
    this.#vmFd.irqLine(irq, level);
  }

  /**
   * Calls `observer` with every interrupt line change hvsh makes (a
   * recording logs them); one observer at a time. Returns the undo.
   */
  observeIrqLines(observer: (irq: number, level: boolean) => void): () => void {
    if (this.#irqObserver !== undefined) throw new Error(`Cannot observe ${this.name}'s interrupt lines twice`);
    this.#irqObserver = observer;
    return () => {
      if (this.#irqObserver === observer) this.#irqObserver = undefined;
    };
  }

  /**
   * Routes every port and MMIO access the run loop emulates through
   * `wrap(current handlers)` from the next run on (a recording logs what the
   * devices answer; a replay answers from the log). Returns the undo.
   */
  interposeHandlers(wrap: (inner: ExitHandlers) => ExitHandlers): () => void {
    const inner = this.#handlers;
    const wrapped = wrap(inner);
    this.#handlers = wrapped;
    return () => {
      if (this.#handlers === wrapped) this.#handlers = inner;
    };
  }

  /** How many eventfds are bound to guest writes or interrupt lines (virtio queues, whose traffic bypasses hvsh). */
  get eventfdBindings(): number {
    return this.#eventfdBindings;
  }

  /** The stop a device or hook asked for during the current exit, if any. */
  get pendingStop(): PendingStop | undefined {
    return this.#pendingStop;
  }

  /**
   * Runs `callback` on the run loop's thread once vCPU 0's current exit is
   * complete and before the guest re-enters: the machine's state is then
   * consistent and {@link captureState} works mid-run (a recording's
   * checkpoints). Outside a run, `callback` runs at once.
   */
  requestSafePoint(callback: () => void): void {
    if (!this.#running) {
      callback();
      return;
    }
    this.#safePoint = callback;
  }

  /**
   * The in-kernel interrupt controllers' and PIT's raw KVM state, for
   * snapshots and firmware set-up: `"pic-master"`, `"pic-slave"`, `"ioapic"`
   * (`struct kvm_irqchip`) or `"pit"` (`struct kvm_pit_state2`).
   */
  kernelDeviceState(device: KernelDevice): Uint8Array<ArrayBuffer> {
    if (!this.#irqchip) throw new Error(`Cannot read the ${device} state: this VM has no irqchip`);
    return device === "pit" ? this.#vmFd.getPit2() : this.#vmFd.getIrqchip(KVM_IRQCHIP_IDS[device]);
  }

  /** Writes state read with {@link kernelDeviceState} (possibly changed) back into KVM. */
  setKernelDeviceState(device: KernelDevice, state: Uint8Array<ArrayBuffer>): void {
    if (!this.#irqchip) throw new Error(`Cannot set the ${device} state: this VM has no irqchip`);
    if (device === "pit") this.#vmFd.setPit2(state);
    else this.#vmFd.setIrqchip(state);
  }

  /** An in-kernel interrupt controller's state as named fields (`struct kvm_pic_state` or `kvm_ioapic_state`). */
  irqchipState(chip: IrqchipName): IrqchipState {
    return decodeIrqchip(this.kernelDeviceState(chip));
  }

  /** Writes an interrupt controller's state (read with {@link irqchipState}, possibly changed) back into KVM. */
  setIrqchipState(state: IrqchipState): void {
    this.setKernelDeviceState(state.chip, encodeIrqchip(state));
  }

  /** The in-kernel PIT's state as named fields (`struct kvm_pit_state2`). */
  pitState(): PitState {
    return decodePitState(this.kernelDeviceState("pit"));
  }

  /** Writes the PIT's state (read with {@link pitState}, possibly changed) back into KVM. */
  setPitState(state: PitState): void {
    this.setKernelDeviceState("pit", encodePitState(state));
  }

  /**
   * Lays out the KVM memory slots so that the given 4 KiB pages are
   * read-only (guest writes exit to hvsh as MMIO) or absent (every access
   * exits). The debugger's watchpoints use this: it works on every host,
   * unlike DR7 data breakpoints, which nested KVM may never deliver.
   * An empty map restores plain RAM slots.
   *
   * Allowed during a run too (the debugger maps a page for one step): this
   * thread's vCPU is never inside KVM_RUN while JavaScript runs, and the
   * application processors are parked around the change so none of them
   * sees RAM missing while the slots are rebuilt.
   */
  setPageProtection(pages: ReadonlyMap<number, "readonly" | "none">): void {
    if (this.#closed) throw new Error(`Cannot change memory slots: the VM ${this.name} is closed`);
    this.withApplicationProcessorsParked(() => this.#layOutSlots(pages));
  }

  #layOutSlots(pages: ReadonlyMap<number, "readonly" | "none">): void {
    this.#protections = pages;
    const slots: { base: number; size: number; host: bigint; flags: number }[] = [];
    const sorted = [...pages.keys()].sort((a, b) => a - b);
    for (const region of this.memory.regions) {
      let cursor = region.base;
      const end = region.base + region.size;
      const push = (from: number, to: number, flags: number) => {
        if (to > from) {
          slots.push({ base: from, size: to - from, host: region.hostAddress + BigInt(from - region.base), flags });
        }
      };
      for (const page of sorted) {
        if (page < region.base || page >= end) continue;
        push(cursor, page, 0);
        if (pages.get(page) === "readonly") push(page, page + 0x1000, KVM_MEM_READONLY);
        cursor = page + 0x1000;
      }
      push(cursor, end, 0);
    }
    if (this.#dirtyLogging) {
      for (const slot of slots) if (slot.flags === 0) slot.flags = KVM_MEM_LOG_DIRTY_PAGES;
      if (this.#slotCount > 0) this.#dirtyLogReset = true;
    }
    for (let slot = 0; slot < this.#slotCount; slot++) this.#vmFd.setUserMemoryRegion(slot, 0, 0n, 0n, 0n);
    slots.forEach((s, slot) => this.#vmFd.setUserMemoryRegion(slot, s.flags, BigInt(s.base), BigInt(s.size), s.host));
    this.#slotCount = slots.length;
    this.#slots = slots;
  }

  /**
   * Starts logging the pages the guest writes (KVM_MEM_LOG_DIRTY_PAGES on
   * every RAM slot) and the pages the host writes through `memory`, for
   * migration's pre-copy rounds. Read {@link takeDirtyPages}; stop with
   * {@link stopDirtyLog}.
   */
  startDirtyLog(): void {
    if (this.#closed) throw new Error(`Cannot log dirty pages: the VM ${this.name} is closed`);
    this.#dirtyLogging = true;
    this.memory.trackHostWrites(true);
    this.#reLayOut();
    this.#dirtyLogReset = false;
  }

  /**
   * The guest pages (address / 4096) written since logging started or since
   * the last call, by the guest (KVM_GET_DIRTY_LOG, which clears KVM's log)
   * or by the host; `"all"` when the slots were laid out again meanwhile
   * (the debugger's watchpoints do that) and KVM's logs restarted.
   */
  takeDirtyPages(): Set<number> | "all" {
    if (!this.#dirtyLogging) throw new Error("Cannot read dirty pages: startDirtyLog() first");
    const dirty = new Set<number>(this.memory.takeHostWrites());
    this.#slots.forEach((slot, index) => {
      if ((slot.flags & KVM_MEM_LOG_DIRTY_PAGES) === 0) {
        // A read-only or absent page (a watchpoint): writes to it came through hvsh, which the host record has.
        return;
      }
      const pages = slot.size / 4096;
      const bitmap = this.#vmFd.getDirtyLog(index, pages);
      const firstPage = slot.base / 4096;
      for (let byte = 0; byte < bitmap.length; byte++) {
        const bits = bitmap[byte]!;
        if (bits === 0) continue;
        for (let bit = 0; bit < 8; bit++) if ((bits & (1 << bit)) !== 0) dirty.add(firstPage + byte * 8 + bit);
      }
    });
    if (this.#dirtyLogReset) {
      this.#dirtyLogReset = false;
      return "all";
    }
    return dirty;
  }

  /** Stops logging dirty pages. */
  stopDirtyLog(): void {
    if (!this.#dirtyLogging || this.#closed) return;
    this.#dirtyLogging = false;
    this.memory.trackHostWrites(false);
    this.#reLayOut();
  }

  /** Lays the slots out again with the current page protections (after the dirty-log flag changed). */
  #reLayOut(): void {
    const parkAps = this.#running && this.#aps.count > 0;
    if (parkAps) this.#aps.park();
    try {
      this.#layOutSlots(this.#protections);
    } finally {
      if (parkAps) this.#aps.resume();
    }
  }

  /**
   * Probes what this host lets the machine save (XSAVE, XCRs, the MSR list)
   * now rather than at the first capture or restore: migration calls it
   * before it pauses the guest, so the probe is not part of the downtime.
   */
  prepareStateCapture(): void {
    this.#capabilities();
  }

  #capabilities(): StateCapabilities {
    return this.#stateCaps ??= probeStateCapabilities(this.#kvm, this.#vmFd, this.#vcpuFds[0], this.#irqchip);
  }

  /**
   * Every vCPU's KVM state and the VM's (irqchip, PIT, kvm-clock) as plain
   * JSON data (see core/machine_state.ts for what is in it). The machine
   * must be stopped; guest memory and device models are not in it.
   */
  captureState(): MachineState {
    if (!this.#atSafePoint) this.#assertIdle("capture the machine state");
    this.#settleAps();
    return captureMachine(this.#vmFd, this.#vcpuFds, this.#capabilities());
  }

  /**
   * Puts the machine in a state {@link captureState} returned (possibly
   * from another process). Checks the whole state before it writes
   * anything; throws naming the vCPU and field that do not fit.
   */
  restoreState(state: MachineState): void {
    this.#assertIdle("restore the machine state");
    // An exit left incomplete would complete on the next KVM_RUN, over the restored registers (an `in` writes
    // al and moves rip past itself): complete it now, before the state is replaced.
    if (this.#canCompleteExits) { for (const cpu of this.cpus) cpu.fd.completePendingExit(); }
    restoreMachine(this.#vmFd, this.#vcpuFds, state, this.#capabilities());
    for (const cpu of this.cpus) {
      // kvm_run's synced copy is of the last exit, from before the restore: read the registers from KVM.
      cpu.fd.syncedGeneration = -1;
      cpu.invalidate();
    }
  }

  /** True when the host can make pages read-only for the guest (KVM_CAP_READONLY_MEM). */
  get supportsReadonlyPages(): boolean {
    return this.#kvm.checkExtension(KVM_CAP.READONLY_MEM) > 0;
  }

  /**
   * Binds an eventfd to guest writes at `address` (KVM_IOEVENTFD): such
   * writes no longer exit to user space. `unbind` removes it.
   */
  bindIoeventfd(eventFd: number, address: bigint, length: number, unbind = false): void {
    this.#vmFd.ioeventfd(eventFd, address, length, { deassign: unbind });
    this.#eventfdBindings += unbind ? -1 : 1;
  }

  /** Binds an eventfd to an interrupt line (KVM_IRQFD): each write to it raises GSI `gsi` as an edge. */
  bindIrqfd(eventFd: number, gsi: number, unbind = false): void {
    this.#vmFd.irqfd(eventFd, gsi, unbind);
    this.#eventfdBindings += unbind ? -1 : 1;
  }

  /** KVM_CHECK_EXTENSION on this machine's KVM handle. */
  checkExtension(capability: number): number {
    return this.#kvm.checkExtension(capability);
  }

  /**
   * Attaches a front end's exit interceptor (the debugger does). One at a
   * time: a second is refused with an error, so two debuggers never steal
   * each other's exits. Returns the function that detaches it.
   */
  interceptExits(interceptor: ExitInterceptor): () => void {
    if (this.#interceptor !== undefined) {
      throw new Error(
        `Cannot intercept the exits of ${this.name}: a debugger is already attached (share it: vm.debug)`,
      );
    }
    this.#interceptor = interceptor;
    return () => {
      if (this.#interceptor === interceptor) this.#interceptor = undefined;
    };
  }

  /**
   * Calls `closer` when the VM closes, before its vCPUs and memory go (a gdb
   * server, a console). Returns a function that forgets it.
   */
  onClose(closer: () => void | Promise<void>): () => void {
    this.#closers.add(closer);
    return () => void this.#closers.delete(closer);
  }

  /** Calls `observer` on every stop, whoever caused the run. Returns a function that unsubscribes. */
  onStop(observer: (stop: StopEvent) => void): () => void {
    this.#stopObservers.add(observer);
    return () => this.#stopObservers.delete(observer);
  }

  /** Asks the run loop to stop with `stop` after the current exit (devices use this). */
  requestStop(stop: PendingStop): void {
    if (this.#pendingStop === undefined && this.#servicing !== undefined) this.#stopCpu = this.#servicing;
    this.#pendingStop ??= stop;
  }

  /**
   * Puts the machine to sleep (ACPI S3) after the current exit: no vCPU runs
   * until `wakeAfterMs` have passed (pause and timeout still work), then
   * `onWake` sets up the resume and the guest goes on. The platform uses it.
   */
  requestSleep(wakeAfterMs: number, onWake: () => void): void {
    this.#sleep = { wakeAfterMs, onWake };
  }

  /**
   * After the current exit, completes it, calls `restart` (which may load a
   * new image and set up the vCPUs) and runs on: a platform's reset.
   */
  requestRestart(restart: () => void): void {
    this.#restart = restart;
  }

  /**
   * Stops a running guest (within a few milliseconds, even one that makes no
   * exits). Resolves with the stop event; with undefined when nothing runs.
   * `by` names who paused it in the stop (`"gdb"`, `"repl"`), so the other
   * front ends watching the VM can say so.
   */
  pause(by?: string): Promise<StopEvent | undefined> {
    if (!this.#running) return Promise.resolve(undefined);
    this.#pauseRequested = true;
    if (by !== undefined) this.#pausedBy ??= by;
    return new Promise((resolve) => this.#runWaiters.push(resolve));
  }

  /**
   * Parks the application processors for the duration of `action` (a change
   * to every vCPU's debug state while the guest runs: a vCPU's ioctls wait
   * while it is inside KVM_RUN). Without a run in progress, just calls it.
   */
  withApplicationProcessorsParked<T>(action: () => T): T {
    const parkAps = this.#running && this.#aps.count > 0;
    if (parkAps) this.#aps.park();
    try {
      return action();
    } finally {
      if (parkAps) this.#aps.resume();
    }
  }

  /**
   * Runs the guest until it stops: debug-exit, halt, crash, pause, timeout,
   * a debugger stop, or an unclaimed access when asked to stop on those.
   * Every vCPU runs (vCPU 0 on this thread, the others on theirs) unless
   * `only` names one; when any vCPU stops, all stop, and the stop event
   * names the vCPU.
   */
  async run(options: RunOptions = {}): Promise<StopEvent> {
    this.#assertIdle("run");
    const timeout = options.timeout;
    if (timeout !== undefined && !(timeout >= 0)) throw new RangeError(`Invalid timeout ${timeout}: expected ms >= 0`);
    const only = options.only === undefined ? undefined : this.cpu(options.only);
    this.#tellKvmClockOfStop();
    this.#running = true;
    this.memory.noteGuestWrites();
    this.#pauseRequested = false;
    this.#pausedBy = undefined;
    this.#stopCpu = undefined;
    this.#only = only;
    this.#alone = undefined;
    this.#interceptor?.onRun?.(options);
    let stopped: Stopped | undefined;
    mainThreadKick.acquire();
    try {
      this.#aps.releaseHeld();
      stopped = await this.#start(only, timeout === undefined ? Infinity : performance.now() + timeout, options);
    } finally {
      let parked = false;
      try {
        this.#aps.setRunnable("none");
        parked = true;
      } finally {
        mainThreadKick.release();
        this.#running = false;
        this.#only = undefined;
        this.#alone = undefined;
        this.#pendingStop = undefined;
        if (parked) this.#stoppedAt = performance.now();
        if (stopped === undefined) {
          // run() is rejecting (a hook threw): a pending pause() still gets an answer.
          const paused = this.#closed ? undefined : this.#withContext(only ?? this.cpu(0), { reason: "paused" });
          for (const waiter of this.#runWaiters.splice(0)) waiter(paused!);
        }
      }
    }
    // Read once every vCPU is out of KVM_RUN: a vCPU's registers cannot be read while it runs.
    const stop = this.#withContext(stopped.cpu, stopped.pending);
    if (options.quiet) return stop;
    return this.#announce(stop);
  }

  #announce(stop: StopEvent): StopEvent {
    this.lastStop = stop;
    for (const waiter of this.#runWaiters.splice(0)) waiter(stop);
    for (const observer of this.#stopObservers) observer(stop);
    return stop;
  }

  /**
   * Tells every front end of a stop that no run of theirs produced: where
   * reverse execution (a series of quiet runs) left the guest. The machine
   * must be stopped.
   */
  reportStop(cpu: number, pending: PendingStop): StopEvent {
    this.#assertIdle("report a stop");
    return this.#announce(this.#withContext(this.cpu(cpu), pending));
  }

  /**
   * KVM_KVMCLOCK_CTRL on each vCPU before it runs again, so a Linux guest's
   * kvm-clock does not take the stop for a soft lockup. KVM only raises a
   * request that the vCPU's next entry applies, so asking as the run starts
   * tells the guest what asking as it stopped did. It is asked once the
   * stops since the last time add up to {@link KVMCLOCK_TELL_MS}, not on
   * each: a breakpoint hit or a gdb stepi paid ~2.5 µs per vCPU for it here
   * (mostly refused: EINVAL until the guest sets up kvm-clock), and stops
   * shorter than that in all cannot look like a lockup (Linux waits 20 s).
   */
  #tellKvmClockOfStop(): void {
    if (this.#stoppedAt === undefined) return;
    this.#untoldStopMs += performance.now() - this.#stoppedAt;
    this.#stoppedAt = undefined;
    if (!this.#kvmclockCtrl || this.#untoldStopMs < KVMCLOCK_TELL_MS) return;
    this.#untoldStopMs = 0;
    for (const cpu of this.cpus) cpu.fd.kvmclockCtrl();
  }

  #pausedStop(): PendingStop {
    return this.#pausedBy === undefined ? { reason: "paused" } : { reason: "paused", by: this.#pausedBy };
  }

  /** Takes the pending stop, if any. */
  #takePendingStop(): PendingStop | undefined {
    const pending = this.#pendingStop;
    this.#pendingStop = undefined;
    return pending;
  }

  /**
   * Lets the interceptor prepare each vCPU the run lets run; one that must
   * first run by itself (over a lifted breakpoint) does, then all go.
   */
  async #start(only: Vcpu | undefined, deadline: number, options: RunOptions): Promise<Stopped> {
    for (const cpu of only === undefined ? this.cpus : [only]) {
      // None runs while the interceptor prepares one: it may lift a breakpoint the others must not pass.
      this.#aps.setRunnable("none");
      const early = this.#interceptor?.beforeResume?.(cpu);
      if (early === undefined) continue;
      if (early !== "alone") return { cpu, pending: early };
      if (only !== undefined) continue;
      this.#alone = cpu;
      const stopped = await this.#loop(deadline, options, true);
      if (stopped !== undefined) return stopped;
    }
    return (await this.#loop(deadline, options, false))!;
  }

  /**
   * Runs until a stop (or, for `aloneOnly`, until the vCPU running alone is
   * done). vCPU 0 runs on this thread; while an application processor runs
   * by itself, this thread waits for its exits instead.
   */
  async #loop(deadline: number, options: RunOptions, aloneOnly: boolean): Promise<Stopped | undefined> {
    for (;;) {
      const exclusive = this.#alone ?? this.#only;
      if (aloneOnly && this.#alone === undefined) return undefined;
      this.#aps.setRunnable(exclusive === undefined ? "all" : exclusive.index === 0 ? "none" : exclusive);
      const stopped = exclusive === undefined || exclusive.index === 0
        ? await this.#runMain(deadline, options, aloneOnly)
        : await this.#runAlone(exclusive, deadline, options);
      if (stopped !== undefined) return stopped;
    }
  }

  /** Answers an exit the interceptor said `"alone"` to: the others are held, then the interceptor prepares the vCPU. */
  #goAlone(cpu: Vcpu): PendingStop | undefined {
    this.#alone = cpu;
    if (this.#only === undefined) this.#aps.setRunnable(cpu.index === 0 ? "none" : cpu);
    const early = this.#interceptor?.beforeResume?.(cpu);
    return early === "alone" ? undefined : early;
  }

  /** A `"resume"` answer for `cpu`: its stretch alone, if it had one, is over. */
  #endAlone(cpu: Vcpu): void {
    if (this.#alone === cpu) this.#alone = undefined;
  }

  /**
   * vCPU 0's loop on this thread (the application processors run on theirs
   * unless vCPU 0 runs alone). Returns undefined when an application
   * processor is to run alone, or (for `aloneOnly`) when vCPU 0's stretch
   * alone is over.
   */
  async #runMain(deadline: number, options: RunOptions, aloneOnly: boolean): Promise<Stopped | undefined> {
    const cpu = this.cpu(0);
    const fd = cpu.fd;
    const unhandled = options.unhandled ?? this.#unhandled;
    const handlers = this.#handlers;
    let exclusive = this.#alone ?? this.#only;
    // A kick that lands while this thread is in JavaScript is handled and lost, so a guest
    // that exits all the time also gets its ticks from the clock, looked at every 64 exits.
    let exits = 0;
    let nextTick = performance.now() + TICK_MS;
    for (;;) {
      const exit = fd.run();
      const interrupted = exit.kind === "interrupted";
      let tick = interrupted;
      if (exit.kind === "io-out" || exit.kind === "io-in" || exit.kind === "mmio-read" || exit.kind === "mmio-write") {
        // Inline try/catch, not a closure per exit: this is the hot path.
        try {
          let outcome: Emulation;
          if (exit.kind === "io-out" || exit.kind === "io-in") {
            outcome = emulatePortIo(exit, handlers, unhandled);
          } else {
            const intercepted = this.#interceptor?.onExit(cpu, exit);
            outcome = intercepted === undefined
              ? emulateMmio(exit, handlers, unhandled)
              : intercepted === "resume" || intercepted === "alone"
              ? "handled"
              : intercepted;
            if (intercepted === "resume") this.#endAlone(cpu);
            if (intercepted === "alone") this.#pendingStop ??= this.#goAlone(cpu);
          }
          if (outcome !== "handled") this.#pendingStop ??= outcome;
          // Single steps only happen in a run of one vCPU (a step, or a stretch alone): free runs skip this.
          else if (exclusive !== undefined && (exit.kind === "io-out" || exit.kind === "mmio-write")) {
            this.#afterWrite(cpu);
          }
        } catch (error) {
          // A device or hook threw: complete the exit so the VM stays consistent, then report it.
          this.#completeExit(cpu);
          throw error;
        }
        if ((++exits & 63) === 0 && performance.now() >= nextTick) tick = true;
        if (exclusive === undefined && this.#aps.pending) this.#serviceAps(unhandled);
      } else if (!interrupted) {
        cpu.invalidate();
        const intercepted = this.#interceptor?.onExit(cpu, exit);
        if (intercepted === "resume") {
          this.#endAlone(cpu);
        } else if (intercepted === "alone") {
          const early = this.#goAlone(cpu);
          if (early !== undefined) return { cpu, pending: early };
        } else {
          return { cpu, pending: intercepted ?? stopForExit(exit, () => this.instructionBytes(cpu)) };
        }
      }
      if (this.#restart !== undefined) {
        const restart = this.#restart;
        this.#restart = undefined;
        this.#completeExit(cpu);
        restart();
        continue;
      }
      if (this.#safePoint !== undefined) this.#runSafePoint(cpu, interrupted);
      if (this.#pendingStop !== undefined) {
        this.#completeExit(cpu);
        return { cpu: this.#stopCpu ?? cpu, pending: this.#takePendingStop()! };
      }
      const now = this.#alone ?? this.#only;
      if (now !== exclusive) {
        if (aloneOnly && this.#alone === undefined) return undefined;
        if (now !== undefined && now !== cpu) {
          // An application processor goes on alone: vCPU 0's exit is completed before it waits.
          this.#completeExit(cpu);
          return undefined;
        }
        exclusive = now;
        this.#aps.setRunnable(now === undefined ? "all" : "none");
      }
      if (this.#sleep !== undefined) {
        const sleep = this.#sleep;
        this.#completeExit(cpu);
        const wakeAt = performance.now() + sleep.wakeAfterMs;
        while (performance.now() < wakeAt) {
          await new Promise((resolve) => setTimeout(resolve, Math.min(TICK_MS, wakeAt - performance.now())));
          if (this.#closed || this.#pauseRequested) return { cpu, pending: this.#pausedStop() };
          if (performance.now() >= deadline) return { cpu, pending: { reason: "timeout" } };
        }
        this.#sleep = undefined;
        sleep.onWake();
        continue;
      }
      if (!tick) continue;
      nextTick = performance.now() + TICK_MS;
      // An I/O exit must be completed before anyone looks at the vCPU (KVM's rule); an interrupted run has nothing pending.
      const settle = () => interrupted ? cpu.invalidate() : this.#completeExit(cpu);
      if (interrupted) cpu.invalidate();
      if (exclusive === undefined && this.#aps.count > 0) {
        this.#serviceAps(unhandled);
        if (this.#alone !== undefined) {
          // An application processor's exit asked to run it alone.
          settle();
          if (this.#pendingStop !== undefined) return { cpu: this.#stopCpu ?? cpu, pending: this.#takePendingStop()! };
          return undefined;
        }
      }
      if (this.#pendingStop !== undefined) {
        settle();
        return { cpu: this.#stopCpu ?? cpu, pending: this.#takePendingStop()! };
      }
      if (interrupted && this.#irqchip && this.#haltedForGood(cpu)) {
        return { cpu, pending: { reason: "halt" } };
      }
      await this.#events.yield();
      if (this.#closed || this.#pauseRequested) {
        settle();
        return { cpu, pending: this.#pausedStop() };
      }
      if (performance.now() >= deadline) {
        settle();
        return { cpu, pending: { reason: "timeout" } };
      }
    }
  }

  /**
   * An application processor runs by itself (a step, or a stretch the
   * interceptor asked for): this thread waits for its exits and services
   * them, yielding to the event loop every tick as vCPU 0's loop does.
   * Returns undefined when its stretch alone is over.
   */
  async #runAlone(cpu: Vcpu, deadline: number, options: RunOptions): Promise<Stopped | undefined> {
    const unhandled = options.unhandled ?? this.#unhandled;
    let nextTick = performance.now() + TICK_MS;
    for (;;) {
      this.#serviceAps(unhandled, cpu);
      if (this.#restart !== undefined) {
        const restart = this.#restart;
        this.#restart = undefined;
        restart();
      }
      if (this.#pendingStop !== undefined) return { cpu: this.#stopCpu ?? cpu, pending: this.#takePendingStop()! };
      if ((this.#alone ?? this.#only) !== cpu) return undefined;
      if (performance.now() >= nextTick) {
        nextTick = performance.now() + TICK_MS;
        await this.#events.yield();
        if (this.#closed || this.#pauseRequested) return { cpu, pending: this.#pausedStop() };
        if (performance.now() >= deadline) return { cpu, pending: { reason: "timeout" } };
      }
      this.#aps.waitForExit(cpu, nextTick - performance.now());
    }
  }

  /**
   * Completes the exits application processors handed to this thread
   * (only `only`'s when one runs alone). Exits the interceptor knows (debug
   * exits, breakpoints, watched pages) go to it first, as vCPU 0's do.
   */
  #serviceAps(unhandled: UnhandledPolicy, only?: Vcpu): void {
    this.#aps.service((posted: ApExit) => {
      const { cpu } = posted;
      if (posted.exit === undefined) {
        this.#noteStop(cpu, {
          reason: "internal-error",
          suberror: 0,
          detail: `KVM_RUN failed on vCPU ${cpu.index}: errno ${posted.errno}`,
        });
        return false;
      }
      const exit = posted.exit;
      if (exit.kind === "interrupted") return true;
      this.#servicing = cpu;
      try {
        let outcome: Emulation;
        if (exit.kind === "io-out" || exit.kind === "io-in") {
          outcome = emulatePortIo(exit, this.#handlers, unhandled);
        } else {
          // Its registers changed on its own thread: forget what this thread cached.
          cpu.invalidate();
          const intercepted = this.#interceptor?.onExit(cpu, exit);
          if (intercepted === "resume") {
            this.#endAlone(cpu);
            outcome = "handled";
          } else if (intercepted === "alone") {
            outcome = this.#goAlone(cpu) ?? "handled";
          } else if (intercepted !== undefined) {
            outcome = intercepted;
          } else if (exit.kind === "mmio-read" || exit.kind === "mmio-write") {
            outcome = emulateMmio(exit, this.#handlers, unhandled);
          } else {
            outcome = stopForExit(exit, () => this.instructionBytes(cpu));
          }
        }
        if (outcome === "handled" && (exit.kind === "io-out" || exit.kind === "mmio-write")) {
          outcome = this.#interceptor?.afterWrite?.(cpu) ?? "handled";
        }
        if (outcome === "handled") return true;
        // A stop of this vCPU: it stays out of KVM_RUN (its state as the stop left it) until the next run.
        this.#noteStop(cpu, outcome);
        return false;
      } finally {
        this.#servicing = undefined;
      }
    }, only);
  }

  /** Emulates and completes the port and MMIO exits parked APs still hold (see ApplicationProcessors.settle). */
  #settleAps(): void {
    if (this.#aps.count === 0) return;
    this.#aps.settle(({ cpu, exit }) => {
      if (exit === undefined) return false;
      this.#servicing = cpu;
      try {
        let outcome: Emulation;
        if (exit.kind === "io-out" || exit.kind === "io-in") {
          outcome = emulatePortIo(exit, this.#handlers, this.#unhandled);
        } else if (exit.kind === "mmio-read" || exit.kind === "mmio-write") {
          outcome = emulateMmio(exit, this.#handlers, this.#unhandled);
        } else {
          return false;
        }
        if (outcome !== "handled") this.#noteStop(cpu, outcome);
      } finally {
        this.#servicing = undefined;
      }
      return true;
    });
  }

  /** A write exit of vCPU 0 was emulated: the interceptor may end a single step here (see ExitInterceptor.afterWrite). */
  #afterWrite(cpu: Vcpu): void {
    const afterWrite = this.#interceptor?.afterWrite;
    if (afterWrite === undefined) return;
    const stop = afterWrite.call(this.#interceptor, cpu);
    if (stop !== undefined) this.#pendingStop ??= stop;
  }

  #runSafePoint(cpu: Vcpu, interrupted: boolean): void {
    const callback = this.#safePoint!;
    this.#safePoint = undefined;
    if (interrupted) cpu.invalidate();
    else this.#completeExit(cpu);
    this.#atSafePoint = true;
    try {
      callback();
    } finally {
      this.#atSafePoint = false;
    }
  }

  #noteStop(cpu: Vcpu, outcome: PendingStop): void {
    if (this.#pendingStop !== undefined) return;
    this.#pendingStop = outcome;
    this.#stopCpu = cpu;
  }

  /**
   * With the in-kernel irqchip, HLT never leaves KVM: the BSP is halted for
   * good when KVM says it is halted and its interrupts are off.
   */
  #haltedForGood(cpu: Vcpu): boolean {
    if (cpu.fd.getMpState() !== KVM_MP_STATE_HALTED) return false;
    return (cpu.regs.rflags & RFLAGS_IF) === 0n;
  }

  #completeExit(cpu: Vcpu): void {
    if (this.#canCompleteExits) cpu.fd.completePendingExit();
    cpu.invalidate();
  }

  /** Up to 15 bytes at the vCPU's rip, read through the guest's page tables; undefined when unmapped. */
  instructionBytes(cpu: Vcpu): Uint8Array | undefined {
    try {
      const sregs = cpu.sregsView;
      const rip = cpu.regs.rip;
      const linear = cpu.mode === "long" ? rip : (sregs.cs.base + rip) & 0xffff_ffffn;
      const translated = cpu.fd.translate(linear);
      if (translated === undefined) return undefined;
      const physical = Number(translated.physical);
      const pageLeft = 0x1000 - (physical & 0xfff);
      const length = Math.min(15, pageLeft);
      return this.memory.isRam(physical, length) ? this.memory.read(physical, length) : undefined;
    } catch {
      return undefined;
    }
  }

  #withContext(cpu: Vcpu, pending: PendingStop): StopEvent {
    // No invalidate: the vCPU's caches are stamped with its run generation (and AP paths forget theirs).
    const rip = cpu.regs.rip;
    const context: StopContext = { cpu: cpu.index, rip, mode: cpu.mode };
    const symbol = this.#interceptor?.describe?.(rip);
    if (symbol !== undefined) context.symbol = symbol;
    return { ...pending, ...context } as StopEvent;
  }

  /** Throws when the machine is closed or running. */
  protected assertIdle(action: string): void {
    this.#assertIdle(action);
  }

  #assertIdle(action: string): void {
    if (this.#closed) throw new Error(`Cannot ${action}: the VM ${this.name} is closed`);
    if (this.#running) throw new Error(`Cannot ${action}: the VM ${this.name} is running (pause it first)`);
  }

  /** Closes the vCPUs, the VM and its memory. Safe to call twice; a running guest is stopped first. */
  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.#running) await this.pause();
    for (const closer of [...this.#closers]) {
      try {
        await closer();
      } catch {
        // closing goes on: the VM's own resources must be released whatever a closer did
      }
    }
    this.#closers.clear();
    this.#closed = true;
    this.#aps.close();
    for (const fd of this.#vcpuFds) fd.close();
    this.#vmFd.close();
    this.memory.close();
    this.#kvm.close();
  }

  /** `await using vm = await Vm.create()` closes the VM at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
