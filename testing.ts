/**
 * hvsh's kernel-test kit: test your own small kernel with `deno test`.
 *
 * - {@link kernelTest}: `Deno.test` that reports itself ignored, with the
 *   reason, where `/dev/kvm` is missing or unusable, and that adds the
 *   guest's output, its stop, registers and code to a failure;
 * - {@link bootKernel}: boots a kernel in a fresh VM and returns the run:
 *   `run.serial` (an expect-style reader), `run.stop`, `run.vm`;
 * - {@link assertExit}: checks the value the guest wrote to the debug-exit port;
 * - {@link assemble}: builds a kernel from `.S`/`.c` sources with gcc and ld,
 *   cached by content;
 * - {@link runSuite}: kvm-unit-tests-style suites (a table of kernels,
 *   arguments and expected exit statuses, run in parallel).
 *
 * With `HVSH_DEBUG=1` in the environment (or `debug: true`), a failing
 * kernel test keeps its VM open and serves gdb on a port it prints; the test
 * ends when gdb detaches, quits or kills the VM.
 *
 * @example
 * ```ts ignore
 * import { assemble, assertExit, bootKernel, kernelTest } from "hvsh/testing.ts";
 *
 * const kernel = await assemble("boot.S", { format: "multiboot" });
 *
 * kernelTest("boot prints the banner and exits 0", async () => {
 *   await using run = await bootKernel(kernel, { append: "verbose", timeout: 5_000 });
 *   await run.serial.expect(/banner v\d+/);
 *   run.serial.send("ping\n");
 *   await run.serial.expect("pong");
 *   assertExit(await run.stop, 0);
 * });
 * ```
 *
 * @module
 */

import { Vm, type VmOptions } from "./core/vm.ts";
import { describeStop, type ExitStop, type StopEvent } from "./core/stop.ts";
import type { Registers } from "./core/kvm/structs.ts";
import { Kvm } from "./core/kvm/kvm.ts";
import type { ImageFormat, MultibootModule } from "./core/loader/types.ts";
import type { ExpectOptions } from "./devices/serial_reader.ts";
import { decodeInstructions } from "./core/debug/disasm.ts";
import { listenGdb } from "./core/gdb/server.ts";
import { formatRegisters, hex, makeStyle } from "./repl/format.ts";
import { fileURLToPath } from "node:url";

export { assemble, type AssembleFormat, type AssembleOptions } from "./kit/assemble.ts";
export {
  formatSuiteLine,
  runSuite,
  type SuiteCase,
  type SuiteOptions,
  type SuiteResult,
  type SuiteStatus,
  type SuiteSummary,
} from "./kit/suite.ts";

// ---------------------------------------------------------------- KVM availability

/** Opens /dev/kvm the way hvsh does (and asks for its API version), so a device that is not KVM counts as missing. */
function probeKvm(): string | undefined {
  try {
    Kvm.open().close();
    return undefined;
  } catch (error) {
    return `cannot use /dev/kvm (${(error as Error).message})`;
  }
}

/** Why kernels cannot run here (e.g. "cannot use /dev/kvm (… ENOENT …)"), or undefined when they can. */
export const kvmMissingReason: string | undefined = probeKvm();

/** True when `/dev/kvm` opens and answers KVM's API version. */
export const kvmAvailable: boolean = kvmMissingReason === undefined;

/** Each test module runs in its own isolate; the environment is the process's, so the notice prints once. */
const NOTICE_PRINTED = "HVSH_TESTS_KVM_NOTICE_PRINTED";

if (!kvmAvailable && Deno.env.get(NOTICE_PRINTED) === undefined) {
  Deno.env.set(NOTICE_PRINTED, "1");
  console.log(`KVM tests ignored: ${kvmMissingReason}`);
}

// ---------------------------------------------------------------- failures with context

/** Lines of guest output a failure quotes. */
const OUTPUT_LINES = 12;
/** Instructions a failure disassembles from the stop. */
const CODE_INSTRUCTIONS = 5;
const PLAIN = makeStyle(false);

/**
 * A kernel check failed (an expectation on the serial port, an exit
 * status). The message carries the guest's last lines of output, its stop,
 * and the registers and code at the stop.
 */
export class KernelTestError extends Error {
  /** The stop the guest was at, when it had stopped. */
  readonly stop: StopEvent | undefined;

  constructor(message: string, stop?: StopEvent, options?: ErrorOptions) {
    super(message, options);
    this.name = "KernelTestError";
    this.stop = stop;
  }
}

/** The machine state a failure shows, captured while the VM still exists. */
interface StateSnapshot {
  stop: StopEvent | undefined;
  registers: Registers | undefined;
  code: { address: bigint; bytes: Uint8Array; bitness: 16 | 32 | 64 } | undefined;
  describe: (address: bigint) => string | undefined;
}

function captureState(vm: Vm): StateSnapshot {
  const stop = vm.lastStop;
  const describe = (address: bigint) => vm.debug.symbols.describe(address);
  if (vm.state !== "stopped") return { stop, registers: undefined, code: undefined, describe };
  const cpu = vm.cpu(stop?.cpu ?? 0);
  const registers = { ...cpu.regs };
  let code: StateSnapshot["code"];
  try {
    const address = cpu.bitness === 64 ? registers.rip : cpu.sregsView.cs.base + registers.rip;
    const bytes = vm.debug.readVirtual(address, CODE_INSTRUCTIONS * 15, cpu);
    code = { address, bytes, bitness: cpu.bitness };
  } catch {
    code = undefined; // rip points at nothing readable: the report says so
  }
  return { stop, registers, code, describe };
}

function formatCode(snapshot: StateSnapshot): string {
  const code = snapshot.code;
  if (code === undefined) return "  (no readable code at rip)";
  try {
    return decodeInstructions(code.bytes, code.address, code.bitness, CODE_INSTRUCTIONS, snapshot.describe)
      .map((insn, index) => {
        const symbol = snapshot.describe(insn.address);
        const bytes = [...insn.bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
        return `${index === 0 ? "=> " : "   "}${hex(insn.address)}${symbol === undefined ? "" : ` <${symbol}>`}: ${
          bytes.padEnd(24)
        } ${insn.text}`;
      }).join("\n");
  } catch (error) {
    return `  (cannot disassemble: ${(error as Error).message})`;
  }
}

function lastLines(text: string, count: number): string {
  if (text === "") return "  (none)";
  const lines = text.replace(/\n$/, "").split("\n").slice(-count);
  return lines.map((line) => `  | ${line}`).join("\n");
}

function formatReport(transcript: string, snapshot: StateSnapshot, note = ""): string {
  const parts = [`guest output (last ${OUTPUT_LINES} lines):`, lastLines(transcript, OUTPUT_LINES)];
  parts.push(`stop: ${snapshot.stop === undefined ? "none yet" : describeStop(snapshot.stop)}${note}`);
  if (snapshot.registers !== undefined) {
    parts.push("registers:", formatRegisters(snapshot.registers, undefined, PLAIN));
    parts.push("code at the stop:", formatCode(snapshot));
  }
  return parts.join("\n");
}

// ---------------------------------------------------------------- kernelTest

/** The test body of {@link kernelTest}. */
export type KernelTestFn = (t: Deno.TestContext) => void | Promise<void>;

/** A {@link kernelTest} definition: `Deno.test`'s, plus `debug`. */
export interface KernelTestDefinition extends Omit<Deno.TestDefinition, "fn"> {
  fn: KernelTestFn;
  /** Keep the VM of a failing test open for gdb. Default: true when `HVSH_DEBUG=1`. */
  debug?: boolean;
}

interface TestScope {
  name: string;
  debug: boolean;
  runs: Set<KernelRun>;
}

/** The kernel test running now (Deno runs one test of a module at a time). */
let currentTest: TestScope | undefined;

function debugFromEnvironment(): boolean {
  const value = Deno.env.get("HVSH_DEBUG");
  return value !== undefined && value !== "" && value !== "0";
}

/**
 * Registers a kernel test: `Deno.test`, ignored (with the reason printed
 * once) where `/dev/kvm` is missing or unusable. A failure that did not come
 * from the kit's own checks gets the guest's output, stop, registers and
 * code appended; with `HVSH_DEBUG=1` (or `debug: true`) the failing test's
 * VM stays open and gdb is served on a printed 127.0.0.1 port until gdb
 * detaches. Runs the test left open are closed when it ends.
 *
 * @example
 * ```ts ignore
 * kernelTest("exits 0", async () => {
 *   await using run = await bootKernel("kernel.elf");
 *   assertExit(await run.stop, 0);
 * });
 * ```
 */
export function kernelTest(name: string, fn: KernelTestFn): void;
export function kernelTest(definition: KernelTestDefinition): void;
export function kernelTest(nameOrDefinition: string | KernelTestDefinition, fn?: KernelTestFn): void {
  const definition: KernelTestDefinition = typeof nameOrDefinition === "string"
    ? { name: nameOrDefinition, fn: fn! }
    : nameOrDefinition;
  if (typeof definition.fn !== "function") throw new TypeError(`kernelTest ${definition.name}: missing test function`);
  const { debug, fn: body, ...rest } = definition;
  Deno.test({
    ...rest,
    ignore: definition.ignore === true || !kvmAvailable,
    fn: (t) => runKernelTest(definition.name, debug ?? debugFromEnvironment(), body, t),
  });
}

async function runKernelTest(name: string, debug: boolean, body: KernelTestFn, t: Deno.TestContext): Promise<void> {
  const scope: TestScope = { name, debug, runs: new Set() };
  const outer = currentTest;
  currentTest = scope;
  let failure: { error: unknown } | undefined;
  try {
    await body(t);
  } catch (error) {
    failure = { error };
  } finally {
    currentTest = outer;
  }
  const runs = [...scope.runs];
  if (failure !== undefined && debug) {
    for (const run of runs) await run.serveGdbForDebugging(name);
  }
  for (const run of runs) await run.close();
  if (failure === undefined) return;
  const error = failure.error;
  if (error instanceof KernelTestError || runs.length === 0) throw error;
  // The test's own assertion failed: add what the guest did, captured when its run closed.
  const reports = runs.map((run) => run.report()).join("\n\n");
  if (error instanceof Error) {
    error.message = `${error.message}\n\n${reports}`;
    if (error.stack !== undefined) {
      const frames = error.stack.indexOf("\n    at ");
      error.stack = `${error.name}: ${error.message}${frames < 0 ? "" : error.stack.slice(frames)}`;
    }
    throw error;
  }
  throw new Error(`${String(error)}\n\n${reports}`, { cause: error });
}

// ---------------------------------------------------------------- bootKernel

/** Options of {@link bootKernel}. */
export interface BootKernelOptions {
  /** The kernel command line (multiboot; also fw_cfg's for other formats). */
  append?: string;
  /** Milliseconds the guest may run before it is stopped with reason "timeout". Default 10 000. */
  timeout?: number;
  /** Guest RAM, e.g. `"64M"`. Default 64M. */
  memory?: string | number;
  /** vCPUs. Default 1. */
  cpus?: number;
  /** Image format; detected by default. */
  format?: ImageFormat | "auto";
  /** Multiboot modules. */
  modules?: MultibootModule[];
  /** Further VM options (CPUID changes, `unhandled: "stop"`, `irqchip`, `platform`). */
  vm?: Omit<VmOptions, "memory" | "cpus">;
  /** Keep the VM open for gdb when the test fails. Default: true when `HVSH_DEBUG=1`. */
  debug?: boolean;
}

/** Stops of kit runs, so {@link assertExit} can show what the guest did. */
const runsByStop = new WeakMap<StopEvent, KernelRun>();

/**
 * The serial port of a {@link KernelRun}: the VM's COM1 reader, whose failed
 * waits throw a {@link KernelTestError} with the guest's output, stop,
 * registers and code.
 */
export class KernelSerial {
  readonly #run: KernelRun;

  /** @internal Made by {@link bootKernel}. */
  constructor(run: KernelRun) {
    this.#run = run;
  }

  /** Queues input for the guest (as typed on the line). */
  send(data: string | Uint8Array): void {
    this.#run.vm.serial.send(data);
  }

  /** Waits for `pattern` after the cursor and consumes up to the end of the match (see `Serial16550.expect`). */
  async expect(pattern: RegExp | string, options: ExpectOptions = {}): Promise<RegExpExecArray> {
    try {
      return await this.#run.vm.serial.expect(pattern, options);
    } catch (error) {
      throw await this.#run.failure(error);
    }
  }

  /** Waits for every pattern after the cursor, in any order. */
  async expectAll(patterns: readonly (RegExp | string)[], options: ExpectOptions = {}): Promise<RegExpExecArray[]> {
    try {
      return await this.#run.vm.serial.expectAll(patterns, options);
    } catch (error) {
      throw await this.#run.failure(error);
    }
  }

  /** Waits for the next line after the cursor and consumes it. */
  async readLine(options: ExpectOptions = {}): Promise<string> {
    try {
      return await this.#run.vm.serial.readLine(options);
    } catch (error) {
      throw await this.#run.failure(error);
    }
  }

  /** Everything the guest printed. */
  get transcript(): string {
    return this.#run.vm.serial.transcript;
  }

  /** What the guest printed after the cursor. */
  get unread(): string {
    return this.#run.vm.serial.unread;
  }
}

/**
 * A kernel booted by {@link bootKernel}: it runs from the moment it is
 * returned. `await using run = …` closes the VM at the end of the scope.
 */
export class KernelRun implements AsyncDisposable {
  /** The VM (for the debugger, memory, hooks). */
  readonly vm: Vm;
  /** COM1, with an expect-style reader. */
  readonly serial: KernelSerial;
  /** Resolves with the stop that ended the run (exit, halt, crash, timeout…); rejects when a device or hook threw. */
  readonly stop: Promise<StopEvent>;
  /** The kernel's path (or "kernel bytes"), for messages. */
  readonly kernel: string;
  #scope: TestScope | undefined;
  #debug: boolean;
  #snapshot: StateSnapshot | undefined;
  #closed = false;

  /** @internal Made by {@link bootKernel}. */
  constructor(vm: Vm, kernel: string, timeout: number, scope: TestScope | undefined, debug: boolean) {
    this.vm = vm;
    this.kernel = kernel;
    this.serial = new KernelSerial(this);
    this.#scope = scope;
    this.#debug = debug;
    this.stop = vm.run({ timeout }).then((stop) => {
      runsByStop.set(stop, this);
      return stop;
    });
    // A run nobody awaits must not fail the process with an unhandled rejection; awaiting it still rejects.
    this.stop.catch(() => {});
  }

  /** The guest's last lines of output, its stop, registers and code (as captured when the VM closed). */
  report(): string {
    return formatReport(this.vm.serial.transcript, this.#snapshot ?? captureState(this.vm));
  }

  /** @internal A kit check failed: pause a running guest to show where it is, and describe it all. */
  async failure(cause: unknown): Promise<KernelTestError> {
    let note = "";
    if (this.vm.state === "running") {
      await this.vm.pause();
      note = " (paused by the failed check, to show where the guest was)";
    }
    const snapshot = this.#snapshot ?? captureState(this.vm);
    const message = `${(cause as Error)?.message ?? String(cause)}\n${
      formatReport(this.vm.serial.transcript, snapshot, note)
    }`;
    return new KernelTestError(message, snapshot.stop, { cause });
  }

  /** @internal In debug mode a failing test serves gdb for this VM and waits until gdb has come and gone. */
  async serveGdbForDebugging(testName: string): Promise<void> {
    if (this.#closed || this.vm.state === "closed") return;
    if (this.vm.running) await this.vm.pause();
    const server = listenGdb(this.vm, { port: 0 });
    const file = this.kernel.startsWith("/") ? `-ex 'file ${this.kernel}' ` : "";
    const arch = this.vm.image?.mode === "long" ? "" : "-ex 'set architecture i386:x86-64' ";
    console.error(
      `\nhvsh: kernel test "${testName}" failed; its VM stays open: ` +
        `gdb ${file}${arch}-ex 'target remote ${server.address}'\n` +
        `hvsh: the test goes on when gdb detaches, quits or kills the VM`,
    );
    await new Promise<void>((resolve) => {
      const off = server.onConnection((connected) => {
        if (!connected) {
          off();
          resolve();
        }
      });
      void server.closed.then(() => resolve());
    });
    await server.close();
  }

  /**
   * Ends the run: pauses a running guest, keeps what a failure report needs,
   * closes the VM. In debug mode, inside {@link kernelTest}, the VM stays
   * open until the test has ended (a failing test serves gdb first).
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.vm.running) await this.vm.pause();
    if (this.vm.state !== "closed") this.#snapshot = captureState(this.vm);
    if (this.#debug && this.#scope !== undefined) return;
    await this.close();
  }

  /** Closes the VM now (safe to call twice). */
  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.vm.running) await this.vm.pause();
    if (this.vm.state !== "closed") this.#snapshot ??= captureState(this.vm);
    this.#closed = true;
    await this.vm.close();
  }
}

/**
 * Boots `kernel` (a path, a file URL or the image's bytes) in a new VM and
 * starts it. Bad images throw (and nothing is left open).
 *
 * @example
 * ```ts ignore
 * await using run = await bootKernel("kernel.elf", { append: "verbose", timeout: 5_000, memory: "32M" });
 * await run.serial.expect(/ready/);
 * const stop = await run.stop;
 * ```
 */
export async function bootKernel(
  kernel: string | URL | Uint8Array,
  options: BootKernelOptions = {},
): Promise<KernelRun> {
  const timeout = options.timeout ?? 10_000;
  if (!(timeout > 0)) throw new RangeError(`Invalid timeout ${timeout}: expected ms > 0`);
  const source = kernel instanceof URL ? fileURLToPath(kernel) : kernel;
  const vmOptions: VmOptions = { ...options.vm, memory: options.memory ?? "64M" };
  if (options.cpus !== undefined) vmOptions.cpus = options.cpus;
  const vm = await Vm.create(vmOptions);
  try {
    await vm.load(source, {
      format: options.format ?? "auto",
      ...(options.append === undefined ? {} : { cmdline: options.append }),
      ...(options.modules === undefined ? {} : { modules: options.modules }),
    });
  } catch (error) {
    await vm.close();
    throw error;
  }
  const scope = currentTest;
  const run = new KernelRun(
    vm,
    typeof source === "string" ? source : "kernel bytes",
    timeout,
    scope,
    options.debug ?? scope?.debug ?? debugFromEnvironment(),
  );
  scope?.runs.add(run);
  return run;
}

// ---------------------------------------------------------------- assertExit

/**
 * Asserts that the guest exited through the debug-exit port (0xf4) with
 * value `code`. Throws a {@link KernelTestError} such as
 * `guest exited with 3 (expected 0)`, followed by the guest's last lines of
 * output, its stop, registers and code when the stop came from
 * {@link bootKernel}.
 *
 * @example
 * ```ts ignore
 * assertExit(await run.stop, 0);
 * ```
 */
export function assertExit(stop: StopEvent, code: number): asserts stop is ExitStop {
  if (stop.reason === "exit" && stop.value === code) return;
  const what = stop.reason === "exit"
    ? `guest exited with ${stop.value} (expected ${code})`
    : `guest did not exit (expected exit ${code}): ${describeStop(stop)}`;
  const run = runsByStop.get(stop);
  throw new KernelTestError(run === undefined ? what : `${what}\n${run.report()}`, stop);
}
