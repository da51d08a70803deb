/**
 * A REPL session: the VMs it holds, the current one, the scope typed code
 * sees (`vm`, `cpu`, `mem`, `debug`, `Vm`, helpers), the transcript `.save`
 * writes, and the context view shown at every stop.
 *
 * @module
 */

import {
  describeStop,
  type LoadOptions,
  type Registers,
  type StopEvent,
  Vm,
  type VmOptions,
  writeRegister,
} from "../mod.ts";
import { evaluate } from "./evaluator.ts";
import { type ContextOptions, formatContext, formatValue, hex, makeStyle, type Style } from "./format.ts";

/** How a VM of the session was made, so `.save` can write a script that makes it again. */
export interface VmRecipe {
  options: VmOptions;
  kernel?: string;
  load?: LoadOptions;
}

/** Where the session prints. */
export interface SessionOutput {
  /** A line (or lines) of output. */
  print(text: string): void;
  /** Raw guest console bytes. */
  console(bytes: Uint8Array): void;
}

/** A REPL session. */
export class Session {
  readonly vms = new Map<string, { vm: Vm; recipe: VmRecipe }>();
  currentName: string | undefined;
  readonly style: Style;
  readonly context: ContextOptions = { instructions: 4, stack: 4, registers: true };
  /** Show the context view at stops. */
  showContext = true;
  /** Lines of TypeScript that replay what this session did, for `.save`. */
  readonly transcript: string[] = [];
  output: SessionOutput;
  /** Where a `.x` without an address goes on, and the format it keeps (gdb's habit). */
  lastExamine: { next: bigint; spec: string } | undefined;
  #previousRegs: Registers | undefined;
  #nextVm = 2;
  #detachConsole: (() => void) | undefined;

  constructor(output: SessionOutput, colors: boolean) {
    this.output = output;
    this.style = makeStyle(colors);
  }

  /** The current VM; throws a clear error when there is none. */
  get vm(): Vm {
    const entry = this.currentName === undefined ? undefined : this.vms.get(this.currentName);
    if (entry === undefined) throw new Error("No VM: create one with .vm new [MEMORY] or `vm = await Vm.create()`");
    return entry.vm;
  }

  /** The current VM or undefined. */
  get maybeVm(): Vm | undefined {
    return this.currentName === undefined ? undefined : this.vms.get(this.currentName)?.vm;
  }

  /** Adds a VM to the session and makes it current; returns its name. */
  adopt(vm: Vm, recipe: VmRecipe = { options: {} }): string {
    for (const [name, entry] of this.vms) if (entry.vm === vm) return this.use(name);
    // The VM's own name (vm1, vm2, ...), so `.vm list` and `vm.name` agree; a clash gets a suffix.
    let name = vm.name;
    while (this.vms.has(name)) name = `${vm.name}-${this.#nextVm++}`;
    this.vms.set(name, { vm, recipe });
    vm.onStop((stop) => this.#onStop(vm, stop));
    this.use(name);
    return name;
  }

  /** Makes a VM current. */
  use(name: string): string {
    if (!this.vms.has(name)) {
      throw new RangeError(`No VM named ${JSON.stringify(name)} (VMs: ${[...this.vms.keys()].join(", ") || "none"})`);
    }
    this.#detachConsole?.();
    this.currentName = name;
    const vm = this.vms.get(name)!.vm;
    const off = vm.serial.onData((bytes) => this.output.console(bytes));
    this.#detachConsole = off;
    this.#previousRegs = undefined;
    this.lastExamine = undefined;
    return name;
  }

  /** Creates a VM as `recipe` says, loads its kernel, adopts it. */
  async createVm(recipe: VmRecipe): Promise<string> {
    const vm = await Vm.create(recipe.options);
    try {
      if (recipe.kernel !== undefined) await vm.load(recipe.kernel, recipe.load ?? {});
    } catch (error) {
      await vm.close();
      throw error;
    }
    return this.adopt(vm, recipe);
  }

  /** Closes a VM (the current one by default). */
  async closeVm(name = this.currentName): Promise<void> {
    if (name === undefined) throw new RangeError("No VM to close");
    if (!this.vms.has(name)) {
      throw new RangeError(`No VM named ${JSON.stringify(name)} (VMs: ${[...this.vms.keys()].join(", ") || "none"})`);
    }
    const { vm } = this.vms.get(name)!;
    this.vms.delete(name);
    if (name === this.currentName) {
      this.#detachConsole?.();
      this.#detachConsole = undefined;
      this.currentName = this.vms.keys().next().value;
      if (this.currentName !== undefined) this.use(this.currentName);
    }
    await vm.close();
  }

  /** Closes every VM. */
  async closeAll(): Promise<void> {
    for (const name of [...this.vms.keys()]) await this.closeVm(name);
  }

  #onStop(vm: Vm, stop: StopEvent): void {
    if (vm !== this.maybeVm) return;
    if (!this.showContext) {
      this.output.print(this.style.cyan(`[${describeStop(stop)}]`));
      return;
    }
    try {
      this.output.print(formatContext(vm, stop, this.#previousRegs, this.context, this.style));
      this.#previousRegs = vm.cpu(stop.cpu).regs;
    } catch (error) {
      this.output.print(`[${describeStop(stop)}] (context unavailable: ${(error as Error).message})`);
    }
  }

  /** Prints the context view of the current VM without a stop. */
  showContextNow(): void {
    const vm = this.vm;
    this.output.print(formatContext(vm, vm.lastStop, this.#previousRegs, this.context, this.style));
    this.#previousRegs = vm.debug.cpu.regs;
  }

  /** Runs `action` with the session's printed lines collected instead of shown (gdb's `monitor` uses it). */
  async capture(action: () => Promise<void> | void): Promise<string> {
    const shown = this.output;
    const lines: string[] = [];
    this.output = { print: (text) => lines.push(text), console: shown.console };
    try {
      await action();
    } finally {
      this.output = shown;
    }
    return lines.join("\n");
  }

  /** Formats a value for printing. */
  format(value: unknown): string {
    return formatValue(value, this.style.enabled);
  }

  /** Evaluates TypeScript with the scope installed; with `file`, errors name the file and line (see evaluator.ts). */
  async evaluate(source: string, options: { file?: string } = {}): Promise<unknown> {
    installScope(this);
    return await evaluate(source, options);
  }
}

let scopeSession: Session | undefined;

/** Puts `vm`, `cpu`, `mem`, `debug`, `Vm`, `hex`, `describeStop`, `writeRegister` in the global scope of typed code. */
export function installScope(session: Session): void {
  if (scopeSession === session) return;
  scopeSession = session;
  const define = (name: string, get: () => unknown, set?: (value: unknown) => void) =>
    Object.defineProperty(globalThis, name, { get, set: set ?? (() => {}), configurable: true, enumerable: false });
  define("vm", () => session.maybeVm, (value) => {
    if (!(value instanceof Vm)) throw new TypeError(`vm must be a Vm, got ${String(value)}`);
    session.adopt(value);
  });
  define("cpu", () => session.maybeVm?.debug.cpu);
  define("mem", () => session.maybeVm?.memory);
  define("debug", () => session.maybeVm?.debug);
  define("session", () => session);
  Object.assign(globalThis, { Vm, hex, describeStop, writeRegister });
}
