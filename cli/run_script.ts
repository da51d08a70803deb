/**
 * `hvsh run SCRIPT.ts`: runs a provisioning script. The script imports the
 * scripting API from the repository's `mod.ts` (relative path or absolute).
 *
 * @module
 */

import { toFileUrl } from "./_paths.ts";

/** Imports and runs a script file; returns the process exit status (1 when it throws). */
export async function runScriptFile(path: string): Promise<number> {
  try {
    await Deno.stat(path);
  } catch {
    console.error(`hvsh run: cannot read script ${path}: no such file`);
    return 2;
  }
  try {
    await import(toFileUrl(path).href);
    return 0;
  } catch (error) {
    console.error(`hvsh run: ${path} failed: ${error instanceof Error ? error.stack ?? error.message : error}`);
    return 1;
  }
}
