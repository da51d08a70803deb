/**
 * GDB `monitor` commands (qRcmd): a registry of named commands, the
 * built-ins (`help`, `phys`, `regs`, `pt`, `disas`, `js`) and
 * {@link registerMonitorCommand} so other front ends (the REPL's dot
 * commands) can add theirs.
 *
 * @example
 * ```ts ignore
 * import { registerMonitorCommand } from "./monitor.ts";
 * registerMonitorCommand("serial", () => vm.serial.output, "the guest's COM1 output so far");
 * // (gdb) monitor serial
 * ```
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import type { Debugger } from "../debug/debugger.ts";
import type { Vcpu } from "../vcpu.ts";
import type { Segment } from "../kvm/structs.ts";
import { formatTranslation } from "../debug/paging.ts";
import type { MemorySpace } from "./target.ts";
import { DISPLAY_REGISTER_ORDER } from "../kvm/structs.ts";
import { hex } from "../hex.ts";
import { formatPosition, type HistoryInfo } from "../debug/history.ts";

/** What a monitor command can see and change. */
export interface MonitorContext {
  /** The VM being debugged (a `Vm` when it came from the scripting API). */
  readonly vm: Machine;
  /** Its debugger. */
  readonly debug: Debugger;
  /** The vCPU GDB's current thread (Hg) names. */
  readonly cpu: Vcpu;
  /** How `m`/`M`/`X` addresses are read: guest virtual (default) or physical. */
  memorySpace: MemorySpace;
  /** Whether `monitor js` may run (off unless the server was started with allowJs). */
  readonly allowJs: boolean;
  /** The registry the command came from (for `help`). */
  readonly registry: MonitorRegistry;
}

/** A monitor command's handler: `args` is the text after the command name; the result is printed by GDB. */
export type MonitorHandler = (args: string, context: MonitorContext) => string | Promise<string>;

/** A registered monitor command. */
export interface MonitorCommand {
  readonly name: string;
  /** One line for `monitor help`, e.g. "pt ADDR: walk the page tables for ADDR". */
  readonly help: string;
  readonly run: MonitorHandler;
}

/**
 * Monitor commands by name. Registering a name twice throws; `help` lists
 * the commands in name order.
 *
 * @example
 * ```ts
 * import { MonitorRegistry } from "./monitor.ts";
 * const registry = new MonitorRegistry();
 * registry.register({ name: "hello", help: "hello: say hello", run: () => "hello\n" });
 * registry.names(); // ["hello"]
 * ```
 */
export class MonitorRegistry {
  #commands = new Map<string, MonitorCommand>();

  /** Adds a command; throws a RangeError when the name is taken or not one word. Returns a function that removes it. */
  register(command: MonitorCommand): () => void {
    if (!/^[A-Za-z_][\w.-]*$/.test(command.name)) {
      throw new RangeError(`Invalid monitor command name ${JSON.stringify(command.name)}: expected one word`);
    }
    if (this.#commands.has(command.name)) {
      throw new RangeError(`Monitor command ${JSON.stringify(command.name)} is already registered`);
    }
    this.#commands.set(command.name, command);
    return () => {
      if (this.#commands.get(command.name) === command) this.#commands.delete(command.name);
    };
  }

  /** The command named `name`, if any. */
  get(name: string): MonitorCommand | undefined {
    return this.#commands.get(name);
  }

  /** Command names in order. */
  names(): string[] {
    return [...this.#commands.keys()].sort();
  }

  /** The `monitor help` text. */
  help(): string {
    const lines = this.names().map((name) => `  ${this.#commands.get(name)!.help}`);
    return `hvsh monitor commands:\n${lines.join("\n")}\n`;
  }

  /** Runs a command line (`"pt 0x100000"`); unknown commands and failures come back as text that says so. */
  async run(line: string, context: MonitorContext): Promise<string> {
    const trimmed = line.trim();
    let [name = ""] = trimmed.split(/\s+/);
    if (name === "") return this.help();
    let command = this.#commands.get(name);
    // gdb's `x/4xg ADDR`: a format glued to the name goes to the command with its arguments.
    if (command === undefined && name.includes("/")) {
      name = name.slice(0, name.indexOf("/"));
      command = this.#commands.get(name);
    }
    if (command === undefined) {
      return `hvsh: unknown monitor command ${JSON.stringify(name)} (commands: ${this.names().join(", ")})\n`;
    }
    try {
      const output = await command.run(trimmed.slice(name.length).trim(), context);
      return output === "" || output.endsWith("\n") ? output : `${output}\n`;
    } catch (error) {
      return `hvsh: monitor ${name}: ${(error as Error).message}\n`;
    }
  }
}

function segmentLine(name: string, s: Segment): string {
  const attrs = [
    s.present ? "P" : "-",
    `dpl=${s.dpl}`,
    `type=${hex(s.type)}`,
    s.l ? "L" : "",
    s.db ? "D" : "",
    s.g ? "G" : "",
    s.unusable ? "unusable" : "",
  ].filter((a) => a !== "");
  return `${name.padEnd(3)} ${hex(s.selector, 4)}  base ${hex(s.base, 16)}  limit ${hex(s.limit, 8)}  ${
    attrs.join(" ")
  }`;
}

/** The `monitor regs` text: general, segment, control and descriptor-table registers of a vCPU, and its mode. */
export function formatRegisters(cpu: Vcpu, symbolize?: (address: bigint) => string | undefined): string {
  const r = cpu.regs;
  const s = cpu.sregs;
  const names = DISPLAY_REGISTER_ORDER.slice(0, 16);
  const lines: string[] = [];
  for (let i = 0; i < names.length; i += 4) {
    lines.push(names.slice(i, i + 4).map((n) => `${n.padEnd(3)} ${hex(r[n], 16)}`).join("  "));
  }
  const symbol = symbolize?.(r.rip);
  lines.push(`rip ${hex(r.rip, 16)}${symbol === undefined ? "" : ` <${symbol}>`}  rflags ${hex(r.rflags, 8)}`);
  for (const name of ["cs", "ss", "ds", "es", "fs", "gs", "tr", "ldt"] as const) lines.push(segmentLine(name, s[name]));
  lines.push(`gdt base ${hex(s.gdt.base, 16)}  limit ${hex(s.gdt.limit, 4)}`);
  lines.push(`idt base ${hex(s.idt.base, 16)}  limit ${hex(s.idt.limit, 4)}`);
  lines.push(`cr0 ${hex(s.cr0, 8)}  cr2 ${hex(s.cr2, 16)}  cr3 ${hex(s.cr3, 16)}`);
  lines.push(`cr4 ${hex(s.cr4, 8)}  cr8 ${hex(s.cr8)}  efer ${hex(s.efer, 8)}`);
  lines.push(`mode ${cpu.mode} (vCPU ${cpu.index})`);
  return lines.join("\n") + "\n";
}

/** The `monitor record status` text (the REPL's `.record` prints the same). */
export function formatRecording(info: HistoryInfo | undefined): string {
  if (info === undefined) return "not recording\n";
  const lines = [
    `recording: ${info.events} port/MMIO accesses logged, ${info.checkpoints} checkpoints (${
      (info.checkpointBytes / 1024).toFixed(0)
    } KiB of pages)`,
    `the guest is ${
      info.replaying ? "in the past (going forward replays the log)" : "at the end of the history (live)"
    }${info.position === undefined ? "" : `, at ${formatPosition(info.position)}`}`,
  ];
  if (info.broken !== undefined) lines.push(`history unusable: ${info.broken}`);
  return lines.join("\n") + "\n";
}

/** The `monitor js` evaluator: an async function of `vm`, `cpu` and `debug`. */
async function evaluate(expression: string, context: MonitorContext): Promise<string> {
  const AsyncFunction = (async () => {}).constructor as new (
    ...args: string[]
  ) => (...values: unknown[]) => Promise<unknown>;
  let fn;
  try {
    fn = new AsyncFunction("vm", "cpu", "debug", `return (${expression}\n);`);
  } catch {
    fn = new AsyncFunction("vm", "cpu", "debug", expression);
  }
  const value = await fn(context.vm, context.cpu, context.debug);
  return typeof value === "string" ? value : Deno.inspect(value, { colors: false, depth: 4 });
}

const BUILTINS: MonitorCommand[] = [
  {
    name: "help",
    help: "help: list monitor commands",
    run: (_args, context) => context.registry.help(),
  },
  {
    name: "phys",
    help: "phys on|off: read and write memory (x, set, m/M packets) by physical address, or virtual (default)",
    run: (args, context) => {
      if (args === "on") context.memorySpace = "physical";
      else if (args === "off") context.memorySpace = "virtual";
      else if (args !== "") throw new RangeError(`expected "on" or "off", got ${JSON.stringify(args)}`);
      return `memory accesses use ${context.memorySpace} addresses\n`;
    },
  },
  {
    name: "regs",
    help: "regs: every register of the current vCPU, with segments, control registers and mode",
    run: (_args, context) => formatRegisters(context.cpu, (a) => context.debug.symbolize(a)),
  },
  {
    name: "pt",
    help: "pt ADDR: walk the page tables for a virtual address (or symbol)",
    run: (args, context) => {
      if (args === "") throw new RangeError("expected an address, e.g. monitor pt 0x100000");
      return formatTranslation(context.debug.translate(args, context.cpu));
    },
  },
  {
    name: "disas",
    help: "disas [ADDR [COUNT]]: disassemble in the vCPU's current mode (16/32/64-bit), default at rip",
    run: (args, context) => {
      const [location, count] = args === "" ? [] : args.split(/\s+/);
      const n = count === undefined ? 10 : Number(count);
      if (!Number.isInteger(n) || n < 1 || n > 1000) throw new RangeError(`Invalid count ${JSON.stringify(count)}`);
      return context.debug.disassemble(location, n);
    },
  },
  {
    name: "record",
    help: "record [on|off|status]: record the guest so gdb can run it backwards (reverse-stepi, reverse-continue)",
    run: (args, context) => {
      const debug = context.debug;
      if (args === "on" || args === "") {
        if (debug.recording === undefined) debug.record();
      } else if (args === "off") {
        debug.stopRecording();
        return "recording stopped\n";
      } else if (args !== "status") {
        throw new RangeError(`expected "on", "off" or "status", got ${JSON.stringify(args)}`);
      }
      return formatRecording(debug.recording);
    },
  },
  {
    name: "js",
    help: "js EXPR: evaluate JavaScript with vm, cpu and debug in scope and print the result",
    run: (args, context) => {
      if (!context.allowJs) {
        throw new Error(
          "disabled: it runs host code for anyone who can connect; start the server with allowJs: true " +
            "(hvsh boot --gdb-allow-js, the REPL's .gdb PORT --allow-js) to enable it",
        );
      }
      if (args === "") throw new RangeError("expected an expression, e.g. monitor js vm.serial.output");
      return evaluate(args, context);
    },
  },
];

/** A registry holding the built-in commands. */
export function defaultMonitorRegistry(): MonitorRegistry {
  const registry = new MonitorRegistry();
  for (const command of BUILTINS) registry.register(command);
  return registry;
}

/** The registry every gdb server uses unless given another. */
export const monitorCommands: MonitorRegistry = defaultMonitorRegistry();

/**
 * Adds a command to {@link monitorCommands} (every server that was not given
 * its own registry). Returns a function that removes it.
 *
 * @example
 * ```ts ignore
 * const remove = registerMonitorCommand("serial", (_args, { vm }) => vm.serial.output, "serial: COM1 output so far");
 * remove();
 * ```
 */
export function registerMonitorCommand(name: string, run: MonitorHandler, help = name): () => void {
  return monitorCommands.register({ name, help, run });
}
