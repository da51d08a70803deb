/**
 * The REPL's dot commands: a registry of `{ name, usage, help, run }`
 * (like kvmtool's command table and cliffy's registry). Help is generated
 * from it; a bad argument prints the usage and the session goes on.
 *
 * @module
 */

import type { Session } from "./session.ts";
import type { StopEvent } from "../core/stop.ts";
import { examine, formatRegisters, formatSpecialRegisters, hex, hexdump } from "./format.ts";
import { formatTranslation } from "../core/debug/paging.ts";
import { REGISTER_NAMES, type RegisterName } from "../core/kvm/structs.ts";
import type { BreakCondition, WatchAccess } from "../core/debug/debugger.ts";
import { parseSize } from "../core/memory.ts";
import { parseSystemMap } from "../core/debug/symbols.ts";

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

function symbolCompletions(partial: string, session: Session): string[] {
  const vm = session.maybeVm;
  return vm === undefined ? [] : vm.debug.symbols.complete(partial).slice(0, 200);
}

function toLocation(session: Session, text: string): bigint {
  if (text === "" || text === undefined) throw new CommandError("Missing an address or symbol");
  const trimmed = text.trim();
  if (/^\$[a-z0-9]+$/i.test(trimmed)) {
    const name = trimmed.slice(1) as RegisterName;
    if (!(REGISTER_NAMES as readonly string[]).includes(name)) throw new CommandError(`Unknown register ${trimmed}`);
    return session.vm.cpu(0).regs[name];
  }
  return session.vm.debug.resolve(trimmed);
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
  const match = /^(\S+)(?:\s+if\s+(.+))?$/.exec(args.trim());
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
      const bp = session.vm.debug[kind](toLocation(session, location), options);
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

function parseRegisterAssignment(args: string): { name: RegisterName; value: bigint } | undefined {
  const match = /^(\w+)\s*=\s*(\S+)$/.exec(args.trim());
  if (match === null) return undefined;
  const name = match[1]! as RegisterName;
  if (!(REGISTER_NAMES as readonly string[]).includes(name)) throw new CommandError(`Unknown register ${match[1]}`);
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
  usage: ".regs [NAME[=VALUE]]",
  help: "show registers, one register, or set one",
  run(args, session) {
    const cpu = session.vm.cpu(0);
    const text = args.trim();
    if (text === "") {
      session.output.print(formatRegisters(cpu.regs, undefined, session.style));
      return;
    }
    const assignment = parseRegisterAssignment(text);
    if (assignment !== undefined) {
      cpu.setRegs({ [assignment.name]: assignment.value });
      session.output.print(`${assignment.name} = ${hex(cpu.regs[assignment.name])}`);
      return;
    }
    if (!(REGISTER_NAMES as readonly string[]).includes(text)) throw new CommandError(`Unknown register ${text}`);
    session.output.print(`${text} = ${hex(cpu.regs[text as RegisterName])}`);
  },
  complete: (partial) => REGISTER_NAMES.filter((n) => n.startsWith(partial)),
  script(args) {
    const assignment = parseRegisterAssignment(args);
    return assignment === undefined
      ? undefined
      : `cpu.setRegs({ ${assignment.name}: 0x${assignment.value.toString(16)}n });`;
  },
});

registerCommand({
  name: "sregs",
  usage: ".sregs",
  help: "segments, descriptor tables, control registers, EFER (decoded)",
  run(_args, session) {
    session.output.print(formatSpecialRegisters(session.vm.cpu(0).sregs));
  },
});

registerCommand({
  name: "x",
  usage: ".x/NFU ADDR",
  help: "examine memory like gdb's x (e.g. .x/4xg $rsp, .x/5i bump, .x/s 0x1000)",
  run(args, session) {
    const match = /^(\/\S*)?\s*(.*)$/.exec(args.trim())!;
    const debug = session.vm.debug;
    session.output.print(examine(
      match[1] ?? "",
      toLocation(session, match[2] ?? ""),
      (a, n) => debug.readVirtual(a, n),
      (a, n) => debug.disassemble(a, n),
      (a) => debug.symbolize(a),
    ));
  },
  complete: symbolCompletions,
});

registerCommand({
  name: "hexdump",
  usage: ".hexdump ADDR [LEN]",
  help: "hexdump virtual memory (default 64 bytes)",
  run(args, session) {
    const [where, length] = words(args);
    const address = toLocation(session, where ?? "");
    const n = length === undefined ? 64 : count(length, 64);
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
    const [where, n] = words(args);
    const debug = session.vm.debug;
    const location = where === undefined ? undefined : toLocation(session, where);
    session.output.print(debug.disassemble(location, n === undefined ? 10 : count(n, 10)));
  },
  complete: symbolCompletions,
});

registerCommand(breakCommand("break"));
registerCommand(breakCommand("hbreak"));

registerCommand({
  name: "watch",
  usage: ".watch ADDR|SYMBOL [LEN] [r|w|rw]",
  help: "watchpoint of any size and count (default 8 bytes, w)",
  run(args, session) {
    const [where, length, mode] = words(args);
    const access: WatchAccess = ({ r: "read", w: "write", rw: "access" } as Record<string, WatchAccess>)[mode ?? "w"] ??
      (() => {
        throw new CommandError(`Invalid access ${quote(mode!)}: expected r, w or rw`);
      })();
    const wp = session.vm.debug.watch(
      toLocation(session, where ?? ""),
      length === undefined ? 8 : Number(length),
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
    const [where, length, mode] = words(args);
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
    (s, a) => s.vm.debug.until(toLocation(s, a)),
    (a) => `await vm.debug.until(${quote(a.trim())});`,
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
  usage: ".sym NAME|ADDR",
  help: "symbol to address, or address to symbol+offset",
  run(args, session) {
    const text = args.trim();
    const debug = session.vm.debug;
    if (text === "") throw new CommandError("Missing NAME or ADDR");
    if (/^(0x[0-9a-f]+|\d+)$/i.test(text)) {
      session.output.print(`${text} = ${debug.symbolize(BigInt(text)) ?? "(no symbol)"}`);
    } else {
      session.output.print(`${text} = ${hex(debug.resolve(text))}`);
    }
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
  usage: ".gdb [PORT]",
  help: "serve gdb's remote protocol for this VM on 127.0.0.1:PORT (default 1234); gdb's monitor runs dot commands",
  async run(args, session) {
    const port = args.trim() === "" ? 1234 : count(args, 1234);
    const { listenGdb, defaultMonitorRegistry } = await import("../core/gdb/mod.ts");
    // gdb's `monitor CMD` runs the stub's own commands first, then any REPL dot command, with its output captured.
    const monitor = defaultMonitorRegistry();
    for (const command of registry.values()) {
      if (monitor.get(command.name) !== undefined || ["console", "exit", "gdb", "vm"].includes(command.name)) continue;
      monitor.register({
        name: command.name,
        help: `${command.usage.slice(1)}: ${command.help}`,
        run: (monitorArgs) => session.capture(() => runDotCommand(`${command.name} ${monitorArgs}`, session)),
      });
    }
    const server = listenGdb(session.vm, { port, monitor });
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
