/**
 * The REPL's dot commands: a registry of `{ name, usage, help, run }`
 * (like kvmtool's command table and cliffy's registry). Help is generated
 * from it; a bad argument prints the usage and the session goes on.
 *
 * @module
 */

import type { Session } from "./session.ts";
import {
  ALL_REGISTER_NAMES,
  type BreakCondition,
  DISPLAY_REGISTER_ORDER,
  evaluateAddress,
  ExceptionHistory,
  formatRecording,
  formatTranslation,
  inFlightEvents,
  isWritableRegister,
  parseSize,
  parseSystemMap,
  readRegister,
  REGISTER_NAMES,
  type StopEvent,
  telescope,
  type Vm,
  type WatchAccess,
  writeRegister,
} from "../mod.ts";
import { examineAt, formatRegisters, formatSpecialRegisters, hex, hexdump, mergeExamineSpec } from "./format.ts";
import { formatDevices } from "./devices_view.ts";

/** A dot command. */
export interface Command {
  name: string;
  usage: string;
  help: string;
  run(args: string, session: Session): Promise<void> | void;
  /** Completion candidates for the argument being typed. */
  complete?(partial: string, session: Session): string[];
  /** Equivalent TypeScript for `.save` (undefined: nothing to replay). */
  script?(args: string): string | undefined;
}

/** A usage mistake: the REPL prints the message and the command's usage. */
export class CommandError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CommandError";
  }
}

const registry = new Map<string, Command>();

/** Registers a command; a duplicate name throws. */
export function registerCommand(command: Command): void {
  if (registry.has(command.name)) throw new Error(`Command .${command.name} is already registered`);
  registry.set(command.name, command);
}

/** All commands by name. */
export function commands(): ReadonlyMap<string, Command> {
  return registry;
}

function words(args: string): string[] {
  return args.trim() === "" ? [] : args.trim().split(/\s+/);
}

/** Whether an expression ends in an operator, so the word after it belongs to it (`tick + 8`). */
function endsInOperator(text: string): boolean {
  return /[-+*/(&|<>]\s*$/.test(text);
}

/** `EXPR [N]`: a trailing number after whitespace is the count or length, unless the expression needs it. */
function splitLengthArgument(args: string): { location: string; rest?: string } {
  const match = /^(.*\S)\s+([^\s+\-*/&|()<>]\S*)$/i.exec(args.trim());
  if (match === null || endsInOperator(match[1]!)) return { location: args.trim() };
  return { location: match[1]!, rest: match[2]! };
}

/** `.watch EXPR [LEN] [r|w|rw]`: a last word of letters after something complete is the access. */
function parseWatchArgs(args: string): { where: string; length?: string; mode?: string } {
  let text = args.trim();
  let mode: string | undefined;
  const modeMatch = /^(.*\S)\s+([a-z]+)$/i.exec(text);
  if (modeMatch !== null && !endsInOperator(modeMatch[1]!)) {
    mode = modeMatch[2];
    text = modeMatch[1]!;
  }
  const { location, rest } = splitLengthArgument(text);
  const out: { where: string; length?: string; mode?: string } = { where: location };
  if (rest !== undefined) out.length = rest;
  if (mode !== undefined) out.mode = mode;
  return out;
}

function symbolCompletions(partial: string, session: Session): string[] {
  const vm = session.maybeVm;
  return vm === undefined ? [] : vm.debug.symbols.complete(partial).slice(0, 200);
}

/** An address expression (core/debug/expr.ts): `*` in front reads memory, as in `.x *$rsp`. */
function toLocation(session: Session, text: string | undefined): bigint {
  if (text === undefined || text.trim() === "") throw new CommandError("Missing an address or symbol");
  return evaluateAddress(text.trim(), session.vm.debug, session.vm.debug.cpu);
}

/** A code or data location for .break/.watch/.until: a leading `*` is gdb's "the address" (`break *0x1000`). */
function toBreakLocation(session: Session, text: string | undefined): bigint {
  if (text === undefined || text.trim() === "") throw new CommandError("Missing an address or symbol");
  return session.vm.debug.resolve(text.trim());
}

/** Files and folders completing `partial` (a path typed so far), folders with a trailing `/`. */
export function pathCompletions(partial: string): string[] {
  const slash = partial.lastIndexOf("/");
  const folder = slash < 0 ? "." : partial.slice(0, slash + 1);
  const prefix = partial.slice(slash + 1);
  const out: string[] = [];
  try {
    for (const entry of Deno.readDirSync(folder === "" ? "/" : folder)) {
      if (!entry.name.startsWith(prefix) || (prefix === "" && entry.name.startsWith("."))) continue;
      let isDirectory = entry.isDirectory;
      if (entry.isSymlink) {
        try {
          isDirectory = Deno.statSync(`${folder}${entry.name}`).isDirectory;
        } catch {
          // a dangling link completes as a file
        }
      }
      out.push(`${slash < 0 ? "" : folder}${entry.name}${isDirectory ? "/" : ""}`);
    }
  } catch {
    // an unreadable folder completes to nothing
  }
  return out.sort();
}

function quote(text: string): string {
  return JSON.stringify(text);
}

function compileCondition(expression: string): BreakCondition {
  // The expression sees `cpu`, `regs` and `vm`, e.g. `regs.rdi === 1n`.
  const fn = new Function("cpu", "regs", "vm", `return (${expression});`) as (
    cpu: unknown,
    regs: unknown,
    vm: unknown,
  ) => unknown;
  return (cpu, vm) => Boolean(fn(cpu, cpu.regs, vm));
}

function parseBreakArgs(args: string): { location: string; condition?: string } {
  const match = /^(.+?)(?:\s+if\s+(.+))?$/.exec(args.trim());
  if (match === null) throw new CommandError("Missing an address or symbol");
  return match[2] === undefined ? { location: match[1]! } : { location: match[1]!, condition: match[2] };
}

function breakCommand(kind: "break" | "hbreak"): Command {
  return {
    name: kind,
    usage: `.${kind} ADDR|SYMBOL [if EXPR]`,
    help: kind === "break"
      ? "software breakpoint; EXPR sees cpu, regs, vm (e.g. `if regs.rdi === 1n`)"
      : "hardware breakpoint (DR0-DR3, four at most)",
    run(args, session) {
      const { location, condition } = parseBreakArgs(args);
      const options = condition === undefined
        ? {}
        : { condition: compileCondition(condition), conditionText: condition };
      const bp = session.vm.debug[kind](toBreakLocation(session, location), options);
      session.output.print(
        `${kind === "break" ? "Breakpoint" : "Hardware breakpoint"} ${bp.id} at ${hex(bp.address)}${
          bp.symbol === undefined ? "" : ` <${bp.symbol}>`
        }${condition === undefined ? "" : ` if ${condition}`}`,
      );
    },
    complete: symbolCompletions,
    script(args) {
      const { location, condition } = parseBreakArgs(args);
      const where = /^(0x[0-9a-f]+|\d+)$/i.test(location) ? `${location}n` : quote(location);
      const options = condition === undefined
        ? ""
        : `, { condition: (cpu) => { const regs = cpu.regs; return ${condition}; } }`;
      return `vm.debug.${kind}(${where}${options});`;
    },
  };
}

function runCommand(
  name: string,
  usage: string,
  help: string,
  make: (session: Session, args: string) => Promise<StopEvent>,
  script: (args: string) => string,
): Command {
  return {
    name,
    usage,
    help,
    async run(args, session) {
      await make(session, args); // the session's stop observer prints the context view
    },
    script,
  };
}

function count(args: string, fallback: number): number {
  const text = args.trim();
  if (text === "") return fallback;
  if (!/^\d+$/.test(text) || Number(text) < 1) {
    throw new CommandError(`Invalid count ${quote(text)}: expected a positive integer`);
  }
  return Number(text);
}

registerCommand({
  name: "help",
  usage: ".help [COMMAND]",
  help: "list commands, or show one command's help",
  run(args, session) {
    const name = args.trim().replace(/^\./, "");
    if (name !== "") {
      const command = registry.get(name);
      if (command === undefined) throw new CommandError(`Unknown command .${name}`);
      session.output.print(`${command.usage}\n  ${command.help}`);
      return;
    }
    const lines = [...registry.values()].map((c) => `  ${c.usage.padEnd(36)} ${c.help}`);
    session.output.print(
      `Dot commands (anything else is TypeScript, with vm, cpu, mem, debug, Vm in scope):\n${lines.join("\n")}`,
    );
  },
  complete: (partial) => [...registry.keys()].filter((n) => n.startsWith(partial)),
});

registerCommand({
  name: "vm",
  usage: ".vm new [MEMORY]|list|use NAME|close [NAME]",
  help: "create, list, switch and close VMs",
  async run(args, session) {
    const [verb, arg] = words(args);
    switch (verb ?? "list") {
      case "new": {
        const memory = arg ?? "64M";
        parseSize(memory);
        const name = await session.createVm({ options: { memory } });
        session.output.print(`${name}: new VM with ${memory} RAM (current)`);
        break;
      }
      case "list":
        if (session.vms.size === 0) session.output.print("no VMs");
        for (const [name, { vm }] of session.vms) {
          session.output.print(
            `${name === session.currentName ? "*" : " "} ${name}  ${vm.state}  ${vm.memory.ramSize >> 20} MiB  ${
              vm.image?.format ?? "no image"
            }${vm.lastStop === undefined ? "" : `  last stop: ${vm.lastStop.reason}`}`,
          );
        }
        break;
      case "use":
        if (arg === undefined) throw new CommandError("Missing the VM name");
        session.use(arg);
        session.output.print(`${arg} is current`);
        break;
      case "close":
        await session.closeVm(arg);
        session.output.print(`closed ${arg ?? "the VM"}`);
        break;
      default:
        throw new CommandError(`Unknown .vm verb ${quote(verb!)}`);
    }
  },
  complete: (partial) => ["new", "list", "use", "close"].filter((v) => v.startsWith(partial)),
  script(args) {
    const [verb, arg] = words(args);
    if (verb === "new") return `vm = await Vm.create({ memory: ${quote(arg ?? "64M")} });`;
    if (verb === "close") return `await session.closeVm(${arg === undefined ? "" : quote(arg)});`;
    if (verb === "use" && arg !== undefined) return `session.use(${quote(arg)});`;
    return undefined;
  },
});

/** `.load` arguments: FILE [ADDR] [--initrd FILE|DIR] [--symbols FILE] [--append CMDLINE (the rest of the line)]. */
function parseLoadArgs(
  args: string,
): { file?: string; addr?: string; initrd?: string; symbols?: string; append?: string } {
  const out: { file?: string; addr?: string; initrd?: string; symbols?: string; append?: string } = {};
  let rest = args.trim();
  const appendAt = rest.search(/(^|\s)--append(\s|$)/);
  if (appendAt >= 0) {
    out.append = rest.slice(appendAt).replace(/^\s*--append\s*/, "").replace(/^"(.*)"$/s, "$1").replace(
      /^'(.*)'$/s,
      "$1",
    );
    rest = rest.slice(0, appendAt);
  }
  const tokens = words(rest);
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!;
    if (token === "--initrd" || token === "--symbols") {
      const value = tokens[++i];
      if (value === undefined) throw new CommandError(`${token} needs a FILE`);
      if (token === "--initrd") out.initrd = value;
      else out.symbols = value;
    } else if (token.startsWith("--")) {
      throw new CommandError(`Unknown .load option ${quote(token)}`);
    } else if (out.file === undefined) {
      out.file = token;
    } else if (out.addr === undefined) {
      out.addr = token;
    } else {
      throw new CommandError(`Unexpected argument ${quote(token)}`);
    }
  }
  return out;
}

registerCommand({
  name: "snapshot",
  usage: ".snapshot save FILE | .snapshot load FILE",
  help: "save the stopped VM to one file, or restore one as a new VM (made current)",
  async run(args, session) {
    const [verb, file] = words(args);
    if (file === undefined || (verb !== "save" && verb !== "load")) {
      throw new CommandError("Expected .snapshot save FILE or .snapshot load FILE");
    }
    if (verb === "save") {
      const info = await session.vm.snapshot(file);
      session.output.print(
        `saved ${file}: ${info.size >> 20} MiB file, ${info.storedPages} pages stored, ${info.ms.toFixed(1)} ms`,
      );
      return;
    }
    const { Vm } = await import("../core/vm.ts");
    const started = performance.now();
    const vm = await Vm.restore(file, { compileCondition });
    const name = session.adopt(vm);
    session.output.print(`${name}: restored from ${file} in ${(performance.now() - started).toFixed(1)} ms (current)`);
    for (const warning of vm.restoreWarnings) session.output.print(`warning: ${warning}`);
  },
  complete: (partial) => ["save", "load"].filter((v) => v.startsWith(partial)),
  script(args) {
    const [verb, file] = words(args);
    if (verb === "save") return `await vm.snapshot(${quote(file ?? "")});`;
    if (verb === "load") return `vm = await Vm.restore(${quote(file ?? "")});`;
    return undefined;
  },
});

registerCommand({
  name: "load",
  usage: ".load FILE [ADDR] [--initrd FILE|DIR] [--symbols System.map] [--append CMDLINE]",
  help:
    "load a kernel image (format detected: flat, ELF, multiboot, Linux bzImage or PVH vmlinux; ADDR loads a flat binary there); --append is the rest of the line",
  async run(args, session) {
    const { file, addr, initrd, symbols, append } = parseLoadArgs(args);
    if (file === undefined) throw new CommandError("Missing FILE");
    const vm = session.vm;
    let image;
    if (initrd !== undefined) {
      image = await vm.loadLinux({ kernel: file, initrd, cmdline: append });
    } else if (addr !== undefined) {
      image = await vm.load(file, { format: "flat", loadAddress: Number(addr) });
    } else {
      image = await vm.load(file, append === undefined ? {} : { cmdline: append });
    }
    let symbolCount = image.symbols.length;
    if (symbols !== undefined) {
      const bytes = await Deno.readFile(symbols).catch((error) => {
        throw new CommandError(`Cannot read ${symbols}: ${(error as Error).message}`);
      });
      const parsed = bytes[0] === 0x7f && bytes[1] === 0x45
        ? await vm.debug.loadSymbols(bytes)
        : (vm.debug.symbols.add(parseSystemMap(new TextDecoder().decode(bytes), symbols)), vm.debug.symbols.size);
      symbolCount = parsed;
    }
    session.output.print(
      `loaded ${file}: ${image.format}, ${image.mode} mode, entry ${hex(image.entry)}, ${symbolCount} symbols`,
    );
  },
  complete: pathCompletions,
  script(args) {
    const { file, addr, initrd, append } = parseLoadArgs(args);
    if (initrd !== undefined) {
      const spec = [`kernel: ${quote(file ?? "")}`];
      if (initrd !== undefined) spec.push(`initrd: ${quote(initrd)}`);
      if (append !== undefined) spec.push(`cmdline: ${quote(append)}`);
      return `await vm.loadLinux({ ${spec.join(", ")} });`;
    }
    if (addr !== undefined) return `await vm.load(${quote(file ?? "")}, { format: "flat", loadAddress: ${addr} });`;
    return append === undefined
      ? `await vm.load(${quote(file ?? "")});`
      : `await vm.load(${quote(file ?? "")}, { cmdline: ${quote(append)} });`;
  },
});

function parseRegisterAssignment(args: string): { name: string; value: bigint } | undefined {
  const match = /^\$?(\w+)\s*=\s*(\S+)$/.exec(args.trim());
  if (match === null) return undefined;
  const name = match[1]!.toLowerCase();
  if (!isWritableRegister(name)) {
    throw new CommandError(
      ALL_REGISTER_NAMES.includes(name)
        ? `Cannot set ${name} with .regs: only general registers and their parts (eax, al, r8d...) can be set; use cpu.setSregs()`
        : `Unknown register ${match[1]}`,
    );
  }
  let value: bigint;
  try {
    value = BigInt(match[2]!.replace(/n$/, ""));
  } catch {
    throw new CommandError(`Invalid value ${quote(match[2]!)} for ${name}: expected a number like 0x10 or 16`);
  }
  return { name, value };
}

registerCommand({
  name: "regs",
  usage: ".regs [NAME...|NAME=VALUE]",
  help: "show the selected vCPU's (.cpu) registers, some (rax, eax, al, cr3, efer, cs, fs_base...), or set one (rax=1)",
  run(args, session) {
    const cpu = session.vm.debug.cpu;
    const text = args.trim();
    if (text === "") {
      session.output.print(formatRegisters(cpu.regs, undefined, session.style));
      return;
    }
    const assignment = parseRegisterAssignment(text);
    if (assignment !== undefined) {
      cpu.setRegs(writeRegister(assignment.name, assignment.value, cpu.regs));
      const value = readRegister(assignment.name, cpu.regs, () => cpu.sregsView)!;
      session.output.print(`${assignment.name} = ${hex(value)}`);
      return;
    }
    const lines = text.split(/\s+/).map((word) => {
      const name = word.replace(/^\$/, "").toLowerCase();
      const value = readRegister(name, cpu.regs, () => cpu.sregsView);
      if (value === undefined) throw new CommandError(`Unknown register ${word}`);
      return `${name} = ${hex(value)}`;
    });
    session.output.print(lines.join("\n"));
  },
  complete: (partial) =>
    [...REGISTER_NAMES, ...ALL_REGISTER_NAMES.filter((n) => !(REGISTER_NAMES as readonly string[]).includes(n))]
      .filter((n) => n.startsWith(partial)),
  script(args) {
    const assignment = parseRegisterAssignment(args);
    if (assignment === undefined) return undefined;
    const value = `0x${assignment.value.toString(16)}n`;
    return (REGISTER_NAMES as readonly string[]).includes(assignment.name)
      ? `cpu.setRegs({ ${assignment.name}: ${value} });`
      : `cpu.setRegs(writeRegister(${quote(assignment.name)}, ${value}, cpu.regs));`;
  },
});

registerCommand({
  name: "cpu",
  usage: ".cpu [N]",
  help:
    "list the vCPUs, or select vCPU N for .regs, .step, .next, .finish, .bt, .x (a stop selects the vCPU that stopped)",
  run(args, session) {
    const vm = session.vm;
    const text = args.trim();
    if (text !== "") {
      if (!/^\d+$/.test(text)) throw new CommandError(`Invalid vCPU ${quote(text)}: expected a number`);
      try {
        vm.debug.select(Number(text));
      } catch (error) {
        throw new CommandError((error as Error).message);
      }
    }
    const selected = vm.debug.cpu.index;
    session.output.print(
      vm.cpus.map((cpu) => {
        // A running vCPU's registers cannot be read (its thread is inside KVM_RUN).
        if (vm.running) return `${cpu.index === selected ? "*" : " "} vCPU ${cpu.index}  running`;
        const rip = cpu.regs.rip;
        const symbol = vm.debug.symbolize(rip);
        return `${cpu.index === selected ? "*" : " "} vCPU ${cpu.index}  ${hex(rip)}${
          symbol === undefined ? "" : ` <${symbol}>`
        }  ${cpu.mode} mode`;
      }).join("\n"),
    );
  },
  script: (args) => args.trim() === "" ? undefined : `vm.debug.select(${Number(args.trim())});`,
});

registerCommand({
  name: "sregs",
  usage: ".sregs",
  help: "segments, descriptor tables, control registers, EFER (decoded)",
  run(_args, session) {
    session.output.print(formatSpecialRegisters(session.vm.debug.cpu.sregs));
  },
});

registerCommand({
  name: "x",
  usage: ".x/NFU [ADDR]",
  help: "examine memory like gdb's x (e.g. .x/4xg $rsp, .x/5i bump, .x/s 0x1000); no ADDR: after the last one",
  run(args, session) {
    const match = /^(\/\S*)?\s*(.*)$/.exec(args.trim())!;
    const debug = session.vm.debug;
    const where = match[2] ?? "";
    const last = session.lastExamine;
    let address: bigint;
    if (where !== "") address = toLocation(session, where);
    else if (last !== undefined) address = last.next;
    else throw new CommandError("Missing an address (no earlier .x to continue from)");
    // gdb: a format's letters (count, format, size) stick for the next `x` that gives none.
    const spec = mergeExamineSpec(match[1] ?? "", last?.spec);
    const result = examineAt(
      spec,
      address,
      (a, n) => debug.readVirtual(a, n),
      (a, n) => debug.instructions(a, n),
      (a, n) => debug.disassemble(a, n),
      (a) => debug.symbolize(a),
    );
    session.lastExamine = { next: result.next, spec };
    session.output.print(result.text);
  },
  complete: symbolCompletions,
});

registerCommand({
  name: "hexdump",
  usage: ".hexdump ADDR [LEN]",
  help: "hexdump virtual memory (default 64 bytes)",
  run(args, session) {
    const { location, rest } = splitLengthArgument(args);
    const address = toLocation(session, location);
    const n = rest === undefined ? 64 : count(rest, 64);
    session.output.print(hexdump(address, session.vm.debug.readVirtual(address, n)));
  },
  complete: symbolCompletions,
});

registerCommand({
  name: "find",
  usage: ".find TEXT|0xHEX... [ADDR LEN]",
  help: "search guest physical memory (or LEN bytes of virtual memory from ADDR) for a string or bytes",
  run(args, session) {
    const match = /^("(?:[^"\\]|\\.)*"|\S+)(?:\s+(\S+)\s+(\S+))?$/.exec(args.trim());
    if (match === null) throw new CommandError("Missing TEXT or bytes");
    const what = match[1]!;
    const pattern = what.startsWith('"')
      ? JSON.parse(what) as string
      : /^(0x)?([0-9a-f]{2})+$/i.test(what)
      ? Uint8Array.from(what.replace(/^0x/i, "").match(/../g)!.map((b) => parseInt(b, 16)))
      : what;
    const options = match[2] === undefined
      ? {}
      : { start: toLocation(session, match[2]), length: count(match[3]!, 0x1000), virtual: true };
    const hits = session.vm.debug.search(pattern, options);
    session.output.print(hits.length === 0 ? "not found" : hits.map((a) => hex(a)).join("\n"));
  },
});

registerCommand({
  name: "dis",
  usage: ".dis [ADDR] [N]",
  help: "disassemble N instructions (default: 10 at rip)",
  run(args, session) {
    const { location: where, rest: n } = splitLengthArgument(args);
    const debug = session.vm.debug;
    const location = where === "" ? undefined : toLocation(session, where);
    session.output.print(debug.disassemble(location, n === undefined ? 10 : count(n, 10)));
  },
  complete: symbolCompletions,
});

registerCommand({
  name: "tele",
  usage: ".tele [ADDR] [N]",
  help: "telescope: N pointer-sized slots (default 8 at $rsp), each followed through the pointers it holds",
  run(args, session) {
    const { location, rest } = splitLengthArgument(args);
    const vm = session.vm;
    const cpu = vm.debug.cpu;
    const regs = cpu.regs;
    const address = location === "" ? regs.rsp : toLocation(session, location);
    const registers = new Map(DISPLAY_REGISTER_ORDER.filter((n) => n !== "rip").map((n) => [n, regs[n]] as const));
    session.output.print(telescope(
      {
        read: (a, n) => vm.debug.readVirtual(a, n),
        symbolize: (a) => vm.debug.symbolize(a),
        pointerSize: cpu.bitness / 8,
        registers,
      },
      address,
      rest === undefined ? 8 : count(rest, 8),
    ));
  },
  complete: symbolCompletions,
});

const exceptionHistories = new WeakMap<Vm, ExceptionHistory>();

registerCommand({
  name: "exceptions",
  usage: ".exceptions [on [all]|off|N]",
  help: "what KVM shows in flight, and the last N exceptions (on: hook the IDT's handlers; all: interrupts too)",
  run(args, session) {
    const vm = session.vm;
    const [verb, scope] = words(args);
    if (verb === "on") {
      if (scope !== undefined && scope !== "all") throw new CommandError(`Invalid scope ${quote(scope)}: expected all`);
      exceptionHistories.get(vm)?.disarm();
      const history = new ExceptionHistory(vm, { vectors: scope === "all" ? "all" : "exceptions" });
      exceptionHistories.set(vm, history);
      const hooked = history.arm();
      session.output.print(
        `recording ${
          scope === "all" ? "exceptions and interrupts" : "exceptions (vectors 0-31)"
        }: ${hooked} IDT handler${
          hooked === 1 ? "" : "s"
        } hooked (re-read at every stop; KVM itself reports only events in flight at an exit)${
          hooked === 0
            ? "\nno IDT handlers yet: run the guest past its lidt (e.g. .until a function after it), then this arms"
            : ""
        }`,
      );
      return;
    }
    if (verb === "off") {
      exceptionHistories.get(vm)?.disarm();
      session.output.print("exception recording off");
      return;
    }
    const shown = verb === undefined ? 20 : count(verb, 20);
    const lines = [`in flight: ${inFlightEvents(vm).join("; ")}`];
    const history = exceptionHistories.get(vm);
    lines.push(history === undefined ? "no history: .exceptions on records one" : history.format(shown));
    session.output.print(lines.join("\n"));
  },
  complete: (partial) => ["on", "off"].filter((v) => v.startsWith(partial)),
});

registerCommand(breakCommand("break"));
registerCommand(breakCommand("hbreak"));

registerCommand({
  name: "watch",
  usage: ".watch ADDR|SYMBOL [LEN] [r|w|rw]",
  help: "watchpoint of any size and count (default 8 bytes, w)",
  run(args, session) {
    const { where, length, mode } = parseWatchArgs(args);
    const access: WatchAccess = ({ r: "read", w: "write", rw: "access" } as Record<string, WatchAccess>)[mode ?? "w"] ??
      (() => {
        throw new CommandError(`Invalid access ${quote(mode!)}: expected r, w or rw`);
      })();
    const wp = session.vm.debug.watch(
      toBreakLocation(session, where),
      length === undefined ? 8 : count(length, 8),
      access,
    );
    session.output.print(
      `Watchpoint ${wp.id}: ${access} of ${wp.length} bytes at ${hex(wp.address)}${
        wp.symbol === undefined ? "" : ` <${wp.symbol}>`
      }`,
    );
  },
  complete: symbolCompletions,
  script(args) {
    const { where, length, mode } = parseWatchArgs(args);
    const access = ({ r: "read", w: "write", rw: "access" } as Record<string, string>)[mode ?? "w"] ?? "write";
    const at = /^(0x[0-9a-f]+|\d+)$/i.test(where ?? "") ? `${where}n` : quote(where ?? "");
    return `vm.debug.watch(${at}, ${length ?? 8}, ${quote(access)});`;
  },
});

registerCommand({
  name: "delete",
  usage: ".delete N",
  help: "delete a breakpoint or watchpoint",
  run(args, session) {
    if (args.trim() === "") throw new CommandError("Missing N (the id .info breakpoints lists)");
    const id = count(args, NaN);
    session.vm.debug.delete(id);
    session.output.print(`deleted ${id}`);
  },
  script: (args) => `vm.debug.delete(${Number(args.trim())});`,
});

registerCommand({
  name: "devices",
  usage: ".devices",
  help: "list the devices on the buses and the virtio devices with their queues",
  run: (_args, session) => session.output.print(formatDevices(session.vm)),
});

registerCommand({
  name: "info",
  usage: ".info breakpoints",
  help: "list breakpoints and watchpoints with hit counts",
  run(args, session) {
    if (!["breakpoints", "b", "watchpoints", ""].includes(args.trim())) {
      throw new CommandError(`Unknown .info topic ${quote(args.trim())}: expected breakpoints`);
    }
    const debug = session.vm.debug;
    const rows = [
      ...debug.breakpoints.map((b) =>
        `${String(b.id).padEnd(4)}${(b.kind === "software" ? "break" : "hbreak").padEnd(8)}${
          (b.enabled ? "y" : "n").padEnd(4)
        }${hex(b.address).padEnd(12)}${(b.symbol ?? "").padEnd(16)}hits ${b.hits}${
          b.conditionText === undefined ? "" : `  if ${b.conditionText}`
        }${b.once ? "  once" : ""}`
      ),
      ...debug.watchpoints.map((w) =>
        `${String(w.id).padEnd(4)}${("watch-" + w.access[0]).padEnd(8)}${(w.enabled ? "y" : "n").padEnd(4)}${
          hex(w.address).padEnd(12)
        }${(w.symbol ?? "").padEnd(16)}hits ${w.hits}  len ${w.length}`
      ),
    ];
    session.output.print(
      rows.length === 0
        ? "No breakpoints or watchpoints."
        : `Id  Type    En  Address     What            Hits\n${rows.join("\n")}`,
    );
  },
  complete: (partial) => ["breakpoints"].filter((v) => v.startsWith(partial)),
});

registerCommand(
  runCommand(
    "step",
    ".step [N]",
    "execute N instructions (default 1)",
    (s, a) => s.vm.debug.step(count(a, 1)),
    (a) => `await vm.debug.step(${count(a, 1)});`,
  ),
);
registerCommand(
  runCommand(
    "next",
    ".next",
    "step over calls and rep instructions",
    (s) => s.vm.debug.next(),
    () => "await vm.debug.next();",
  ),
);
registerCommand(
  runCommand(
    "finish",
    ".finish",
    "run until the current function returns",
    (s) => s.vm.debug.finish(),
    () => "await vm.debug.finish();",
  ),
);
registerCommand(
  runCommand(
    "cont",
    ".cont [SECONDS]",
    "continue (Ctrl-C pauses); optional time limit",
    (s, a) => s.vm.run(a.trim() === "" ? {} : { timeout: Number(a) * 1000 }),
    (a) => `await vm.run(${a.trim() === "" ? "" : `{ timeout: ${Number(a) * 1000} }`});`,
  ),
);
registerCommand(
  runCommand(
    "until",
    ".until ADDR|SYMBOL",
    "run until a location is reached",
    (s, a) => s.vm.debug.until(toBreakLocation(s, a)),
    (a) => `await vm.debug.until(${quote(a.trim())});`,
  ),
);

registerCommand({
  name: "record",
  usage: ".record [on|off|status]",
  help: "record the guest so it can run backwards (.rstep, .rnext, .rcont, .rfinish); status: what is recorded",
  run(args, session) {
    const text = args.trim();
    const debug = session.vm.debug;
    if (text === "on" || text === "") {
      if (debug.recording === undefined) debug.record();
    } else if (text === "off") {
      debug.stopRecording();
      session.output.print("recording stopped");
      return;
    } else if (text !== "status") {
      throw new CommandError(`Invalid argument ${quote(text)}: expected on, off or status`);
    }
    session.output.print(formatRecording(debug.recording).trimEnd());
  },
  script: (a) => a.trim() === "off" ? "vm.debug.stopRecording();" : "vm.debug.record();",
});
registerCommand(
  runCommand(
    "rstep",
    ".rstep [N]",
    "run backwards N instructions (default 1): registers and memory as they were",
    (s, a) => s.vm.debug.reverseStep(count(a, 1)),
    (a) => `await vm.debug.reverseStep(${count(a, 1)});`,
  ),
);
registerCommand(
  runCommand(
    "rnext",
    ".rnext",
    "run backwards one instruction, over calls",
    (s) => s.vm.debug.reverseNext(),
    () => "await vm.debug.reverseNext();",
  ),
);
registerCommand(
  runCommand(
    "rcont",
    ".rcont",
    "run backwards to the last breakpoint hit or write to a watched location (or the start of the recording)",
    (s) => s.vm.debug.reverseContinue(),
    () => "await vm.debug.reverseContinue();",
  ),
);
registerCommand(
  runCommand(
    "rfinish",
    ".rfinish",
    "run backwards to the call of the current function",
    (s) => s.vm.debug.reverseFinish(),
    () => "await vm.debug.reverseFinish();",
  ),
);

registerCommand({
  name: "pause",
  usage: ".pause",
  help: "pause a running guest (Ctrl-C does the same)",
  async run(_args, session) {
    const stop = await session.vm.pause();
    if (stop === undefined) session.output.print("the guest is not running");
  },
});

registerCommand({
  name: "bt",
  usage: ".bt",
  help: "backtrace by frame pointers, with symbols",
  run(_args, session) {
    const frames = session.vm.debug.backtrace();
    session.output.print(
      frames.map((f) => `#${f.index}  ${hex(f.pc)}${f.symbol === undefined ? "" : ` in ${f.symbol}`}`).join("\n"),
    );
  },
});

registerCommand({
  name: "sym",
  usage: ".sym NAME|EXPR",
  help: "symbol to address, or address (an expression: $rip, *$rsp) to symbol+offset",
  run(args, session) {
    const text = args.trim();
    const debug = session.vm.debug;
    if (text === "") throw new CommandError("Missing NAME or ADDR");
    if (/^[A-Za-z_.][\w.@]*$/.test(text)) {
      session.output.print(`${text} = ${hex(toLocation(session, text))}`);
      return;
    }
    const address = toLocation(session, text);
    const symbol = debug.symbolize(address) ?? "(no symbol)";
    // A number prints as before (`0x100018 = bump+4`); an expression shows its value too.
    session.output.print(
      /^(0x[0-9a-f]+|\d+)$/i.test(text) ? `${text} = ${symbol}` : `${text} = ${hex(address)} <${symbol}>`,
    );
  },
  complete: symbolCompletions,
});

registerCommand({
  name: "pt",
  usage: ".pt ADDR",
  help: "walk the page tables for a virtual address, every level",
  run(args, session) {
    session.output.print(formatTranslation(session.vm.debug.translate(toLocation(session, args))));
  },
  complete: symbolCompletions,
});

registerCommand({
  name: "context",
  usage: ".context [on|off|N]",
  help: "show the context view now, turn it on/off at stops, or set instructions shown",
  run(args, session) {
    const text = args.trim();
    if (text === "on" || text === "off") session.showContext = text === "on";
    else if (/^\d+$/.test(text)) session.context.instructions = Number(text);
    else if (text !== "") throw new CommandError(`Invalid argument ${quote(text)}: expected on, off or a number`);
    else session.showContextNow();
  },
});

registerCommand({
  name: "console",
  usage: ".console",
  help: "attach the terminal to the guest's serial console and run it; Ctrl-] returns",
  async run(_args, session) {
    const attach = consoleAttacher;
    if (attach === undefined) throw new CommandError("The console needs an interactive terminal");
    await attach(session);
  },
});

/** Set by the REPL loop: runs the guest with the terminal attached until Ctrl-]. */
export let consoleAttacher: ((session: Session) => Promise<void>) | undefined;
/** Installs the console attacher (the REPL loop owns the terminal). */
export function setConsoleAttacher(attach: (session: Session) => Promise<void>): void {
  consoleAttacher = attach;
}

registerCommand({
  name: "gdb",
  usage: ".gdb [PORT] [--allow-js]",
  help: "serve gdb's remote protocol for this VM on 127.0.0.1:PORT (default 1234); gdb's monitor runs dot commands " +
    "(monitor js only with --allow-js: it runs host code for anyone who can connect)",
  async run(args, session) {
    const words = args.trim().split(/\s+/).filter((word) => word !== "");
    const allowJs = words.includes("--allow-js");
    const rest = words.filter((word) => word !== "--allow-js");
    if (rest.length > 1) throw new CommandError(`Unexpected argument ${quote(rest[1]!)}`);
    const port = rest.length === 0 ? 1234 : Number(rest[0]);
    if (!/^\d+$/.test(rest[0] ?? "0") || port > 65535) {
      throw new CommandError(`Invalid port ${quote(rest[0]!)}: expected 0-65535 (0 picks a free one)`);
    }
    const { monitorWithDotCommands } = await import("./monitor.ts");
    // gdb's `monitor CMD` runs the dot commands (same syntax), with their output captured.
    const monitor = monitorWithDotCommands(session);
    // Through vm.gdb, so scripts find it as vm.gdb.server (its port when 0 was asked for).
    const server = session.vm.gdb.listen({ port, monitor, allowJs });
    session.output.print(`gdb: target remote ${server.address} (monitor help lists the commands)`);
  },
});

registerCommand({
  name: "save",
  usage: ".save FILE",
  help: "write this session as a TypeScript script replayable with ./hvsh run FILE",
  async run(args, session) {
    const file = args.trim();
    if (file === "") throw new CommandError("Missing FILE");
    const header = [
      `// hvsh session saved ${new Date().toISOString()}; replay with: ./hvsh run ${file}`,
      `// Runs through the REPL's evaluator: Vm, vm, cpu, mem and debug are in scope.`,
    ];
    await Deno.writeTextFile(file, [...header, ...session.transcript, ""].join("\n"));
    session.output.print(`saved ${session.transcript.length} lines to ${file}`);
  },
  complete: pathCompletions,
});

registerCommand({
  name: "load-script",
  usage: ".load-script FILE",
  help: "run a TypeScript file through this session's evaluator",
  async run(args, session) {
    const file = args.trim();
    if (file === "") throw new CommandError("Missing FILE");
    const source = await Deno.readTextFile(file).catch((error) => {
      throw new Error(`Cannot read script ${file}: ${(error as Error).message}`);
    });
    const value = await session.evaluate(source);
    session.transcript.push(`// .load-script ${file}`, source, ";");
    if (value !== undefined) session.output.print(session.format(value));
  },
  complete: pathCompletions,
});

registerCommand({
  name: "exit",
  usage: ".exit",
  help: "close every VM and leave",
  run() {
    throw new ExitRequest();
  },
});

/** Thrown by `.exit`. */
export class ExitRequest extends Error {
  constructor() {
    super("exit");
    this.name = "ExitRequest";
  }
}

/** Runs one dot-command line (without the leading dot). Usage mistakes print the usage. */
export async function runDotCommand(line: string, session: Session): Promise<void> {
  const match = /^([a-z-]+)(.*)$/s.exec(line);
  const name = match?.[1] ?? "";
  // `.x/4xg addr`: the format sticks to the name.
  const command = registry.get(name);
  if (command === undefined) {
    const close = [...registry.keys()].filter((n) => n.startsWith(name.slice(0, 2)));
    throw new CommandError(
      `Unknown command .${name}${
        close.length > 0 ? ` (did you mean ${close.map((n) => "." + n).join(", ")}?)` : ""
      }; .help lists them`,
    );
  }
  const args = match![2]!;
  try {
    await command.run(args, session);
  } catch (error) {
    if (error instanceof CommandError) throw new CommandError(`${error.message}\nusage: ${command.usage}`);
    throw error;
  }
  const script = command.script?.(args);
  if (script !== undefined) session.transcript.push(script);
}

/** Completion for a dot-command line. */
export function completeDotCommand(line: string, session: Session): [string[], string] {
  const match = /^\.([a-z-]*)(?:\/\S*)?(\s+(.*))?$/s.exec(line);
  if (match === null) return [[], line];
  if (match[2] === undefined) {
    const hits = [...registry.keys()].filter((n) => n.startsWith(match[1]!)).map((n) => `.${n}`);
    return [hits, line];
  }
  const command = registry.get(match[1]!);
  const argText = match[3] ?? "";
  const lastWord = argText.split(/\s+/).at(-1) ?? "";
  const hits = command?.complete?.(lastWord, session) ?? [];
  return [hits, lastWord];
}
