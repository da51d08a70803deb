/**
 * The machine: a VM with guest RAM, vCPUs, buses with the default devices,
 * loaders and the run loop that turns KVM exits into typed stop events.
 *
 * The run loop runs vCPU 0 on the main thread, synchronously through the
 * fast FFI path, so devices, hooks and the debugger are plain closures on
 * this thread. A periodic kick (see core/kvm/signals.ts) interrupts KVM_RUN
 * every 10 ms so the loop can yield to the event loop: timers, stdin and
 * sockets stay live while a guest spins without exits. Application
 * processors run KVM_RUN on their own Worker threads and hand the exits that
 * need a device to this thread (core/vcpu_thread.ts); with the in-kernel
 * irqchip those are rare.
 *
 * @module
 */

import { Kvm, type VcpuFd, type VmFd } from "./kvm/kvm.ts";
import { KVM_CAP, KVM_EXIT, KVM_MEM_READONLY } from "./kvm/ioctls.ts";
import { currentThreadId, kickThread, mainThreadKick, prepareKickSignal } from "./kvm/signals.ts";
import { Command, Mailbox, State } from "./vcpu_thread.ts";
import { GuestMemory, parseSize } from "./memory.ts";
import { Vcpu } from "./vcpu.ts";
import { cpuidForVcpu, type CpuidOptions } from "./cpuid.ts";
import type { StopContext, StopEvent } from "./stop.ts";
import { IoBus, MmioBus } from "../devices/bus.ts";
import { Serial16550 } from "../devices/serial.ts";
import { DebugExit, SinkPort } from "../devices/debug_exit.ts";
import { detectFormat, type LoadedImage, loadImage, type LoadOptions } from "./loader/mod.ts";
import { Debugger } from "./debug/debugger.ts";
import { installPcPlatform, PC_LAYOUT, type PcPlatform } from "./platform.ts";
import { FW_CFG_KEY } from "../devices/fw_cfg.ts";
import { attachGdb, type VmGdb } from "./gdb/server.ts";

/** Options of {@link Vm.create}. */
export interface VmOptions {
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
  unhandled?: "ignore" | "stop";
  /** A name for listings (default `vm1`, `vm2`, ... in the order VMs are made in this process). */
  name?: string;
  /**
   * The in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and PIT. Default
   * true; false keeps the tiniest guests exiting on HLT (KVM_EXIT_HLT) and
   * gives a single vCPU no interrupt sources at all.
   */
  irqchip?: boolean;
  /**
   * `"pc"` (default): the PC devices and firmware tables of core/platform.ts
   * (fw_cfg, CMOS, i8042, PCI config ports, pc-testdev, ACPI and MP tables).
   * `"none"`: only COM1, the debug-exit port and port 0x80.
   */
  platform?: "pc" | "none";
  /** What a guest's reset request (i8042 0xfe, port 0xcf9) does: stop the VM (default) or reload the image and go on. */
  onReset?: "stop" | "reset";
}

/** Options of {@link Vm.run}. */
export interface RunOptions {
  /** Stop with reason "timeout" after this many milliseconds. */
  timeout?: number;
  /** Overrides {@link VmOptions.unhandled} for this run. */
  unhandled?: "ignore" | "stop";
}

/** A port access as hooks see it. */
export interface IoAccess {
  port: number;
  size: number;
  direction: "in" | "out";
  /** The value written (out only). */
  data?: number;
}

/** A port hook: return a number to answer a read; the return value is ignored for writes. */
export type IoHook = (access: IoAccess) => number | void;

/** An MMIO access as hooks see it. */
export interface MmioAccess {
  address: bigint;
  size: number;
  direction: "read" | "write";
  /** The value written (write only). */
  data?: bigint;
}

/** An MMIO hook: return a number or bigint to answer a read. */
export type MmioHook = (access: MmioAccess) => bigint | number | void;

type Pending<T> = T extends StopEvent ? Omit<T, keyof StopContext> : never;
/** A stop event before the vCPU context (rip, mode) is filled in. */
export type PendingStop = Pending<StopEvent>;

/**
 * Consulted by the run loop for exits only the debugger understands
 * (KVM_EXIT_DEBUG, emulation failures at planted breakpoints, watched pages).
 * Returns a stop, or `"resume"` to re-enter the guest, or undefined when the
 * exit is not the debugger's.
 */
export interface ExitInterceptor {
  /** Before each KVM_RUN that follows a stop (e.g. stepping over a planted breakpoint). */
  beforeResume?(cpu: Vcpu): Promise<PendingStop | undefined> | PendingStop | undefined;
  /** A KVM exit the machine does not handle itself, or an MMIO exit. */
  onExit(cpu: Vcpu, reason: number): PendingStop | "resume" | undefined;
}

const IO_ALL_ONES = [0, 0xff, 0xffff, 0, 0xffffffff];
/** Value masks by access size, so the MMIO path does no BigInt shifting per exit. */
const MMIO_MASKS = [
  0n,
  0xffn,
  0xffffn,
  0xff_ffffn,
  0xffff_ffffn,
  0xff_ffff_ffffn,
  0xffff_ffff_ffffn,
  0xff_ffff_ffff_ffffn,
  0xffff_ffff_ffff_ffffn,
];
const INTERNAL_SUBERRORS: Record<number, string> = {
  1: "emulation failure",
  2: "simultaneous exceptions",
  3: "failed event delivery",
  4: "unexpected exit reason",
};

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
let statAllowed = true;
let yields = 0;
async function yieldToEventLoop(): Promise<void> {
  if (++yields % 4 !== 0) return await new Promise((resolve) => setImmediate(resolve));
  if (statAllowed) {
    try {
      await Deno.stat("/");
      return;
    } catch {
      statAllowed = false;
    }
  }
  await new Promise((resolve) => setTimeout(resolve, 0));
}

const IRQCHIP_IDS = { "pic-master": 0, "pic-slave": 1, "ioapic": 2 } as const;

/** How often the run loop yields to the event loop (the kick timer's period too). */
const TICK_MS = 10;

let sharedKvm: Kvm | undefined;
/** VMs made in this process: default names vm1, vm2, ... as the REPL's `.vm list` shows them. */
let vmsMade = 0;
let openVms = 0;

/**
 * A virtual machine.
 *
 * @example
 * ```ts ignore
 * import { Vm } from "../mod.ts";
 * await using vm = await Vm.create({ memory: "64M" });
 * await vm.load("tests/guests/build/hello64.elf");
 * const stop = await vm.run({ timeout: 10_000 });
 * console.log(vm.serial.output, stop.reason); // "hello\n" "exit"
 * ```
 */
export class Vm {
  /** Guest physical RAM. */
  readonly memory: GuestMemory;
  /** The port-I/O bus. */
  readonly io: IoBus = new IoBus();
  /** The MMIO bus. */
  readonly mmio: MmioBus = new MmioBus();
  /** COM1 (0x3f8). */
  readonly serial: Serial16550 = new Serial16550();
  /** The vCPUs. */
  readonly cpus: readonly Vcpu[];
  /** Display name. */
  readonly name: string;
  /** The last image loaded, with its symbols. */
  image: LoadedImage | undefined;
  /** The debugger's hook into the run loop (set by the debug engine). */
  exitInterceptor: ExitInterceptor | undefined;
  /** The last stop event. */
  lastStop: StopEvent | undefined;

  readonly #vmFd: VmFd;
  readonly #vcpuFds: VcpuFd[];
  #closed = false;
  #running = false;
  #pauseRequested = false;
  #pendingStop: PendingStop | undefined;
  #unhandled: "ignore" | "stop";
  #ioHooked = new Uint8Array(0x10000);
  #ioHooks: { lo: number; hi: number; hook: IoHook }[] = [];
  #mmioHooks: { lo: bigint; hi: bigint; hook: MmioHook }[] = [];
  #stopObservers = new Set<(stop: StopEvent) => void>();
  #runWaiters: ((stop: StopEvent) => void)[] = [];
  #canCompleteExits: boolean;
  #slotCount = 0;
  readonly #irqchip: boolean;
  #aps: { cpu: Vcpu; worker: Worker; mailbox: Int32Array }[] = [];
  /** Set by an AP thread when an exit waits for this thread (see core/vcpu_thread.ts). */
  #apPending = new Int32Array(new SharedArrayBuffer(4));
  /** The vCPU whose exit is being handled (devices' stop requests name it). */
  #servicing: Vcpu | undefined;
  #stopCpu: Vcpu | undefined;

  private constructor(vmFd: VmFd, memory: GuestMemory, vcpuFds: VcpuFd[], options: VmOptions) {
    this.#irqchip = options.irqchip ?? true;
    this.#vmFd = vmFd;
    this.memory = memory;
    this.#vcpuFds = vcpuFds;
    this.cpus = vcpuFds.map((fd) => new Vcpu(fd, memory));
    this.name = options.name ?? `vm${++vmsMade}`;
    this.#unhandled = options.unhandled ?? "ignore";
    this.#canCompleteExits = vmFd.kvm.checkExtension(KVM_CAP.IMMEDIATE_EXIT) > 0;
    this.setPageProtection(new Map());
    if (this.#irqchip) this.serial.connectInterrupt((level) => this.irqLine(4, level));
    this.io.insert(PC_LAYOUT.com1, 8, "com1", this.serial);
    this.io.insert(
      PC_LAYOUT.debugExit,
      1,
      "debug-exit",
      new DebugExit((value) => this.requestStop({ reason: "exit", value, code: ((value << 1) | 1) >>> 0 })),
    );
    this.io.insert(PC_LAYOUT.post, 1, "post", new SinkPort());
    this.#resetPolicy = options.onReset ?? "stop";
    if ((options.platform ?? "pc") === "pc") {
      this.platform = installPcPlatform(this, (source) => this.#onGuestReset(source));
    }
  }

  /** The PC devices (fw_cfg, CMOS, i8042, PCI host, pc-testdev), unless created with `platform: "none"`. */
  readonly platform: PcPlatform | undefined;
  #resetPolicy: "stop" | "reset";
  #resetRequested = false;
  #sleep: { wakeAfterMs: number; onWake: () => void } | undefined;

  /**
   * Puts the machine to sleep (ACPI S3) after the current exit: no vCPU runs
   * until `wakeAfterMs` have passed (pause and timeout still work), then
   * `onWake` sets up the resume and the guest goes on. The platform uses it.
   */
  requestSleep(wakeAfterMs: number, onWake: () => void): void {
    this.#sleep = { wakeAfterMs, onWake };
  }
  #lastLoad: { bytes: Uint8Array; options: LoadOptions } | undefined;

  #onGuestReset(source: string): void {
    if (this.#resetPolicy === "reset" && this.#lastLoad !== undefined && this.cpus.length === 1) {
      this.#resetRequested = true;
      return;
    }
    this.requestStop({ reason: "shutdown", cause: "reset", detail: `reset requested (${source})` });
  }

  /**
   * Creates a VM with RAM from guest address 0 and its vCPUs in their reset
   * state. Throws a clear error when KVM is missing or not accessible.
   */
  static async create(options: VmOptions = {}): Promise<Vm> {
    const vm = Vm.#createNow(options);
    try {
      await vm.#startApplicationProcessors();
    } catch (error) {
      await vm.close();
      throw error;
    }
    return vm;
  }

  /** Each application processor gets its own thread (a Worker running KVM_RUN); see core/vcpu_thread.ts. */
  async #startApplicationProcessors(): Promise<void> {
    const mainTid = currentThreadId();
    for (const cpu of this.cpus.slice(1)) {
      const mailbox = new Int32Array(new SharedArrayBuffer(Mailbox.size * 4));
      // Parked until the first run(): the worker must not enter KVM_RUN before the BSP is set up.
      mailbox[Mailbox.command] = Command.park;
      const worker = new Worker(new URL("./vcpu_thread.ts", import.meta.url), { type: "module" });
      worker.postMessage({
        fd: cpu.fd.fd,
        mainTid,
        mailbox: mailbox.buffer,
        pending: this.#apPending.buffer,
        mainRun: this.#canCompleteExits ? this.cpu(0).fd.runArea.address : undefined,
      });
      this.#aps.push({ cpu, worker, mailbox });
    }
    for (const { cpu, mailbox } of this.#aps) {
      const deadline = performance.now() + 10_000;
      while (Atomics.load(mailbox, Mailbox.state) !== State.parked) {
        if (performance.now() > deadline) throw new Error(`vCPU ${cpu.index}'s thread did not start within 10 s`);
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    }
  }

  #resumeAps(): void {
    for (const { mailbox } of this.#aps) {
      Atomics.store(mailbox, Mailbox.command, Command.run);
      Atomics.notify(mailbox, Mailbox.command);
    }
  }

  /** Stops every application processor (out of KVM_RUN) before the VM reports a stop. */
  #parkAps(): void {
    for (const { mailbox } of this.#aps) {
      Atomics.store(mailbox, Mailbox.command, Command.park);
      const tid = Atomics.load(mailbox, Mailbox.tid);
      if (tid !== 0 && Atomics.load(mailbox, Mailbox.state) === State.running) kickThread(tid);
    }
    for (const { cpu, mailbox } of this.#aps) {
      const deadline = performance.now() + 2_000;
      for (;;) {
        const state = Atomics.load(mailbox, Mailbox.state);
        if (state === State.parked || state === State.exit || state === State.gone) break;
        if (performance.now() > deadline) throw new Error(`vCPU ${cpu.index} did not stop within 2 s`);
        Atomics.wait(mailbox, Mailbox.state, state, 5);
        const tid = Atomics.load(mailbox, Mailbox.tid);
        if (Atomics.load(mailbox, Mailbox.state) === State.running && tid !== 0) kickThread(tid);
      }
      cpu.invalidate();
    }
  }

  /** Completes the exits application processors handed to this thread. */
  #serviceAps(stopOnUnhandled: boolean): void {
    // Cleared before the mailboxes are read: an AP that posts after this sets them again (see vcpu_thread.ts).
    this.cpu(0).fd.run8[1] = 0;
    Atomics.store(this.#apPending, 0, 0);
    for (const { cpu, mailbox } of this.#aps) {
      if (Atomics.load(mailbox, Mailbox.state) !== State.exit || Atomics.load(mailbox, Mailbox.serviced) === 1) {
        continue;
      }
      const fd = cpu.fd;
      const failed = Atomics.load(mailbox, Mailbox.reason) === -1;
      const reason = failed ? -1 : fd.run32[2]!;
      this.#servicing = cpu;
      try {
        if (reason === KVM_EXIT.IO) this.#handleIo(fd, stopOnUnhandled);
        else if (reason === KVM_EXIT.MMIO) this.#handleMmio(fd, stopOnUnhandled);
        else if (reason === KVM_EXIT.INTR) {
          // nothing to do
        } else {
          // A stop of this vCPU: it stays out of KVM_RUN until the VM runs again.
          cpu.invalidate();
          this.#stopCpu = cpu;
          this.#pendingStop ??= failed
            ? {
              reason: "internal-error",
              suberror: 0,
              detail: `KVM_RUN failed on vCPU ${cpu.index}: errno ${Atomics.load(mailbox, Mailbox.errno)}`,
            }
            : this.#decodeStop(cpu, reason);
          continue;
        }
      } finally {
        this.#servicing = undefined;
      }
      Atomics.store(mailbox, Mailbox.serviced, 1);
      Atomics.notify(mailbox, Mailbox.serviced);
    }
  }

  /** Sets the level of an interrupt line (ISA IRQ / GSI) of the in-kernel irqchip. */
  irqLine(irq: number, level: boolean): void {
    if (!this.#irqchip) {
      throw new Error(`Cannot raise IRQ ${irq}: this VM has no irqchip (Vm.create({ irqchip: true }))`);
    }
    this.#vmFd.irqLine(irq, level);
  }

  /**
   * The in-kernel interrupt controllers' and PIT's raw KVM state, for
   * snapshots and firmware set-up: `"pic-master"`, `"pic-slave"`, `"ioapic"`
   * (`struct kvm_irqchip`) or `"pit"` (`struct kvm_pit_state2`).
   */
  kernelDeviceState(device: "pic-master" | "pic-slave" | "ioapic" | "pit"): Uint8Array<ArrayBuffer> {
    if (!this.#irqchip) throw new Error(`Cannot read the ${device} state: this VM has no irqchip`);
    return device === "pit" ? this.#vmFd.getPit2() : this.#vmFd.getIrqchip(IRQCHIP_IDS[device]);
  }

  /** Writes state read with {@link kernelDeviceState} (possibly changed) back into KVM. */
  setKernelDeviceState(device: "pic-master" | "pic-slave" | "ioapic" | "pit", state: Uint8Array<ArrayBuffer>): void {
    if (!this.#irqchip) throw new Error(`Cannot set the ${device} state: this VM has no irqchip`);
    if (device === "pit") this.#vmFd.setPit2(state);
    else this.#vmFd.setIrqchip(state);
  }

  /** True when the VM has the in-kernel PIC, IOAPIC, LAPICs and PIT. */
  get hasIrqchip(): boolean {
    return this.#irqchip;
  }

  static #createNow(options: VmOptions): Vm {
    const memorySize = parseSize(options.memory ?? "64M");
    const cpuCount = options.cpus ?? 1;
    if (!Number.isInteger(cpuCount) || cpuCount < 1 || cpuCount > 255) {
      throw new RangeError(`Invalid vCPU count ${cpuCount}: expected 1-255`);
    }
    const kvm = sharedKvm ??= Kvm.open();
    const vmFd = kvm.createVm();
    let memory: GuestMemory | undefined;
    const vcpuFds: VcpuFd[] = [];
    try {
      // Intel's real-mode emulation needs a TSS and an identity-map page; put them just below 4 GiB like QEMU.
      vmFd.setTssAddress(0xfffb_d000);
      vmFd.setIdentityMapAddress(0xfffb_c000n);
      if (options.irqchip ?? true) vmFd.createIrqchip(); // before the vCPUs, as KVM requires
      memory = GuestMemory.allocate(memorySize);
      const supported = kvm.supportedCpuid();
      prepareKickSignal();
      for (let id = 0; id < cpuCount; id++) {
        const fd = vmFd.createVcpu(id);
        vcpuFds.push(fd);
        const cpuid = typeof options.cpuid === "function" ? options.cpuid(id) : options.cpuid;
        fd.setCpuid(cpuidForVcpu(supported, id, cpuCount, cpuid));
      }
      if (options.irqchip ?? true) vmFd.createPit2();
    } catch (error) {
      for (const fd of vcpuFds) fd.close();
      memory?.close();
      vmFd.close();
      throw error;
    }
    openVms++;
    return new Vm(vmFd, memory, vcpuFds, options);
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

  /**
   * Loads a kernel image (a path or its bytes) into RAM and puts vCPU 0 at
   * its entry in the mode it needs. The format is detected unless given: a
   * file without an ELF, multiboot or boot-sector signature is refused, bytes
   * handed over by code run as a flat image. A bad image throws and loads nothing.
   */
  async load(source: string | Uint8Array, options: LoadOptions = {}): Promise<LoadedImage> {
    this.#assertIdle("load an image");
    let bytes: Uint8Array;
    if (typeof source === "string") {
      try {
        bytes = await Deno.readFile(source);
      } catch (error) {
        throw new Error(`Cannot read kernel image ${source}: ${(error as Error).message}`, { cause: error });
      }
    } else {
      bytes = source;
    }
    const loadOptions: LoadOptions = { ...options };
    if (typeof source === "string" && loadOptions.path === undefined) loadOptions.path = source;
    return this.#loadBytes(bytes, loadOptions);
  }

  /** Loads an image's bytes and sets up vCPU 0 (also the reset path, while the run loop owns the VM). */
  #loadBytes(bytes: Uint8Array, loadOptions: LoadOptions): LoadedImage {
    const memory = this.memory;
    // A command line for a kernel that is not multiboot reaches it through fw_cfg only (QEMU's -append does the same).
    const format = loadOptions.format === undefined || loadOptions.format === "auto"
      ? detectFormat(bytes, loadOptions.path, { ...loadOptions, fromCode: loadOptions.path === undefined })
      : loadOptions.format;
    const cmdline = loadOptions.cmdline ?? "";
    if (format !== "multiboot") delete loadOptions.cmdline;
    const image = loadImage(bytes, {
      ramSize: memory.ramSize,
      isRam: (address, length) => memory.isRam(address, length),
      write: (address, data) => memory.write(address, data),
      fill: (address, length, value) => memory.fill(address, length, value),
    }, { ...loadOptions, format });
    const cpu = this.cpu(0);
    const entry = image.entry;
    if (image.mode === "real") {
      const linear = Number(entry);
      const cs = linear < 0x10000 ? 0 : linear >>> 4;
      cpu.enterRealMode({ cs, ip: linear - cs * 16 });
    } else if (image.mode === "protected") {
      cpu.enterProtectedMode({ entry, registers: image.registers });
    } else {
      cpu.enterLongMode({ entry, registers: image.registers });
    }
    this.image = image;
    this.#lastLoad = { bytes, options: { ...loadOptions, cmdline } };
    if (image.symbols.length > 0) this.debug.symbols.add(image.symbols);
    if (this.platform !== undefined && cmdline !== "") {
      const data = new TextEncoder().encode(cmdline + "\0");
      const size = new Uint8Array(4);
      new DataView(size.buffer).setUint32(0, data.length, true);
      this.platform.fwCfg.setItem(FW_CFG_KEY.cmdlineSize, size);
      this.platform.fwCfg.setItem(FW_CFG_KEY.cmdlineData, data);
    }
    return image;
  }

  /**
   * Watches port accesses: `port` or `[lo, hi]` (inclusive). The hook sees
   * every access and may answer reads. Returns a function that removes it.
   */
  onIo(ports: number | [number, number], hook: IoHook): () => void {
    const [lo, hi] = typeof ports === "number" ? [ports, ports] : ports;
    if (!(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && hi <= 0xffff && lo <= hi)) {
      throw new RangeError(`Invalid port range ${JSON.stringify(ports)}: expected ports within 0-0xffff`);
    }
    const entry = { lo, hi, hook };
    this.#ioHooks.push(entry);
    this.#ioHooked.fill(1, lo, hi + 1);
    return () => {
      this.#ioHooks = this.#ioHooks.filter((e) => e !== entry);
      this.#ioHooked.fill(0, lo, hi + 1);
      for (const e of this.#ioHooks) this.#ioHooked.fill(1, e.lo, e.hi + 1);
    };
  }

  /** Watches MMIO accesses in `[lo, hi]` (inclusive); the hook may answer reads. Returns a remover. */
  onMmio(range: [number | bigint, number | bigint], hook: MmioHook): () => void {
    const lo = BigInt(range[0]);
    const hi = BigInt(range[1]);
    if (lo > hi || lo < 0n) throw new RangeError(`Invalid MMIO range 0x${lo.toString(16)}-0x${hi.toString(16)}`);
    const entry = { lo, hi, hook };
    this.#mmioHooks.push(entry);
    return () => void (this.#mmioHooks = this.#mmioHooks.filter((e) => e !== entry));
  }

  /**
   * Lays out the KVM memory slots so that the given 4 KiB pages are
   * read-only (guest writes exit to hvsh as MMIO) or absent (every access
   * exits). The debugger's watchpoints use this: it works on every host,
   * unlike DR7 data breakpoints, which nested KVM may never deliver.
   * An empty map restores plain RAM slots.
   */
  setPageProtection(pages: ReadonlyMap<number, "readonly" | "none">): void {
    this.#assertIdle("change memory slots");
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
    for (let slot = 0; slot < this.#slotCount; slot++) this.#vmFd.setUserMemoryRegion(slot, 0, 0n, 0n, 0n);
    slots.forEach((s, slot) => this.#vmFd.setUserMemoryRegion(slot, s.flags, BigInt(s.base), BigInt(s.size), s.host));
    this.#slotCount = slots.length;
  }

  /** True when the host can make pages read-only for the guest (KVM_CAP_READONLY_MEM). */
  get supportsReadonlyPages(): boolean {
    return this.#vmFd.kvm.checkExtension(KVM_CAP.READONLY_MEM) > 0;
  }

  /** @internal The VM fd's KVM capability check, for the debugger. */
  checkExtension(capability: number): number {
    return this.#vmFd.kvm.checkExtension(capability);
  }

  #closers = new Set<() => void | Promise<void>>();

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
   * Stops a running guest (within a few milliseconds, even one that makes no
   * exits). Resolves with the stop event; with undefined when nothing runs.
   */
  pause(): Promise<StopEvent | undefined> {
    if (!this.#running) return Promise.resolve(undefined);
    this.#pauseRequested = true;
    return new Promise((resolve) => this.#runWaiters.push(resolve));
  }

  /** True while `run()` is executing guest code. */
  get running(): boolean {
    return this.#running;
  }

  /**
   * Runs the guest until it stops: debug-exit, halt, crash, pause, timeout,
   * a debugger stop, or an unclaimed access when asked to stop on those.
   */
  async run(options: RunOptions = {}): Promise<StopEvent> {
    this.#assertIdle("run");
    const timeout = options.timeout;
    if (timeout !== undefined && !(timeout >= 0)) throw new RangeError(`Invalid timeout ${timeout}: expected ms >= 0`);
    this.#running = true;
    this.#pauseRequested = false;
    this.#stopCpu = undefined;
    const cpu = this.cpu(0);
    let stop: StopEvent | undefined;
    mainThreadKick.acquire();
    this.#resumeAps();
    try {
      const early = await this.exitInterceptor?.beforeResume?.(cpu);
      stop = early !== undefined
        ? this.#withContext(cpu, early)
        : await this.#loop(cpu, timeout === undefined ? Infinity : performance.now() + timeout, options);
    } finally {
      this.#parkAps();
      mainThreadKick.release();
      this.#running = false;
      this.#pendingStop = undefined;
      if (stop === undefined) {
        // run() is rejecting (a hook threw): a pending pause() still gets an answer.
        const cpuNow = this.#closed ? undefined : cpu;
        const paused = cpuNow === undefined ? undefined : this.#withContext(cpuNow, { reason: "paused" });
        for (const waiter of this.#runWaiters.splice(0)) waiter(paused!);
      }
    }
    this.lastStop = stop;
    for (const waiter of this.#runWaiters.splice(0)) waiter(stop);
    for (const observer of this.#stopObservers) observer(stop);
    return stop;
  }

  async #loop(cpu: Vcpu, deadline: number, options: RunOptions): Promise<StopEvent> {
    const fd = cpu.fd;
    const stopOnUnhandled = (options.unhandled ?? this.#unhandled) === "stop";
    // A kick that lands while this thread is in JavaScript is handled and lost, so a guest
    // that exits all the time also gets its ticks from the clock, looked at every 64 exits.
    let exits = 0;
    let nextTick = performance.now() + TICK_MS;
    for (;;) {
      const reason = fd.run();
      let tick = reason === KVM_EXIT.INTR;
      if (reason === KVM_EXIT.IO || reason === KVM_EXIT.MMIO) {
        // Inline try/catch, not a closure per exit: this is the hot path.
        try {
          if (reason === KVM_EXIT.IO) {
            this.#handleIo(fd, stopOnUnhandled);
          } else {
            const intercepted = this.exitInterceptor?.onExit(cpu, reason);
            if (intercepted === undefined) this.#handleMmio(fd, stopOnUnhandled);
            else if (intercepted !== "resume") this.#pendingStop ??= intercepted;
          }
        } catch (error) {
          // A device or hook threw: complete the exit so the VM stays consistent, then report it.
          this.#completeExit(cpu);
          throw error;
        }
        if ((++exits & 63) === 0 && performance.now() >= nextTick) tick = true;
        if (this.#apPending[0] !== 0) this.#serviceAps(stopOnUnhandled);
      } else if (!tick) {
        cpu.invalidate();
        const intercepted = this.exitInterceptor?.onExit(cpu, reason);
        if (intercepted === "resume") continue;
        return this.#withContext(cpu, intercepted ?? this.#decodeStop(cpu, reason));
      }
      if (this.#resetRequested) {
        this.#resetRequested = false;
        this.#completeExit(cpu);
        const last = this.#lastLoad!;
        this.#loadBytes(last.bytes, last.options);
        continue;
      }
      if (this.#pendingStop !== undefined) {
        const pending = this.#pendingStop;
        this.#pendingStop = undefined;
        this.#completeExit(cpu);
        return this.#withContext(this.#stopCpu ?? cpu, pending);
      }
      if (this.#sleep !== undefined) {
        const sleep = this.#sleep;
        this.#completeExit(cpu);
        const wakeAt = performance.now() + sleep.wakeAfterMs;
        while (performance.now() < wakeAt) {
          await new Promise((resolve) => setTimeout(resolve, Math.min(TICK_MS, wakeAt - performance.now())));
          if (this.#closed || this.#pauseRequested) return this.#withContext(cpu, { reason: "paused" });
          if (performance.now() >= deadline) return this.#withContext(cpu, { reason: "timeout" });
        }
        this.#sleep = undefined;
        sleep.onWake();
        continue;
      }
      if (!tick) continue;
      nextTick = performance.now() + TICK_MS;
      if (reason === KVM_EXIT.INTR) cpu.invalidate();
      // An I/O exit must be completed before anyone looks at the vCPU (KVM's rule); an INTR has nothing pending.
      const settle = () => reason === KVM_EXIT.INTR ? cpu.invalidate() : this.#completeExit(cpu);
      if (this.#aps.length > 0) this.#serviceAps(stopOnUnhandled);
      if (this.#pendingStop !== undefined) {
        const pending = this.#pendingStop;
        this.#pendingStop = undefined;
        settle();
        return this.#withContext(this.#stopCpu ?? cpu, pending);
      }
      if (reason === KVM_EXIT.INTR && this.#irqchip && this.#haltedForGood(cpu)) {
        return this.#withContext(cpu, { reason: "halt" });
      }
      await yieldToEventLoop();
      if (this.#closed || this.#pauseRequested) {
        settle();
        return this.#withContext(cpu, { reason: "paused" });
      }
      if (performance.now() >= deadline) {
        settle();
        return this.#withContext(cpu, { reason: "timeout" });
      }
    }
  }

  /**
   * With the in-kernel irqchip, HLT never leaves KVM: the BSP is halted for
   * good when KVM says it is halted and its interrupts are off.
   */
  #haltedForGood(cpu: Vcpu): boolean {
    const KVM_MP_STATE_HALTED = 3;
    if (cpu.fd.getMpState() !== KVM_MP_STATE_HALTED) return false;
    return (cpu.regs.rflags & 0x200n) === 0n;
  }

  #completeExit(cpu: Vcpu): void {
    if (this.#canCompleteExits) cpu.fd.completePendingExit();
    cpu.invalidate();
  }

  #handleIo(fd: VcpuFd, stopOnUnhandled: boolean): void {
    const run8 = fd.run8;
    const view = fd.runView;
    const isOut = run8[32] === 1;
    const size = run8[33]!;
    const port = run8[34]! | (run8[35]! << 8);
    const count = fd.run32[9]!;
    let at = fd.run32[10]!;
    for (let i = 0; i < count; i++, at += size) {
      if (isOut) {
        const value = size === 1 ? run8[at]! : size === 2 ? view.getUint16(at, true) : view.getUint32(at, true);
        this.#portOut(port, size, value, stopOnUnhandled);
      } else {
        const value = this.#portIn(port, size, stopOnUnhandled);
        if (size === 1) run8[at] = value;
        else if (size === 2) view.setUint16(at, value, true);
        else view.setUint32(at, value >>> 0, true);
      }
    }
  }

  #portOut(port: number, size: number, value: number, stopOnUnhandled: boolean): void {
    const hooked = this.#ioHooked[port] === 1;
    if (hooked) {
      for (const { lo, hi, hook } of this.#ioHooks) {
        if (port >= lo && port <= hi) hook({ port, size, direction: "out", data: value });
      }
    }
    const entry = this.io.find(port);
    if (entry !== undefined) entry.device.write(port - entry.base, size, value);
    else if (!hooked && stopOnUnhandled) {
      this.requestStop({ reason: "unhandled-io", port, size, direction: "out", data: value });
    }
  }

  #portIn(port: number, size: number, stopOnUnhandled: boolean): number {
    if (this.#ioHooked[port] === 1) {
      let answer: number | undefined;
      for (const { lo, hi, hook } of this.#ioHooks) {
        if (port >= lo && port <= hi) {
          const result = hook({ port, size, direction: "in" });
          if (typeof result === "number" && answer === undefined) answer = result;
        }
      }
      if (answer !== undefined) return answer;
    }
    const entry = this.io.find(port);
    if (entry !== undefined) return entry.device.read(port - entry.base, size);
    if (stopOnUnhandled && this.#ioHooked[port] !== 1) {
      this.requestStop({ reason: "unhandled-io", port, size, direction: "in" });
    }
    return IO_ALL_ONES[size] ?? 0xffffffff;
  }

  #handleMmio(fd: VcpuFd, stopOnUnhandled: boolean): void {
    const view = fd.runView;
    const address = view.getBigUint64(32, true);
    const size = view.getUint32(48, true);
    const isWrite = fd.run8[52] !== 0;
    const mask = MMIO_MASKS[size] ?? MMIO_MASKS[8]!;
    const data = isWrite ? view.getBigUint64(40, true) & mask : undefined;
    const entry = this.mmio.find(address);
    if (isWrite && entry === undefined && this.#mmioHooks.length === 0 && !stopOnUnhandled) return; // dropped
    let answer: bigint | undefined;
    let hooked = false;
    for (const { lo, hi, hook } of this.#mmioHooks) {
      if (address >= lo && address <= hi) {
        hooked = true;
        const access: MmioAccess = isWrite
          ? { address, size, direction: "write", data: data! }
          : { address, size, direction: "read" };
        const result = hook(access);
        if (!isWrite && answer === undefined && (typeof result === "number" || typeof result === "bigint")) {
          answer = BigInt(result) & mask;
        }
      }
    }
    if (isWrite) {
      if (entry !== undefined) entry.device.write(address - entry.base, size, data!);
      else if (!hooked && stopOnUnhandled) {
        this.requestStop({ reason: "unhandled-mmio", address, size, direction: "write", data: data! });
      }
      return;
    }
    if (answer === undefined) {
      if (entry !== undefined) answer = entry.device.read(address - entry.base, size) & mask;
      else {
        if (!hooked && stopOnUnhandled) {
          this.requestStop({ reason: "unhandled-mmio", address, size, direction: "read" });
        }
        answer = mask;
      }
    }
    // kvm_run's mmio.data is 8 bytes at offset 40; the guest takes `size` of them.
    fd.runView.setBigUint64(40, answer, true);
  }

  #decodeStop(cpu: Vcpu, reason: number): PendingStop {
    const view = cpu.fd.runView;
    switch (reason) {
      case KVM_EXIT.HLT:
        // Without an in-kernel irqchip nothing can interrupt the guest, so HLT is final.
        return { reason: "halt" };
      case KVM_EXIT.SHUTDOWN:
        return { reason: "shutdown", cause: "triple-fault", detail: "triple fault (KVM_EXIT_SHUTDOWN)" };
      case KVM_EXIT.SYSTEM_EVENT: {
        const type = view.getUint32(32, true);
        const name = ({ 1: "shutdown", 2: "reset", 3: "crash" } as Record<number, string>)[type] ?? `type ${type}`;
        return { reason: "shutdown", cause: type === 2 ? "reset" : "system-event", detail: `system event: ${name}` };
      }
      case KVM_EXIT.INTERNAL_ERROR: {
        const suberror = view.getUint32(32, true);
        const name = INTERNAL_SUBERRORS[suberror] ?? "unknown";
        const stop: PendingStop = {
          reason: "internal-error",
          suberror,
          detail: `KVM internal error: ${name} (suberror ${suberror})`,
        };
        const bytes = this.instructionBytes(cpu);
        return bytes === undefined ? stop : { ...stop, bytes };
      }
      case KVM_EXIT.FAIL_ENTRY: {
        const code = view.getBigUint64(32, true);
        return {
          reason: "internal-error",
          suberror: Number(code & 0xffffn),
          detail: `VM entry failed: hardware reason 0x${code.toString(16)} (invalid guest state)`,
        };
      }
      default:
        return { reason: "internal-error", suberror: 0, detail: `unexpected KVM exit reason ${reason}` };
    }
  }

  /** Up to 15 bytes at the vCPU's rip, read through the guest's page tables; undefined when unmapped. */
  instructionBytes(cpu: Vcpu): Uint8Array | undefined {
    try {
      const sregs = cpu.sregsView;
      const rip = cpu.regs.rip;
      const linear = sregs.efer & 0x400n && sregs.cs.l ? rip : (sregs.cs.base + rip) & 0xffff_ffffn;
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
    const symbol = this.symbolize?.(rip);
    if (symbol !== undefined) context.symbol = symbol;
    return { ...pending, ...context } as StopEvent;
  }

  #debug: Debugger | undefined;
  #gdb: VmGdb | undefined;

  /** The gdb stub: `vm.gdb.listen({ port: 1234 })`; `vm.gdb.server` is the one listening. */
  get gdb(): VmGdb {
    return this.#gdb ??= attachGdb(this);
  }

  /** The debugger: breakpoints, watchpoints, stepping, disassembly, symbols, page walks. */
  get debug(): Debugger {
    return this.#debug ??= new Debugger(this);
  }

  /** Names addresses in stop events (set by the debugger, which owns the symbol tables). */
  symbolize: ((address: bigint) => string | undefined) | undefined;

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
    for (const { mailbox, worker } of this.#aps) {
      Atomics.store(mailbox, Mailbox.command, Command.quit);
      Atomics.notify(mailbox, Mailbox.command);
      Atomics.notify(mailbox, Mailbox.serviced);
      const tid = Atomics.load(mailbox, Mailbox.tid);
      const deadline = performance.now() + 2_000;
      while (Atomics.load(mailbox, Mailbox.state) !== State.gone && performance.now() < deadline) {
        if (tid !== 0) kickThread(tid);
        Atomics.wait(mailbox, Mailbox.state, Atomics.load(mailbox, Mailbox.state), 5);
      }
      worker.terminate();
    }
    this.#aps = [];
    for (const fd of this.#vcpuFds) fd.close();
    this.#vmFd.close();
    this.memory.close();
    if (--openVms === 0 && sharedKvm !== undefined) {
      sharedKvm.close();
      sharedKvm = undefined;
    }
  }

  /** `await using vm = await Vm.create()` closes the VM at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
