/**
 * `Vm`, the scripting API's virtual machine: a {@link Machine} with its
 * buses and hooks, the platform's devices (placed by core/platform.ts),
 * image loading, and the front ends as conveniences (`vm.debug`, `vm.gdb`).
 * This module sits on top of the machine, loaders, devices, debugger and
 * gdb server; none of them imports it.
 *
 * @module
 */

import { Machine, type MachineOptions, type MachineParts } from "./machine.ts";
import { BusDispatch, type IoHook, type MmioHook } from "./bus_dispatch.ts";
import type { IoBus, MmioBus } from "../devices/bus.ts";
import type { Serial16550 } from "../devices/serial.ts";
import { MAX_KERNEL_FILE_BYTES, readImageFile } from "./loader/read_image_file.ts";
import { FW_CFG_KEY } from "../devices/fw_cfg.ts";
import { detectFormat, e820Map, type LoadedImage, loadImage, type LoadOptions } from "./loader/mod.ts";
import { type LinuxBootSpec, linuxLoadOptions } from "./loader/linux_boot.ts";
import type { ImageSymbol } from "./loader/types.ts";
import { buildPlatform, PC_LAYOUT, type PcPlatform, resetPolicy } from "./platform.ts";
import { Debugger } from "./debug/debugger.ts";
import { attachGdb, type VmGdb } from "./gdb/server.ts";
import type { VirtioAddOptions, VirtioSlot, VirtioSlots } from "../devices/virtio/slots.ts";
import type { VirtioDevice } from "../devices/virtio/device.ts";
import { GuestMemory } from "./memory.ts";
import type { ApplyOptions, SnapshotInfo, SnapshotSubject, VmConfig, VmState } from "./snapshot/snapshot.ts";
import type { MigrationOptions, MigrationStats } from "./snapshot/migrate.ts";

export type { ExitInterceptor, KernelDevice, RunOptions } from "./machine.ts";
export type { PendingStop } from "./stop.ts";
export type { IoAccess, IoHook, MmioAccess, MmioHook } from "./bus_dispatch.ts";
export type { SnapshotInfo } from "./snapshot/snapshot.ts";
export type { MigrationOptions, MigrationStats } from "./snapshot/migrate.ts";

/** The snapshot code (core/snapshot/snapshot.ts and format.ts). */
type SnapshotCode = typeof import("./snapshot/snapshot.ts") & typeof import("./snapshot/format.ts");

let snapshotCode: SnapshotCode | undefined;

/**
 * Loads the snapshot code on first use. It is not imported at start: it
 * brings node:zlib and node:buffer, and with them Deno's Node compatibility
 * layer (~25 ms and 11 MiB of a cold `hvsh boot`), which a VM that never
 * saves, restores, forks or migrates does not need.
 */
async function loadSnapshotCode(): Promise<SnapshotCode> {
  if (snapshotCode === undefined) {
    const [snapshot, format] = await Promise.all([import("./snapshot/snapshot.ts"), import("./snapshot/format.ts")]);
    snapshotCode = { ...snapshot, ...format };
  }
  return snapshotCode;
}

/** Options of {@link Vm.restore}. */
export interface RestoreOptions extends ApplyOptions {
  /**
   * `"copy"` (default): read the stored pages into fresh RAM. `"cow"`: map
   * the snapshot's memory area MAP_PRIVATE, so every VM restored this way
   * shares the pages none of them has written (clones), and restore reads
   * only the pages the platform's set-up touches.
   */
  memory?: "copy" | "cow";
}

/** Options of {@link Vm.create}. */
export interface VmOptions extends MachineOptions {
  /**
   * `"pc"` (default): the PC devices and firmware tables of core/platform.ts
   * (fw_cfg, CMOS, i8042, PCI config ports, pc-testdev, ACPI and MP tables).
   * `"none"`: only COM1, the debug-exit port and port 0x80.
   */
  platform?: "pc" | "none";
  /** What a guest's reset request (i8042 0xfe, port 0xcf9) does: stop the VM (default) or reload the image and go on. */
  onReset?: "stop" | "reset";
}

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
export class Vm extends Machine {
  /** The port-I/O bus. */
  readonly io: IoBus;
  /** The MMIO bus. */
  readonly mmio: MmioBus;
  /** COM1 (0x3f8). */
  readonly serial: Serial16550;
  /** The PC devices (fw_cfg, CMOS, i8042, PCI host, pc-testdev, ACPI PM), unless created with `platform: "none"`. */
  readonly platform: PcPlatform | undefined;
  /** The last image loaded, with its symbols. */
  image: LoadedImage | undefined;

  readonly #buses: BusDispatch;
  readonly #virtio: VirtioSlots;
  readonly #options: VmOptions;
  /** Warnings of the restore that made this VM (breakpoints that could not come back as they were). */
  restoreWarnings: string[] = [];
  #lastLoad: { bytes: Uint8Array; options: LoadOptions } | undefined;
  #gdb: VmGdb | undefined;
  /** The symbols of every image loaded, for the debugger whenever it attaches. */
  readonly #symbols: ImageSymbol[][] = [];

  private constructor(parts: MachineParts, buses: BusDispatch, options: VmOptions) {
    super(parts, buses, options);
    this.#buses = buses;
    this.#options = options;
    this.io = buses.io;
    this.mmio = buses.mmio;
    const reload = () => {
      const last = this.#lastLoad;
      return last === undefined ? undefined : () => void this.#loadBytes(last.bytes, last.options);
    };
    const built = buildPlatform(this, buses, {
      platform: options.platform ?? "pc",
      onReset: resetPolicy(this, options.onReset ?? "stop", reload),
    });
    this.serial = built.serial;
    this.serial.watchStops(this);
    this.platform = built.pc;
    this.#virtio = built.virtio;
    this.onClose(() => this.#virtio.close());
    // Attached now, so every front end (the gdb server, the REPL) shares it with the image's symbols.
    void this.debug;
  }

  /**
   * Creates a VM with RAM from guest address 0 and its vCPUs in their reset
   * state. Throws a clear error when KVM is missing or not accessible.
   */
  static async create(options: VmOptions = {}): Promise<Vm> {
    const vm = new Vm(Machine.open(options), new BusDispatch(), options);
    try {
      await vm.startApplicationProcessors();
    } catch (error) {
      await vm.close();
      throw error;
    }
    return vm;
  }

  /**
   * Loads a kernel image (a path or its bytes) into RAM and puts vCPU 0 at
   * its entry in the mode it needs. The format is detected unless given: a
   * file without an ELF, multiboot or boot-sector signature is refused, bytes
   * handed over by code run as a flat image. A bad image throws and loads nothing.
   */
  async load(source: string | Uint8Array, options: LoadOptions = {}): Promise<LoadedImage> {
    this.assertIdle("load an image");
    let bytes: Uint8Array;
    if (typeof source === "string") {
      bytes = await readImageFile(source, { what: "kernel image", maxBytes: MAX_KERNEL_FILE_BYTES });
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
    const isLinux = format === "bzimage" || format === "pvh";
    // Linux finds virtio-mmio devices only through `virtio_mmio.device=` (with acpi=off there is no DSDT to read).
    const cmdline = isLinux
      ? withKernelParameters(loadOptions.cmdline ?? "", this.virtioKernelParameters())
      : loadOptions.cmdline ?? "";
    if (isLinux) loadOptions.cmdline = cmdline;
    if (format !== "multiboot" && !isLinux) delete loadOptions.cmdline;
    if (isLinux) {
      loadOptions.memoryMap ??= e820Map(memory.regions);
      if (this.platform?.facs !== undefined) loadOptions.rsdp ??= PC_LAYOUT.rsdp.address;
    }
    const image = loadImage(bytes, {
      ramSize: memory.ramSize,
      isRam: (address, length) => memory.isRam(address, length),
      write: (address, data) => memory.write(address, data),
      fill: (address, length, value) => memory.fill(address, length, value),
      reserved: this.platform?.reserved ?? [],
    }, { ...loadOptions, format });
    const cpu = this.cpu(0);
    const entry = image.entry;
    if (image.mode === "real") {
      const linear = Number(entry);
      const cs = linear < 0x10000 ? 0 : linear >>> 4;
      cpu.enterRealMode({ cs, ip: linear - cs * 16 });
    } else if (image.mode === "protected") {
      cpu.enterProtectedMode({ entry, registers: image.registers, ...image.bootStructures });
    } else {
      cpu.enterLongMode({ entry, registers: image.registers, ...image.bootStructures });
    }
    if (image.segments !== undefined) {
      // The Linux boot protocol names its selectors (__BOOT_CS 0x10, __BOOT_DS 0x18) and the loader wrote their GDT.
      const { gdt, gdtLimit, code, data } = image.segments;
      const sregs = cpu.sregs;
      const dataSegment = { ...sregs.ds, selector: data };
      cpu.setSregs({
        cs: { ...sregs.cs, selector: code },
        ds: dataSegment,
        es: dataSegment,
        ss: dataSegment,
        gdt: { base: BigInt(gdt), limit: gdtLimit },
      });
    }
    this.image = image;
    this.#lastLoad = { bytes, options: { ...loadOptions, cmdline } };
    // Kept for a debugger that attaches later (after a detach), given now to the one attached.
    this.#symbols.push(image.symbols);
    Debugger.attachedTo(this)?.symbols.add(image.symbols);
    this.#setCmdline(cmdline);
    return image;
  }

  /** Serves the kernel command line through fw_cfg (as QEMU's -append does). */
  #setCmdline(cmdline: string): void {
    if (this.platform !== undefined && cmdline !== "") {
      const data = new TextEncoder().encode(cmdline + "\0");
      const size = new Uint8Array(4);
      new DataView(size.buffer).setUint32(0, data.length, true);
      this.platform.fwCfg.setItem(FW_CFG_KEY.cmdlineSize, size);
      this.platform.fwCfg.setItem(FW_CFG_KEY.cmdlineData, data);
    }
  }

  /**
   * Loads a Linux kernel: a bzImage (the boot protocol's 64-bit entry) or an
   * ELF vmlinux with a PVH note (the PVH entry, no decompression), with an
   * initrd (a path, or the bytes {@link initramfs} built) and a command line.
   * The kernel gets the same e820 map as fw_cfg's `etc/e820`. A kernel that
   * is neither, a truncated one or one with a boot protocol older than 2.06
   * throws, naming the field and the value found, and loads nothing.
   *
   * @example
   * ```ts ignore
   * const initrd = await initramfs({ "/init": { mode: 0o755, file: "build/init" } });
   * await vm.loadLinux({ kernel: "bzImage", initrd, cmdline: "console=ttyS0 panic=-1" });
   * const stop = vm.run();
   * await vm.serial.waitFor(/Run \/init/, { timeout: 120_000 });
   * ```
   */
  async loadLinux(spec: LinuxBootSpec): Promise<LoadedImage> {
    const { kernel, options } = await linuxLoadOptions(spec);
    return this.load(kernel, options);
  }

  /**
   * Watches port accesses: `port` or `[lo, hi]` (inclusive). The hook sees
   * every access and may answer reads. Returns a function that removes it.
   */
  onIo(ports: number | [number, number], hook: IoHook): () => void {
    return this.#buses.onIo(ports, hook);
  }

  /** Watches MMIO accesses in `[lo, hi]` (inclusive); the hook may answer reads. Returns a remover. */
  onMmio(range: [number | bigint, number | bigint], hook: MmioHook): () => void {
    return this.#buses.onMmio(range, hook);
  }

  /**
   * Adds a virtio device (`virtioBlock(…)`, `virtioNet(…)`, `virtioConsole(…)`,
   * `virtioRng()`, `virtioVsock(…)`) on virtio-mmio (default) or PCI, with its
   * window, interrupt line and firmware entries placed by the platform.
   * Add devices before loading the kernel. The VM closes them when it closes.
   */
  add(device: VirtioDevice, options: VirtioAddOptions = {}): VirtioSlot {
    this.assertIdle("add a device");
    return this.#virtio.add(device, options);
  }

  /** The virtio devices added, in order. */
  get virtioDevices(): readonly VirtioSlot[] {
    return this.#virtio.list;
  }

  /**
   * Kernel command-line parameters that announce the virtio-mmio devices
   * (`virtio_mmio.device=512@0xfeb00000:5`). Loading a Linux kernel (bzImage
   * or PVH vmlinux) appends those its command line lacks.
   */
  virtioKernelParameters(): string[] {
    return this.#virtio.kernelParameters();
  }

  /** The debugger: breakpoints, watchpoints, stepping, disassembly, symbols, page walks (one per VM, shared). */
  get debug(): Debugger<Vm> {
    const attached = Debugger.attachedTo<Vm>(this);
    if (attached !== undefined) return attached;
    const debug = new Debugger<Vm>(this);
    for (const symbols of this.#symbols) debug.symbols.add(symbols);
    return debug;
  }

  /** The gdb stub: `vm.gdb.listen({ port: 1234 })`; `vm.gdb.server` is the one listening. */
  get gdb(): VmGdb {
    return this.#gdb ??= attachGdb(this);
  }

  // ---------------------------------------------------------------- snapshots, clones, migration

  /** How this VM was built, as a snapshot records it. */
  #config(): VmConfig {
    return {
      memory: this.memory.ramSize,
      regions: this.memory.regions.map((r) => ({ base: r.base, size: r.size })),
      cpus: this.cpus.length,
      irqchip: this.hasIrqchip,
      platform: this.#options.platform ?? "pc",
      onReset: this.#options.onReset ?? "stop",
      name: this.name,
      cmdline: this.#lastLoad?.options.cmdline ?? "",
    };
  }

  #subject(code: SnapshotCode): SnapshotSubject {
    const pc = this.platform;
    const extra: Record<string, unknown> = pc === undefined ? {} : { ...pc };
    return {
      machine: this,
      devices: code.statefulDevices(this.io, this.mmio, extra),
      config: this.#config(),
      image: this.image,
    };
  }

  /**
   * Writes the whole VM to one file: every vCPU's state, the in-kernel
   * interrupt controllers, PIT and kvm-clock, every device's state,
   * breakpoints and watchpoints, and guest memory (zero pages are not
   * stored). The VM must be stopped (`await vm.pause()`). The format is
   * docs/snapshot-format.md.
   *
   * @example
   * ```ts ignore
   * await vm.pause();
   * const info = await vm.snapshot("ready.hvsnap");
   * const copy = await Vm.restore("ready.hvsnap"); // runs on where vm stopped
   * ```
   */
  snapshot(path: string): Promise<SnapshotInfo> {
    this.assertIdle("take a snapshot");
    // Written before this returns, as always, once the snapshot code is loaded; the first time, after it loads.
    if (snapshotCode !== undefined) {
      return Promise.resolve(snapshotCode.writeVmSnapshot(path, this.#subject(snapshotCode)));
    }
    return loadSnapshotCode().then((code) => {
      this.assertIdle("take a snapshot");
      return code.writeVmSnapshot(path, this.#subject(code));
    });
  }

  /**
   * A new VM from a snapshot file, in the state the snapshot was taken in
   * (call `run()` to go on). The file is checked first (version, every
   * section's checksum): a corrupt or truncated file is refused with a
   * SnapshotError naming the section, and no VM is left behind.
   */
  static async restore(path: string, options: RestoreOptions = {}): Promise<Vm> {
    const mode = options.memory ?? "copy";
    if (mode !== "copy" && mode !== "cow") {
      throw new RangeError(`Invalid restore memory mode ${JSON.stringify(mode)}: expected "copy" or "cow"`);
    }
    const code = await loadSnapshotCode();
    const file = code.SnapshotFile.open(path);
    const state = code.readVmState(file);
    const source = code.snapshotPageSource(file, state.config);
    let memory: GuestMemory;
    if (mode === "cow") {
      file.verifyAbsentPagesZero();
      let fileOffset = file.memoryOffset;
      let firstPage = 0;
      const regions = state.config.regions.map((r) => {
        const region = { ...r, fileOffset, firstPage };
        fileOffset += r.size;
        firstPage += r.size / 4096;
        return region;
      });
      memory = GuestMemory.mapFile(
        path,
        regions,
        (i) => file.storedPages(regions[i]!.firstPage, regions[i]!.size / 4096),
      );
    } else {
      memory = GuestMemory.allocate(state.config.memory);
      try {
        file.readMemoryInto(memory.regions.map((r) => r.bytes));
      } catch (error) {
        memory.close();
        throw error;
      }
    }
    try {
      return await Vm.#assemble(code, state, memory, source.read, options);
    } finally {
      source.close();
    }
  }

  /**
   * Builds a VM on `memory` (restored already) for `state`: the platform's
   * set-up writes firmware tables into RAM, so the pages it wrote are put
   * back from `source` before the state goes in. On any failure the VM is
   * closed and the error thrown.
   */
  static async #assemble(
    code: SnapshotCode,
    state: VmState,
    memory: GuestMemory,
    source: (page: number) => Uint8Array | undefined,
    options: ApplyOptions,
    after?: (vm: Vm) => void,
  ): Promise<Vm> {
    const { vm, written } = await Vm.#build(state.config, memory);
    try {
      code.repairPages(memory, written, source);
    } catch (error) {
      await vm.close();
      throw error;
    }
    return await vm.#applyState(code, state, options, after);
  }

  /**
   * A VM for `config` on `memory`, its application processors started, and
   * the guest pages its construction wrote (firmware tables, the real-mode
   * IVT): restored memory must get those back. Closes `memory` on failure.
   */
  static async #build(config: VmConfig, memory: GuestMemory): Promise<{ vm: Vm; written: number[] }> {
    const vmOptions = Vm.#optionsFor(config);
    memory.trackHostWrites(true);
    let vm: Vm;
    try {
      vm = new Vm(Machine.open(vmOptions, memory), new BusDispatch(), vmOptions);
    } catch (error) {
      memory.close();
      throw error;
    }
    const written = memory.takeHostWrites();
    memory.trackHostWrites(false);
    try {
      await vm.startApplicationProcessors();
    } catch (error) {
      await vm.close();
      throw error;
    }
    return { vm, written };
  }

  /** Puts `state` into this freshly built VM; closes it and throws when the state does not fit. */
  async #applyState(code: SnapshotCode, state: VmState, options: ApplyOptions, after?: (vm: Vm) => void): Promise<Vm> {
    try {
      this.#setCmdline(state.config.cmdline);
      const image = code.imageOf(state);
      if (image !== undefined) {
        this.image = image;
        this.#symbols.push(image.symbols);
        Debugger.attachedTo(this)?.symbols.add(image.symbols);
      }
      this.restoreWarnings = code.applyVmState(this.#subject(code), state, options);
      after?.(this);
    } catch (error) {
      await this.close();
      throw error;
    }
    return this;
  }

  static #optionsFor(config: VmConfig): VmOptions {
    return {
      memory: config.memory,
      cpus: config.cpus,
      irqchip: config.irqchip,
      platform: config.platform,
      onReset: config.onReset,
      // A restored VM is a new VM of this process: it gets its own name (vm1, vm2, ...), not the saved one's.
    };
  }

  /**
   * A copy of this stopped VM in this process that shares its memory
   * copy-on-write: both map one frozen memfd MAP_PRIVATE, so the fork costs
   * no copy of RAM, and each page is copied only when one of them writes
   * it. Breakpoints and watchpoints (conditions included) come along. The
   * kernel-test kit boots once and forks a VM per test.
   *
   * @example
   * ```ts ignore
   * await booted.pause();
   * await using vm = await booted.fork();
   * await vm.run(); // booted is untouched
   * ```
   */
  async fork(): Promise<Vm> {
    this.assertIdle("fork the VM");
    // The state is captured before the first await once the snapshot code is loaded, as always; the first time, after.
    let code = snapshotCode;
    if (code === undefined) {
      code = await loadSnapshotCode();
      this.assertIdle("fork the VM");
    }
    const state = code.captureVmState(this.#subject(code));
    state.debugger = { breakpoints: [], watchpoints: [] };
    const memory = this.memory.fork();
    const parent = this.memory;
    return await Vm.#assemble(
      code,
      state,
      memory,
      (page) => parent.read(page * 4096, 4096),
      {},
      (vm) => code.copyBreakpoints(this, vm),
    );
  }

  /**
   * Moves this VM to the hvsh listening at `address` (`./hvsh listen
   * --migrate 127.0.0.1:7000`, or `Vm.receiveMigration`). A running VM is
   * pre-copied: its memory is sent while it runs, then the pages it dirtied
   * (KVM_GET_DIRTY_LOG) in rounds until few are left; then it is paused for
   * the last pages and the device and vCPU state (stop-and-copy). A stopped
   * VM is sent in one go. When this resolves the destination runs the guest
   * on; this VM stays paused (close it).
   */
  migrate(address: string, options: MigrationOptions = {}): Promise<MigrationStats> {
    if (this.state === "closed") throw new Error(`Cannot migrate: the VM ${this.name} is closed`);
    return Promise.all([loadSnapshotCode(), import("./snapshot/migrate.ts")]).then(([code, { migrateVm }]) =>
      migrateVm(address, {
        machine: this,
        config: () => this.#config(),
        capture: () => code.captureVmState(this.#subject(code)),
      }, options)
    );
  }

  /**
   * Listens on `address` (host:port; 127.0.0.1 unless given) for one
   * incoming migration and resolves with the VM it carried, stopped where
   * the source paused it (call `run()`). `onListening` is told the address
   * once the socket is bound (port 0 picks a free one).
   */
  static receiveMigration(
    address: string,
    options: ApplyOptions & { onListening?: (address: string) => void } = {},
  ): Promise<Vm> {
    return Promise.all([loadSnapshotCode(), import("./snapshot/migrate.ts")]).then(([code, { receiveVm }]) =>
      receiveVm<Vm>(address, {
        build: async (config) => {
          const { vm, written } = await Vm.#build(config, GuestMemory.allocate(config.memory));
          try {
            // The paths the final state takes, run once on the new VM's own state (a no-op), so that
            // the first run of that code is not part of the migration's downtime.
            code.applyVmState(vm.#subject(code), code.captureVmState(vm.#subject(code)));
          } catch (error) {
            await vm.close();
            throw error;
          }
          return { machine: vm, written, close: () => vm.close() };
        },
        apply: (machine, state) => machine.#applyState(code, state, options),
      }, options.onListening)
    );
  }
}

/**
 * `cmdline` with each of `params` it does not already hold appended, before a
 * ` -- ` (what follows it goes to init, not to the kernel). Idempotent, so a
 * reset or a restore that loads the same command line again adds nothing.
 */
export function withKernelParameters(cmdline: string, params: readonly string[]): string {
  const split = cmdline.search(/(^|\s)--(\s|$)/);
  const kernel = split < 0 ? cmdline : cmdline.slice(0, split);
  const rest = split < 0 ? "" : cmdline.slice(split).replace(/^(?=--)/, " ");
  const words = new Set(kernel.split(/\s+/));
  const missing = params.filter((param) => !words.has(param));
  if (missing.length === 0) return cmdline;
  return [kernel.trimEnd(), ...missing].filter((part) => part !== "").join(" ") + rest;
}
