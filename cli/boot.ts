/**
 * `hvsh boot`: run a kernel with COM1 on the terminal, like
 * `qemu-system-x86_64 -kernel FILE -nographic`, and exit with a status a
 * test harness can read.
 *
 * @module
 */

import { Vm } from "../core/vm.ts";
import { describeStop, type StopEvent } from "../core/stop.ts";
import type { ImageFormat, LoadOptions } from "../core/loader/mod.ts";
import {
  addVirtioDevices,
  parseVirtioFlags,
  VIRTIO_FLAG_OPTIONS,
  VIRTIO_USAGE,
  type VirtioBootOptions,
} from "./virtio_flags.ts";
import { isLoopback, listenGdb, parseGdbAddress, serveGdbUntilEnd } from "../core/gdb/server.ts";
import { MAX_KERNEL_FILE_BYTES, readImageFile } from "../core/loader/read_image_file.ts";
import { GuestOutput } from "./_guest_output.ts";
import { attachOptionValues, parseOptions } from "./_args.ts";
import { openBootTerminal } from "./_terminal.ts";
import { inFlightEvents } from "../core/debug/exceptions.ts";
import { readInitrd } from "../core/loader/linux_boot.ts";
import { parseSystemMap } from "../core/debug/symbols.ts";
import { hasElfMagic } from "../core/loader/elf.ts";
import { BOOT_TIMER_ADDRESS, BOOT_TIMER_MAGIC, BootTimer } from "./boot_timer.ts";

/** Exit statuses of `hvsh boot`. */
export const BOOT_STATUS = {
  halted: 0,
  crashed: 4,
  usage: 2,
  /** stdout failed (closed by its reader, full, an I/O error): sysexits' EX_IOERR. */
  outputError: 74,
  timeout: 124,
  /** 128 + the signal number for SIGHUP, SIGINT, SIGTERM (hvsh stops the guest and writes its pending output first). */
  hangup: 129,
  interrupted: 130,
  terminated: 143,
} as const;

/** A command-line mistake: printed with the usage, exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The usage text of `hvsh boot`. */
export const BOOT_USAGE =
  `usage: hvsh boot --kernel FILE [--format auto|flat|elf|multiboot|bzimage|pvh] [--load-addr ADDR]
       hvsh boot --restore SNAPSHOT [--timeout SECONDS] [--gdb ...]
                 [--append "CMDLINE"] [--initrd FILE|DIR] [--mem 64M] [--cpus N] [--timeout SECONDS]
                 [--cpuid-hide FEATURE,...] [--cpuid-vendor VENDOR12]
                 [--gdb [HOST:]PORT|SOCKET-PATH [--wait] [--gdb-allow-js] [--record]]
                 [--symbols System.map|ELF] [--boot-timer]
${VIRTIO_USAGE}

Runs the kernel with COM1 on this terminal. A Linux bzImage boots by the Linux boot
protocol, an ELF vmlinux with a Xen PVH note by its PVH entry (no decompression);
--append is the kernel command line, --initrd a file or a folder (packed as a cpio
initramfs with /dev/console). --symbols adds a System.map or an ELF's symbols for the
debugger. --boot-timer prints where the time went, phase by phase, on stderr at the
end: hvsh start, VM created, image loaded, first guest instruction, the kernel banner,
"Run /init", user space (init's marker fault, or a guest write of ${BOOT_TIMER_MAGIC} to MMIO
0x${BOOT_TIMER_ADDRESS.toString(16)}). Exit status: (V << 1) | 1 when the guest
writes V to port 0xf4; 0 when it halts for good, powers off (ACPI S5) or asks for a
reset (i8042 0xfe, port 0xcf9: the run ends as with QEMU's -no-reboot); 4 when it
crashes; 124 on --timeout (which also covers reading the kernel and initrd);
2 on a usage or image error; 74 when stdout fails (its reader closed it, as with
"| head", or it is full): hvsh prints one line and stops the guest; 129, 130, 143
on SIGHUP, SIGINT, SIGTERM: the guest is stopped and its pending output written
first. A reader slower than the guest pauses the guest until it catches up.
--kernel and --initrd must be files or pipes (at most 1 GiB; an initrd at most
--mem); devices such as /dev/zero are refused.

--restore runs on a VM saved with vm.snapshot() or the REPL's .snapshot save, from where
it stopped (the machine's memory, vCPUs and devices come from the file).

--gdb serves the GDB remote protocol (host 127.0.0.1 unless one is given; a path with
a / is a Unix socket): gdb -ex 'target remote 127.0.0.1:PORT'. The guest runs at once
(gdb stops it when it attaches) or, with --wait, stays at its first instruction until
gdb continues. hvsh exits when the guest does; a crash while gdb is attached is shown
to gdb and ends the run when gdb detaches. gdb's detach lets the guest run on; gdb's
kill stops it: hvsh prints "hvsh: killed by gdb" and exits with status 0. A Unix socket
path another program listens on is refused; a stale socket file there is replaced.
gdb's "monitor js EXPR" runs JavaScript inside hvsh, so it is off unless --gdb-allow-js
is given (anyone who can connect to the gdb address could then run code as hvsh).
--record records the run from the first instruction so gdb can run it backwards
(reverse-stepi, reverse-continue, reverse-finish; "monitor record" starts it later):
one vCPU, no virtio devices.`;

/** Parsed `hvsh boot` options, shared with the REPL's `--kernel`. */
export interface BootOptions {
  kernel: string;
  load: LoadOptions;
  memory: string;
  cpus: number;
  timeoutMs: number | undefined;
  cpuidHide: string[];
  /** CPUID vendor string (12 characters), e.g. GenuineIntel. */
  cpuidVendor: string | undefined;
  initrd: string | undefined;
  /** `--gdb`: where to serve gdb. */
  gdb: { host?: string; port?: number; path?: string } | undefined;
  /** `--wait`: hold the guest until gdb continues it. */
  wait: boolean;
  /** `--gdb-allow-js`: let gdb's `monitor js` run host code. */
  gdbAllowJs: boolean;
  /** `--record`: record from the first instruction for reverse execution. */
  record?: boolean;
  /** The virtio devices (`--disk`, `--net`, `--console`, `--rng`, `--vsock`, `--virtio`). */
  virtio?: VirtioBootOptions;
  /** `--restore`: a snapshot file to run on instead of a kernel. */
  restore?: string;
  /** `--symbols`: a System.map or an ELF whose symbols the debugger gets. */
  symbols: string | undefined;
  /** `--boot-timer`: print the per-phase breakdown at the end. */
  bootTimer: boolean;
}

/** Parses a number written in decimal or 0x-hex, naming the option on error. */
export function parseNumber(option: string, text: string): number {
  const value = /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : /^\d+$/.test(text) ? parseInt(text, 10) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new UsageError(`Invalid ${option} ${JSON.stringify(text)}: expected a number`);
  }
  return value;
}

/** Options of `hvsh boot` that take a value: the value may start with `-` (`--append -vmx_test`). */
const BOOT_VALUE_OPTIONS = [
  "kernel",
  "k",
  "format",
  "load-addr",
  "append",
  "initrd",
  "mem",
  "m",
  "cpus",
  "timeout",
  "cpuid-hide",
  "cpuid-vendor",
  "gdb",
];

/** Parses boot options from argv (without the `boot` word). */
export function parseBootArgs(args: string[]): BootOptions {
  let parsed;
  try {
    parsed = parseOptions(attachOptionValues(args, BOOT_VALUE_OPTIONS), {
      kernel: { type: "string", short: "k" },
      format: { type: "string", default: "auto" },
      "load-addr": { type: "string" },
      append: { type: "string" },
      initrd: { type: "string" },
      mem: { type: "string", short: "m", default: "64M" },
      cpus: { type: "string", default: "1" },
      timeout: { type: "string" },
      "cpuid-hide": { type: "string" },
      "cpuid-vendor": { type: "string" },
      gdb: { type: "string" },
      wait: { type: "boolean", default: false },
      "gdb-allow-js": { type: "boolean", default: false },
      record: { type: "boolean", default: false },
      ...VIRTIO_FLAG_OPTIONS,
      restore: { type: "string" },
      symbols: { type: "string" },
      "boot-timer": { type: "boolean", default: false },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  const kernel = values.kernel ?? positionals[0] ?? (values.restore === undefined ? undefined : "");
  if (kernel === undefined) throw new UsageError("Missing --kernel FILE");
  if (values.restore !== undefined && kernel !== "") {
    throw new UsageError("--restore runs a snapshot: it takes no --kernel");
  }
  if (positionals.length > (values.kernel === undefined ? 1 : 0)) {
    throw new UsageError(`Unexpected argument ${JSON.stringify(positionals.at(-1))}`);
  }
  const formats = ["auto", "flat", "elf", "multiboot", "bzimage", "pvh"];
  if (!formats.includes(values.format)) {
    throw new UsageError(`Invalid --format ${JSON.stringify(values.format)}: expected ${formats.join(", ")}`);
  }
  const load: LoadOptions = { format: values.format as ImageFormat | "auto", path: kernel };
  if (values["load-addr"] !== undefined) load.loadAddress = parseNumber("--load-addr", values["load-addr"]);
  if (values.append !== undefined) load.cmdline = values.append;
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    const seconds = Number(values.timeout);
    if (!(seconds > 0)) {
      throw new UsageError(`Invalid --timeout ${JSON.stringify(values.timeout)}: expected seconds > 0`);
    }
    timeoutMs = seconds * 1000;
  }
  let gdb: BootOptions["gdb"];
  if (values.gdb !== undefined) {
    try {
      gdb = parseGdbAddress(values.gdb);
    } catch (error) {
      throw new UsageError(`Invalid --gdb: ${(error as Error).message}`);
    }
  }
  if (values.wait && gdb === undefined) throw new UsageError("--wait needs --gdb [HOST:]PORT|PATH");
  if (values["gdb-allow-js"] && gdb === undefined) throw new UsageError("--gdb-allow-js needs --gdb [HOST:]PORT|PATH");
  return {
    kernel,
    load,
    memory: values.mem,
    cpus: parseNumber("--cpus", values.cpus),
    timeoutMs,
    cpuidHide: values["cpuid-hide"]?.split(",").filter((s) => s !== "") ?? [],
    cpuidVendor: values["cpuid-vendor"],
    initrd: values.initrd,
    gdb,
    wait: values.wait,
    gdbAllowJs: values["gdb-allow-js"],
    record: values.record,
    virtio: parseVirtioFlags(values, (message) => new UsageError(message)),
    ...(values.restore === undefined ? {} : { restore: values.restore }),
    symbols: values.symbols,
    bootTimer: values["boot-timer"],
  };
}

/**
 * Creates a VM and loads the kernel as the boot options say. Closes the VM if loading fails. The kernel and
 * initrd are read with a size cap (devices refused); `signal` (e.g. --timeout) bounds the reading, which a
 * FIFO without a writer would otherwise block forever. `timer` (--boot-timer) marks the phases.
 */
export async function createBootVm(options: BootOptions, signal?: AbortSignal, timer?: BootTimer): Promise<Vm> {
  if (options.restore !== undefined) return await Vm.restore(options.restore);
  const vm = await Vm.create({
    memory: options.memory,
    cpus: options.cpus,
    cpuid: options.cpuidVendor === undefined
      ? { hide: options.cpuidHide }
      : { hide: options.cpuidHide, vendor: options.cpuidVendor },
  });
  timer?.mark("vm created");
  try {
    const kernel = await readImageFile(options.kernel, {
      what: "kernel image",
      maxBytes: MAX_KERNEL_FILE_BYTES,
      signal,
    });
    const load: LoadOptions = { ...options.load, path: options.kernel };
    if (options.initrd !== undefined) {
      // A folder is packed as an initramfs; a file is used as it is, and must fit in guest RAM.
      const data = (await Deno.stat(options.initrd).then((s) => s.isDirectory, () => false))
        ? await readInitrd(options.initrd)
        : await readImageFile(options.initrd, { what: "initrd", maxBytes: vm.memory.ramSize, signal });
      load.modules = [{ data, cmdline: options.initrd }];
    }
    if (options.virtio !== undefined) addVirtioDevices(vm, options.virtio);
    await vm.load(kernel, load);
    if (options.symbols !== undefined) await addSymbols(vm, options.symbols);
    timer?.mark("image loaded");
  } catch (error) {
    await vm.close();
    throw error;
  }
  return vm;
}

/** `--symbols`: an ELF's symbol table, or a System.map (`address type name` lines). */
async function addSymbols(vm: Vm, path: string): Promise<void> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new Error(`Cannot read symbols ${path}: ${(error as Error).message}`);
  }
  if (hasElfMagic(bytes)) {
    await vm.debug.loadSymbols(bytes);
    return;
  }
  const symbols = parseSystemMap(new TextDecoder().decode(bytes), path);
  vm.debug.symbols.add(symbols);
}

/** The exit status for a stop, as documented in {@link BOOT_USAGE}. */
export function statusForStop(stop: StopEvent): number {
  switch (stop.reason) {
    case "exit":
      return stop.code & 0xff;
    case "halt":
      return BOOT_STATUS.halted;
    case "timeout":
      return BOOT_STATUS.timeout;
    case "shutdown":
      // A reset the guest asked for ends the run cleanly, like QEMU's -no-reboot.
      return stop.cause === "reset" || stop.cause === "power-off" ? BOOT_STATUS.halted : BOOT_STATUS.crashed;
    default:
      return BOOT_STATUS.crashed;
  }
}

/**
 * Copies stdin to the guest's serial port until EOF (works for a TTY, a pipe or a file). `Deno.stdin.read`, not
 * `Deno.stdin.readable`: the stream costs a cold start ~4 ms and 3 MiB (Deno loads its web streams on first use).
 * A read pending when `signal` aborts is left to end with the process, as a stream's cancel() leaves a TTY read.
 */
async function pumpStdin(vm: Vm, signal: AbortSignal, filter?: (bytes: Uint8Array) => Uint8Array): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const count = await Deno.stdin.read(buffer);
      if (count === null || signal.aborted) return;
      const value = buffer.slice(0, count);
      while (vm.serial.pendingInput + value.length > 1 << 20 && !signal.aborted) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      if (!signal.aborted) vm.serial.send(filter === undefined ? value : filter(value));
    }
  } catch {
    // stdin closed under us: nothing more to send
  }
}

/** `--gdb`: serves gdb until the guest ends. Returns the stop to report, or the exit status when none is left to report. */
async function runUnderGdb(vm: Vm, options: BootOptions): Promise<StopEvent | number> {
  const gdb = options.gdb!;
  let server;
  // gdb's `monitor` runs the REPL's dot commands, as in the REPL's .gdb.
  const { monitorForVm } = await import("../repl/monitor.ts");
  try {
    server = listenGdb(vm, { ...gdb, allowJs: options.gdbAllowJs, monitor: monitorForVm(vm) });
  } catch (error) {
    console.error(`hvsh boot: ${(error as Error).message}`);
    return BOOT_STATUS.usage;
  }
  if (gdb.host !== undefined && !isLoopback(gdb.host)) {
    console.error(
      `hvsh: warning: the gdb server listens on ${server.address}: anyone who can reach it can control the VM` +
        (options.gdbAllowJs ? " and run code as hvsh (--gdb-allow-js)" : ""),
    );
  }
  const held = options.wait ? " (the guest waits for gdb to continue)" : "";
  console.error(`hvsh: gdb server on ${server.address}${held}: gdb -ex 'target remote ${server.address}'`);
  const end = await serveGdbUntilEnd(vm, server, {
    wait: options.wait,
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
  if (end.reason === "killed") {
    console.error("hvsh: killed by gdb");
    return 0;
  }
  if (end.reason === "timeout") {
    console.error(`hvsh: timed out after ${options.timeoutMs} ms`);
    return BOOT_STATUS.timeout;
  }
  return end.stop;
}

/** Signals `hvsh boot` handles: the guest stops, its pending output is written, and hvsh exits 128 + the number. */
const STOP_SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;
type StopSignal = keyof typeof STOP_SIGNALS;
/** How long output still waiting for stdout may hold up an exit caused by a signal. */
const SIGNAL_FLUSH_MS = 2_000;

function describeWriteError(error: Error): string {
  return error.message.replace(/ \(os error \d+\)$/, "");
}

/** Runs `hvsh boot ARGS` and returns the process exit status. */
export async function bootCommand(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(BOOT_USAGE);
    return 0;
  }
  const timer = args.includes("--boot-timer") ? new BootTimer() : undefined;
  timer?.mark("hvsh start");
  const started = performance.now();
  let options: BootOptions;
  try {
    options = parseBootArgs(args);
  } catch (error) {
    console.error(`hvsh boot: ${(error as Error).message}`);
    if (error instanceof UsageError) console.error(BOOT_USAGE);
    return BOOT_STATUS.usage;
  }
  const timeoutMs = options.timeoutMs;
  // --timeout covers loading too (a FIFO with no writer, a slow disk).
  const loading = new AbortController();
  const loadTimer = timeoutMs === undefined ? undefined : setTimeout(() => loading.abort(), timeoutMs);
  let vm: Vm;
  try {
    vm = await createBootVm(options, loading.signal, timer);
  } catch (error) {
    if (loading.signal.aborted) {
      console.error(
        `hvsh: timed out after ${timeoutMs} ms while reading the kernel or initrd (a FIFO with no writer?)`,
      );
      return BOOT_STATUS.timeout;
    }
    console.error(`hvsh boot: ${(error as Error).message}`);
    if (error instanceof UsageError) console.error(BOOT_USAGE);
    return BOOT_STATUS.usage;
  } finally {
    // Only when set: the first touch of Deno's timers costs ~6 ms and 3.6 MiB.
    if (loadTimer !== undefined) clearTimeout(loadTimer);
  }
  if (options.record) {
    try {
      vm.debug.record();
    } catch (error) {
      console.error(`hvsh boot: --record: ${(error as Error).message}`);
      await vm.close();
      return BOOT_STATUS.usage;
    }
  }

  return await runOnTerminal(vm, options, started, timer);
}

/**
 * Runs a VM with COM1 on this terminal until it ends, as `hvsh boot` does, and closes it. Returns the exit status.
 * `started` is when `--timeout` began counting (hvsh boot counts the loading too); `timer` (--boot-timer) watches the
 * guest's phases and reports them at the end.
 */
export async function runOnTerminal(
  vm: Vm,
  options: BootOptions,
  started = performance.now(),
  timer?: BootTimer,
): Promise<number> {
  const timeoutMs = options.timeoutMs;
  const deadline = timeoutMs === undefined ? Infinity : started + timeoutMs;
  let signalled: StopSignal | undefined;
  const signalArrived = new AbortController();
  const signalListeners = (Object.keys(STOP_SIGNALS) as StopSignal[]).map((name) => {
    const listener = () => {
      signalled ??= name;
      signalArrived.abort();
      void vm.pause();
    };
    Deno.addSignalListener(name, listener);
    return () => Deno.removeSignalListener(name, listener);
  });
  const inGdb = options.gdb !== undefined;
  const output = new GuestOutput(Deno.stdout, {
    // Under gdb the run belongs to the gdb server: output beyond the bound is dropped rather than pausing it.
    onCongested: () => {
      if (!inGdb) void vm.pause();
    },
    onFailed: () => {
      if (!inGdb) void vm.pause();
    },
  });
  const unsubscribe = vm.serial.onData((bytes) => output.push(bytes));
  const stopInput = new AbortController();
  const terminal = openBootTerminal(vm); // raw keys and Ctrl-A escapes on a terminal (cli/_terminal.ts)
  const input = pumpStdin(vm, stopInput.signal, terminal?.filter);
  timer?.watch(vm);
  try {
    let stop: Awaited<ReturnType<typeof runUnderGdb>>;
    timer?.mark("first guest instruction");
    try {
      if (inGdb) {
        stop = await runUnderGdb(vm, options);
      } else {
        for (;;) {
          const left = deadline - performance.now();
          stop = await vm.run(left === Infinity ? {} : { timeout: Math.max(0, left) });
          if (stop.reason !== "paused" || signalled !== undefined || output.failure !== undefined) break;
          // Paused because stdout is slower than the guest: go on once the reader has caught up.
          if (!await output.drained(deadline, signalArrived.signal)) {
            if (signalled === undefined) stop = { ...stop, reason: "timeout" };
            break;
          }
        }
      }
    } catch (error) {
      // A device model or hook failed on what the guest did: report it as a crash, not a stack trace.
      unsubscribe();
      await output.drained(Math.min(deadline, performance.now() + SIGNAL_FLUSH_MS));
      console.error(`hvsh: the guest could not run on: ${(error as Error).message}`);
      return BOOT_STATUS.crashed;
    }
    unsubscribe();
    const flushDeadline = signalled !== undefined ? Math.min(deadline, performance.now() + SIGNAL_FLUSH_MS) : deadline;
    const flushed = await output.drained(flushDeadline);
    if (output.failure !== undefined) {
      console.error(
        `hvsh: cannot write the guest's output to stdout: ${describeWriteError(output.failure)}; the guest was stopped`,
      );
      return BOOT_STATUS.outputError;
    }
    if (signalled !== undefined) {
      const passed = flushed ? "all passed on" : `${output.pendingBytes} bytes of it could not be written`;
      console.error(
        `hvsh: stopped by ${signalled} (the guest wrote ${vm.serial.transmitted} bytes to COM1, ${passed})`,
      );
      return 128 + STOP_SIGNALS[signalled];
    }
    if (!flushed) {
      console.error(
        `hvsh: timed out after ${timeoutMs} ms: stdout is not being read (${output.pendingBytes} bytes of guest output not written)`,
      );
      return BOOT_STATUS.timeout;
    }
    if (typeof stop === "number") return stop;
    const status = statusForStop(stop);
    if (status === BOOT_STATUS.crashed || status === BOOT_STATUS.timeout || stop.reason === "shutdown") {
      const pendingNote = stop.reason === "timeout" && output.pendingBytes > 0
        ? ` (stdout is not being read: ${output.pendingBytes} bytes of guest output not written)`
        : "";
      console.error(`hvsh: ${describeStop(stop)}${pendingNote}`);
      // What KVM still shows of the fault: the event in flight, CR2, an IDT that cannot deliver.
      if (status === BOOT_STATUS.crashed) { for (const line of inFlightEvents(vm)) console.error(`hvsh:   ${line}`); }
    }
    return status;
  } finally {
    terminal?.restore();
    if (timer !== undefined) {
      timer.detach();
      console.error(timer.report());
    }
    stopInput.abort();
    void input; // a pending stdin read may never end (a TTY); main exits the process
    for (const remove of signalListeners) remove();
    await vm.close();
  }
}
