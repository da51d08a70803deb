/**
 * gdb's `monitor` as the REPL's dot commands: every dot command that makes
 * sense without a terminal runs as a monitor command with the same syntax
 * (`monitor dis tick 4`, `monitor x/4xg $rsp`, `monitor pt $rip`,
 * `monitor tele $rsp`). Used by the REPL's `.gdb` and by `hvsh boot --gdb`.
 *
 * Left out: commands that run or stop the guest (`.step`, `.next`,
 * `.finish`, `.cont`, `.until`, `.pause`, and backwards `.rstep`, `.rnext`,
 * `.rcont`, `.rfinish`: gdb's own `stepi`, `next`, `finish`, `continue`
 * and their `reverse-` forms keep gdb's view in step), and commands that need the
 * REPL's terminal or change which VM is debugged (`.console`, `.exit`,
 * `.gdb`, `.vm`).
 *
 * @module
 */

import { defaultMonitorRegistry, MonitorRegistry, type Vm } from "../mod.ts";
import { commands, runDotCommand } from "./commands.ts";
import { Session } from "./session.ts";

/** Dot commands that are not monitor commands, with the reason in the module comment. */
export const NOT_MONITOR_COMMANDS: ReadonlySet<string> = new Set([
  "console",
  "exit",
  "gdb",
  "vm",
  "step",
  "next",
  "finish",
  "cont",
  "until",
  "pause",
  "rstep",
  "rnext",
  "rcont",
  "rfinish",
]);

/**
 * A monitor registry with the stub's own commands (`help`, `phys`, `js`,
 * `disas`) and the dot commands of `session`, whose output it captures. A
 * dot command replaces a built-in of the same name (`regs`, `pt`), so the
 * syntax is the REPL's.
 *
 * @example
 * ```ts ignore
 * const server = listenGdb(vm, { port: 1234, monitor: monitorWithDotCommands(session) });
 * // (gdb) monitor dis tick 4
 * ```
 */
export function monitorWithDotCommands(session: Session): MonitorRegistry {
  const builtins = defaultMonitorRegistry();
  const registry = new MonitorRegistry();
  const dotNames = [...commands().keys()].filter((name) => !NOT_MONITOR_COMMANDS.has(name) && name !== "help");
  for (const name of builtins.names()) {
    if (!dotNames.includes(name)) registry.register(builtins.get(name)!);
  }
  for (const name of dotNames) {
    const command = commands().get(name)!;
    registry.register({
      name,
      help: `${command.usage.slice(1)}: ${command.help}`,
      run: (args) => session.capture(() => runDotCommand(`${name}${args.startsWith("/") ? "" : " "}${args}`, session)),
    });
  }
  return registry;
}

/**
 * The monitor of `hvsh boot --gdb`: a REPL session of its own around `vm`,
 * printing nothing except what a monitor command returns to gdb.
 */
export function monitorForVm(vm: Vm): MonitorRegistry {
  const session = new Session({ print: () => {}, console: () => {} }, false);
  session.showContext = false;
  session.adopt(vm);
  return monitorWithDotCommands(session);
}
