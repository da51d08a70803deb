/**
 * `hvsh run SCRIPT.ts`: runs a provisioning script. A script with `import`
 * statements runs as a module (it imports the API from `mod.ts`); any other
 * script, such as one written by the REPL's `.save`, goes through the REPL's
 * evaluator with `Vm`, `vm`, `cpu`, `mem` and `debug` in scope, exactly as
 * typed lines do.
 *
 * @module
 */

import { toFileUrl } from "./_paths.ts";

/** Runs a script file; returns the process exit status (1 when it throws, 2 when it cannot be read). */
export async function runScriptFile(path: string): Promise<number> {
  let source: string;
  try {
    source = await Deno.readTextFile(path);
  } catch (error) {
    console.error(`hvsh run: cannot read script ${path}: ${(error as Error).message}`);
    return 2;
  }
  if (/^\s*(import|export)\s/m.test(source)) {
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
    await session.evaluate(source);
    return 0;
  } catch (error) {
    console.error(`hvsh run: ${path} failed: ${error instanceof Error ? `${error.name}: ${error.message}` : error}`);
    return 1;
  } finally {
    await session.closeAll();
  }
}
