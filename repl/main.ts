/**
 * `hvsh` with no command: the interactive REPL. On a TTY it is a line editor
 * with completion, persistent history and colours; with stdin from a pipe or
 * file it reads lines in order and prints plain output, so sessions are
 * scriptable and testable.
 *
 * @module
 */

import * as readline from "node:readline";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { installScope, Session } from "./session.ts";
import { needsMoreInput } from "./evaluator.ts";
import { CommandError, completeDotCommand, ExitRequest, runDotCommand, setConsoleAttacher } from "./commands.ts";
import type { LoadOptions, Vm, VmOptions } from "../mod.ts";
import { attachConsole } from "./_console.ts";
import { installReverseSearch } from "./_reverse_search.ts";

const HISTORY_LIMIT = 1000;
/** The prompt while a statement continues on the next line (Node's REPL shows `... ` too). */
const CONTINUATION_PROMPT = "... ";
const historyFile = () => Deno.env.get("HVSH_HISTORY") ?? join(homedir(), ".hvsh_history");

function loadHistory(): string[] {
  try {
    return Deno.readTextFileSync(historyFile()).split("\n").filter((l) => l !== "").slice(-HISTORY_LIMIT);
  } catch {
    return [];
  }
}

function saveHistory(lines: readonly string[]): void {
  try {
    // History can hold secrets typed at the prompt: only its owner may read it (mode applies when creating).
    const path = historyFile();
    Deno.writeTextFileSync(path, lines.slice(-HISTORY_LIMIT).join("\n") + "\n", { mode: 0o600 });
    if (((Deno.statSync(path).mode ?? 0) & 0o077) !== 0) Deno.chmodSync(path, 0o600);
  } catch {
    // a read-only home is no reason to fail
  }
}

/** Runs one input line: a dot command or TypeScript. Errors print one message; the session goes on. */
export async function executeLine(line: string, session: Session): Promise<void> {
  const text = line.trim();
  if (text === "" || text.startsWith("//")) return;
  try {
    if (text.startsWith(".")) {
      await runDotCommand(text.slice(1), session);
    } else {
      const value = await session.evaluate(text);
      // A newline before the `;` keeps a trailing `// comment` from swallowing it.
      session.transcript.push(text.endsWith(";") ? text : `${text}\n;`);
      if (value !== undefined) session.output.print(session.format(value));
    }
  } catch (error) {
    if (error instanceof ExitRequest) throw error;
    const message = error instanceof CommandError
      ? error.message
      : error instanceof Error
      ? `${error.name}: ${error.message}`
      : `Uncaught ${String(error)}`;
    session.output.print(session.style.red(message));
  }
}

/**
 * The demo guest's image, checked into the repository (built from
 * tests/guests/demo.c by scripts/build_demo.ts), so opening the REPL needs
 * no C toolchain and runs no compiler.
 */
async function demoKernel(): Promise<string> {
  const demo = fileURLToPath(new URL("./demo/demo.elf", import.meta.url));
  try {
    await Deno.stat(demo);
  } catch {
    throw new Error(`The demo guest image ${demo} is missing: rebuild it with \`deno task demo\` (needs gcc)`);
  }
  return demo;
}

/**
 * What the REPL opens on: the demo VM, no VM, or a VM the command line made
 * (`hvsh --kernel FILE [boot options]`, parsed by the CLI as `hvsh boot`
 * parses them) with what `.save` must record to make it again.
 */
export type ReplStart =
  | "demo"
  | "empty"
  | { vm: Vm; kernel: string; createOptions: VmOptions; load: LoadOptions; initrd: string | undefined };

/** Runs the REPL on `start`; returns the exit status. */
export async function replCommand(start: ReplStart): Promise<number> {
  const interactive = Deno.stdin.isTerminal();
  const colors = Deno.stdout.isTerminal() && Deno.env.get("NO_COLOR") === undefined;
  // Assigned once the VM is ready; `print` clears the prompt line only after that.
  // deno-lint-ignore prefer-const
  let rl: readline.Interface | undefined;
  // Output that arrives while the prompt waits (a stop or guest output after gdb or a script resumed the
  // guest) must not break the line being typed: clear it, print, then redraw the prompt and the input.
  let busy = false;
  let promptHidden = false;
  const hidePrompt = (): boolean => {
    const atPrompt = interactive && rl !== undefined && !busy;
    if (atPrompt && !promptHidden) {
      readline.clearLine(process.stdout, 0);
      readline.cursorTo(process.stdout, 0);
      promptHidden = true;
    }
    return atPrompt;
  };
  const showPrompt = () => {
    promptHidden = false;
    rl!.prompt(true);
  };
  // Guest output may stop mid-line: hvsh's own next line then starts on a fresh one instead of erasing it.
  let guestMidLine = false;
  const print = (text: string) => {
    const atPrompt = hidePrompt();
    if (guestMidLine) {
      Deno.stdout.writeSync(new Uint8Array([0x0a]));
      guestMidLine = false;
    }
    console.log(text);
    if (atPrompt) showPrompt();
  };
  const writeConsole = (bytes: Uint8Array) => {
    if (bytes.length === 0) return;
    const atPrompt = hidePrompt();
    Deno.stdout.writeSync(bytes);
    guestMidLine = bytes[bytes.length - 1] !== 0x0a;
    if (atPrompt && !guestMidLine) showPrompt();
  };
  const session = new Session({
    print,
    console: (bytes) => writeConsole(bytes),
  }, colors);

  try {
    if (start === "empty") {
      // no VM
    } else if (start === "demo") {
      const kernel = await demoKernel();
      await session.createVm({ options: { memory: "64M" }, kernel });
      session.transcript.push(`vm = await Vm.create({ memory: "64M" });`, `await vm.load(${JSON.stringify(kernel)});`);
    } else {
      const { vm, kernel, createOptions, load, initrd } = start;
      session.adopt(vm, { options: createOptions, kernel, load });
      const modules = initrd === undefined
        ? ""
        : `, modules: [{ data: await Deno.readFile(${JSON.stringify(initrd)}), cmdline: ${JSON.stringify(initrd)} }]`;
      session.transcript.push(
        `vm = await Vm.create(${JSON.stringify(createOptions)});`,
        `await vm.load(${JSON.stringify(kernel)}, { ...${JSON.stringify(load)}${modules} });`,
      );
    }
  } catch (error) {
    console.error(`hvsh: ${(error as Error).message}`);
    return 2;
  }

  if (interactive) {
    const vm = session.maybeVm;
    print(session.style.bold("hvsh") + " — a hypervisor shell. .help lists commands; TypeScript works too.");
    if (vm !== undefined) {
      print(
        `${session.currentName}: ${vm.image?.format ?? "no"} image, ${
          vm.memory.ramSize >> 20
        } MiB, stopped at entry. Try .regs, .dis, .break tick, .cont, .step`,
      );
    }
  }

  installScope(session); // so completion sees vm, cpu, mem before the first line runs
  const prompt = interactive ? (colors ? "\x1b[36mhvsh>\x1b[0m " : "hvsh> ") : "";
  /** Lines of a statement still open (multi-line input). */
  const continued: string[] = [];
  const history = interactive ? loadHistory() : [];
  rl = readline.createInterface({
    input: process.stdin,
    output: process.stdout,
    terminal: interactive,
    historySize: HISTORY_LIMIT,
    history: [...history].reverse(),
    prompt,
    completer: (line: string): [string[], string] => {
      if (line.trimStart().startsWith(".")) return completeDotCommand(line.trimStart(), session);
      return completeJs(line);
    },
  } as readline.ReadLineOptions);

  if (interactive) installReverseSearch(rl, process.stdout);

  // A SIGINT reaches hvsh only when the terminal is not raw (readline turns Ctrl-C into its own event):
  // it pauses the guest instead of ending hvsh and every VM with it.
  const onSignal = () => void session.maybeVm?.pause();
  if (interactive) Deno.addSignalListener("SIGINT", onSignal);

  let lastInterrupt = 0;
  rl.on("SIGINT", () => {
    const vm = session.maybeVm;
    if (vm?.running) {
      void vm.pause();
      return;
    }
    if (continued.length > 0) {
      // Ctrl-C drops an unfinished multi-line statement, as in Node's REPL.
      continued.length = 0;
      rl!.setPrompt(prompt);
      rl!.write("", { ctrl: true, name: "u" });
      process.stdout.write("\n");
      rl!.prompt();
      return;
    }
    const now = Date.now();
    if ((rl as unknown as { line: string }).line === "" && now - lastInterrupt < 2000) {
      rl!.close();
      return;
    }
    lastInterrupt = now;
    print("(To exit, press Ctrl-C again or type .exit)");
    rl!.write("", { ctrl: true, name: "u" });
    rl!.prompt();
  });

  setConsoleAttacher(async (s) => {
    if (!interactive) throw new CommandError("The console needs an interactive terminal");
    await attachConsole(s.vm, print);
  });

  const entered: string[] = [...history];
  let status = 0;
  try {
    if (interactive) rl.prompt();
    for await (const line of rl) {
      if (interactive && line.trim() !== "") {
        entered.push(line);
        saveHistory(entered); // at once: a crash or a kill must not lose the session's history
      }
      // An unfinished statement (an open brace, a template) waits for more lines, as in Node's REPL.
      const source = continued.length === 0 ? line : [...continued, line].join("\n");
      if (!source.trimStart().startsWith(".") && needsMoreInput(source)) {
        continued.push(line);
        rl.setPrompt(interactive ? CONTINUATION_PROMPT : "");
        if (interactive) rl.prompt();
        continue;
      }
      continued.length = 0;
      rl.setPrompt(prompt);
      busy = true;
      try {
        await executeLine(source, session);
      } finally {
        busy = false;
        promptHidden = false;
      }
      if (interactive) rl.prompt();
    }
    // Input ended inside a statement: evaluate it, so the error says what was missing.
    if (continued.length > 0) await executeLine(continued.join("\n"), session);
  } catch (error) {
    if (!(error instanceof ExitRequest)) {
      console.error(`hvsh: ${(error as Error).message}`);
      status = 1;
    }
  } finally {
    rl.close();
    if (interactive) {
      saveHistory(entered);
      Deno.removeSignalListener("SIGINT", onSignal);
    }
    await session.closeAll();
  }
  return status;
}

function completeJs(line: string): [string[], string] {
  const match = /([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\.?([A-Za-z_$][\w$]*)?$/.exec(line);
  if (match === null) return [[], line];
  const full = match[0];
  const dot = full.lastIndexOf(".");
  if (dot < 0) {
    const names = Object.getOwnPropertyNames(globalThis).filter((n) => n.startsWith(full));
    return [names.sort(), full];
  }
  const objectPath = full.slice(0, dot);
  const prefix = full.slice(dot + 1);
  let target: unknown = globalThis;
  for (const part of objectPath.split(".")) {
    try {
      target = (target as Record<string, unknown>)?.[part];
    } catch {
      return [[], full];
    }
  }
  if (target === null || target === undefined) return [[], full];
  const names = new Set<string>();
  for (let o: object | null = Object(target); o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const name of Object.getOwnPropertyNames(o)) {
      if (!name.startsWith("#") && name !== "constructor") names.add(name);
    }
  }
  const hits = [...names].filter((n) => n.startsWith(prefix)).sort().map((n) => `${objectPath}.${n}`);
  return [hits, full];
}
