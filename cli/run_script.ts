/**
 * `hvsh run [--no-check] SCRIPT.ts`: runs a provisioning script.
 *
 * A script with `import` or `export` statements is a module (it imports the
 * API from `mod.ts`): it is type-checked first, as `deno run --check` does
 * (`--no-check` skips that), then imported; Deno's stack traces name its
 * file and line. Any other script, such as one written by the REPL's
 * `.save`, goes through the REPL's evaluator with `Vm`, `vm`, `cpu`, `mem`
 * and `debug` in scope, exactly as typed lines do: its types are stripped,
 * not checked (it relies on the REPL's scope), and an error names the file
 * and the line of the top-level statement that failed.
 *
 * @module
 */

import { toFileUrl } from "./_paths.ts";

/** The usage text of `hvsh run`. */
export const RUN_USAGE = `usage: hvsh run [--no-check] SCRIPT.ts [ARGS]

A script with import/export lines is type-checked (like deno run --check; --no-check
skips it) and run as a module; any other script (what the REPL's .save writes) runs
through the REPL's evaluator with vm, cpu, mem and debug in scope, without a type check.
Exit status: 0, 1 when the script fails or does not type-check, 2 when it cannot be read.`;

/** Type-checks a module script with this Deno; prints the diagnostics (with file and line) and returns false on errors. */
async function typeCheck(path: string): Promise<boolean> {
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--quiet", path],
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  return result.success;
}

/** Runs `hvsh run ARGS` (flags, then the script); returns the process exit status. */
export async function runCommand(args: string[]): Promise<number> {
  let check = true;
  let rest = args;
  while (rest[0]?.startsWith("-")) {
    const flag = rest[0];
    if (flag === "--no-check") check = false;
    else if (flag === "--check") check = true;
    else if (flag === "--help" || flag === "-h") {
      console.log(RUN_USAGE);
      return 0;
    } else {
      console.error(`hvsh run: unknown option ${flag}\n${RUN_USAGE}`);
      return 2;
    }
    rest = rest.slice(1);
  }
  const script = rest[0];
  if (script === undefined) {
    console.error(`hvsh run: missing SCRIPT.ts\n${RUN_USAGE}`);
    return 2;
  }
  return await runScriptFile(script, { check });
}

/** Runs a script file; returns the process exit status (1 when it throws or fails its type check, 2 when it cannot be read). */
export async function runScriptFile(path: string, options: { check?: boolean } = {}): Promise<number> {
  let source: string;
  try {
    source = await Deno.readTextFile(path);
  } catch (error) {
    console.error(`hvsh run: cannot read script ${path}: ${(error as Error).message}`);
    return 2;
  }
  if (/^\s*(import|export)\s/m.test(source)) {
    if ((options.check ?? true) && !(await typeCheck(path))) {
      console.error(`hvsh run: ${path} does not type-check (hvsh run --no-check runs it anyway)`);
      return 1;
    }
    try {
      await import(toFileUrl(path).href);
      return 0;
    } catch (error) {
      console.error(`hvsh run: ${path} failed: ${error instanceof Error ? error.stack ?? error.message : error}`);
      return 1;
    }
  }
  const { Session } = await import("../repl/session.ts");
  const session = new Session({
    print: (text) => console.log(text),
    console: (bytes) => Deno.stdout.writeSync(bytes),
  }, false);
  session.showContext = false;
  try {
    await session.evaluate(source, { file: path });
    return 0;
  } catch (error) {
    // A ScriptError's message starts with FILE:LINE:.
    console.error(`hvsh run: ${error instanceof Error ? error.message : error}`);
    return 1;
  } finally {
    await session.closeAll();
  }
}
