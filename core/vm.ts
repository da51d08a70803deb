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
import { FW_CFG_KEY } from "../devices/fw_cfg.ts";
import { detectFormat, e820Map, type LoadedImage, loadImage, type LoadOptions } from "./loader/mod.ts";
import { type LinuxBootSpec, linuxLoadOptions } from "./loader/linux_boot.ts";
import type { ImageSymbol } from "./loader/types.ts";
import { buildPlatform, PC_LAYOUT, type PcPlatform, resetPolicy } from "./platform.ts";
import { Debugger } from "./debug/debugger.ts";
import { attachGdb, type VmGdb } from "./gdb/server.ts";

export type { ExitInterceptor, KernelDevice, RunOptions } from "./machine.ts";
export type { PendingStop } from "./stop.ts";
export type { IoAccess, IoHook, MmioAccess, MmioHook } from "./bus_dispatch.ts";

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
  #lastLoad: { bytes: Uint8Array; options: LoadOptions } | undefined;
  #gdb: VmGdb | undefined;
  /** The symbols of every image loaded, for the debugger whenever it attaches. */
  readonly #symbols: ImageSymbol[][] = [];

  private constructor(parts: MachineParts, buses: BusDispatch, options: VmOptions) {
    super(parts, buses, options);
    this.#buses = buses;
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
    this.platform = built.pc;
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
   * its entry in the mode it needs. The format is detected unless given.
   * A bad image throws and loads nothing.
   */
  async load(source: string | Uint8Array, options: LoadOptions = {}): Promise<LoadedImage> {
    this.assertIdle("load an image");
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
      ? detectFormat(bytes, loadOptions.path)
      : loadOptions.format;
    const cmdline = loadOptions.cmdline ?? "";
    const isLinux = format === "bzimage" || format === "pvh";
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
    }, loadOptions);
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
}
