/**
 * `hvsh boot`: run a kernel with COM1 on the terminal, like
 * `qemu-system-x86_64 -kernel FILE -nographic`, and exit with a status a
 * test harness can read.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Vm } from "../core/vm.ts";
import { describeStop, type StopEvent } from "../core/stop.ts";
import type { ImageFormat, LoadOptions } from "../core/loader/mod.ts";
import { isLoopback, listenGdb, parseGdbAddress, serveGdbUntilEnd } from "../core/gdb/server.ts";
import { readInitrd } from "../core/loader/linux_boot.ts";
import { parseSystemMap } from "../core/debug/symbols.ts";
import { hasElfMagic } from "../core/loader/elf.ts";
import { BOOT_TIMER_ADDRESS, BOOT_TIMER_MAGIC, BootTimer } from "./boot_timer.ts";

/** Exit statuses of `hvsh boot`. */
export const BOOT_STATUS = {
  halted: 0,
  crashed: 4,
  usage: 2,
  timeout: 124,
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
                 [--append "CMDLINE"] [--initrd FILE|DIR] [--mem 64M] [--cpus N] [--timeout SECONDS]
                 [--cpuid-hide FEATURE,...] [--cpuid-vendor VENDOR12] [--gdb [HOST:]PORT|SOCKET-PATH [--wait]]
                 [--symbols System.map|ELF] [--boot-timer]

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
crashes; 124 on --timeout;
2 on a usage or image error.

--gdb serves the GDB remote protocol (host 127.0.0.1 unless one is given; a path with
a / is a Unix socket): gdb -ex 'target remote 127.0.0.1:PORT'. The guest runs at once
(gdb stops it when it attaches) or, with --wait, stays at its first instruction until
gdb continues. hvsh exits when the guest does; a crash while gdb is attached is shown
to gdb and ends the run when gdb detaches. gdb's detach lets the guest run on; gdb's
kill stops it: hvsh prints "hvsh: killed by gdb" and exits with status 0.`;

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

/** Parses boot options from argv (without the `boot` word). */
export function parseBootArgs(args: string[]): BootOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
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
        symbols: { type: "string" },
        "boot-timer": { type: "boolean", default: false },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  const kernel = values.kernel ?? positionals[0];
  if (kernel === undefined) throw new UsageError("Missing --kernel FILE");
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
    symbols: values.symbols,
    bootTimer: values["boot-timer"],
  };
}

/** Creates a VM and loads the kernel as the boot options say. Closes the VM if loading fails. */
export async function createBootVm(options: BootOptions, timer?: BootTimer): Promise<Vm> {
  const vm = await Vm.create({
    memory: options.memory,
    cpus: options.cpus,
    cpuid: options.cpuidVendor === undefined
      ? { hide: options.cpuidHide }
      : { hide: options.cpuidHide, vendor: options.cpuidVendor },
  });
  timer?.mark("vm created");
  try {
    const load = { ...options.load };
    if (options.initrd !== undefined) {
      // A folder is packed as an initramfs; a file is used as it is.
      load.modules = [{ data: await readInitrd(options.initrd), cmdline: options.initrd }];
    }
    await vm.load(options.kernel, load);
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

/** Copies stdin to the guest's serial port until EOF (works for a TTY, a pipe or a file). */
async function pumpStdin(vm: Vm, signal: AbortSignal): Promise<void> {
  const reader = Deno.stdin.readable.getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal.aborted) return;
      while (vm.serial.pendingInput + value.length > 1 << 20 && !signal.aborted) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      if (!signal.aborted) vm.serial.send(value);
    }
  } catch {
    // stdin closed under us: nothing more to send
  } finally {
    reader.releaseLock();
  }
}

/** Connects COM1 output to stdout, batched per event-loop turn (a write per byte would cost a syscall each). */
function pipeSerialToStdout(vm: Vm): () => void {
  let pending: Uint8Array[] = [];
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (pending.length === 0) return;
    const total = pending.reduce((n, chunk) => n + chunk.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const chunk of pending) {
      out.set(chunk, at);
      at += chunk.length;
    }
    pending = [];
    let written = 0;
    while (written < out.length) written += Deno.stdout.writeSync(out.subarray(written));
  };
  const unsubscribe = vm.serial.onData((bytes) => {
    pending.push(bytes);
    if (!scheduled) {
      scheduled = true;
      setTimeout(flush, 0);
    }
  });
  return () => {
    unsubscribe();
    flush();
  };
}

/** `--gdb`: serves gdb until the guest ends. Returns the stop to report, or the exit status when none is left to report. */
async function runUnderGdb(vm: Vm, options: BootOptions): Promise<StopEvent | number> {
  const gdb = options.gdb!;
  let server;
  try {
    server = listenGdb(vm, gdb);
  } catch (error) {
    console.error(`hvsh boot: ${(error as Error).message}`);
    return BOOT_STATUS.usage;
  }
  if (gdb.host !== undefined && !isLoopback(gdb.host)) {
    console.error(
      `hvsh: warning: the gdb server listens on ${server.address}: anyone who can reach it can control the VM ` +
        `(monitor js is disabled)`,
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

/** Runs `hvsh boot ARGS` and returns the process exit status. */
export async function bootCommand(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(BOOT_USAGE);
    return 0;
  }
  const timer = args.includes("--boot-timer") ? new BootTimer() : undefined;
  timer?.mark("hvsh start");
  let vm: Vm;
  try {
    vm = await createBootVm(parseBootArgs(args), timer);
  } catch (error) {
    console.error(`hvsh boot: ${(error as Error).message}`);
    if (error instanceof UsageError) console.error(BOOT_USAGE);
    return BOOT_STATUS.usage;
  }
  const timeoutMs = parseBootArgs(args).timeoutMs;
  const stopInput = new AbortController();
  const stopOutput = pipeSerialToStdout(vm);
  const input = pumpStdin(vm, stopInput.signal);
  timer?.watch(vm);
  try {
    const options = parseBootArgs(args);
    let stop: Awaited<ReturnType<typeof runUnderGdb>>;
    timer?.mark("first guest instruction");
    try {
      stop = options.gdb === undefined
        ? await vm.run(timeoutMs === undefined ? {} : { timeout: timeoutMs })
        : await runUnderGdb(vm, options);
    } catch (error) {
      // A device model or hook failed on what the guest did: report it as a crash, not a stack trace.
      stopOutput();
      console.error(`hvsh: the guest could not run on: ${(error as Error).message}`);
      return BOOT_STATUS.crashed;
    }
    stopOutput();
    if (typeof stop === "number") return stop;
    const status = statusForStop(stop);
    if (status === BOOT_STATUS.crashed || status === BOOT_STATUS.timeout || stop.reason === "shutdown") {
      console.error(`hvsh: ${describeStop(stop)}`);
    }
    return status;
  } finally {
    if (timer !== undefined) {
      timer.detach();
      console.error(timer.report());
    }
    stopInput.abort();
    void input; // a pending stdin read may never end (a TTY); main exits the process
    await vm.close();
  }
}
