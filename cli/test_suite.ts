/**
 * `hvsh test-suite FILE [--jobs N] [--log-dir DIR]`: runs a
 * kvm-unit-tests-style table of kernels (see kit/suite.ts). FILE is JSON (an
 * array of cases, or `{ "cases": [...] }`) or a TypeScript/JavaScript module
 * whose default export is the array; kernel paths are relative to FILE's
 * folder.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { runSuite, type SuiteCase } from "../kit/suite.ts";

/** The usage text of `hvsh test-suite`. */
export const TEST_SUITE_USAGE = `usage: hvsh test-suite FILE [--jobs N] [--log-dir DIR]

Runs each case of FILE as "hvsh boot" (N at a time, default: the CPU count), prints
PASS, FAIL or SKIP per case and a summary. A case passes when its exit status is its
"expect" (default 1: the guest wrote 0 to port 0xf4, as kvm-unit-tests); status 77
is a skip. FILE: JSON, an array of {"name", "kernel", "append", "expect", "timeout" (ms),
"memory", "cpus", "args"} (or {"cases": [...]}), or a .ts/.js module exporting it as
default. Exit status: 0 when no case failed, 1 when one did, 2 on a usage or file error.`;

async function loadCases(file: string): Promise<SuiteCase[]> {
  let table: unknown;
  if (/\.(ts|js|mjs)$/.test(file)) {
    table = (await import(pathToFileURL(file).href)).default;
  } else {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (error) {
      throw new Error(`cannot read ${file}: ${(error as Error).message}`);
    }
    try {
      table = JSON.parse(text);
    } catch (error) {
      throw new SyntaxError(`cannot parse ${file} as JSON: ${(error as Error).message}`);
    }
  }
  const cases = Array.isArray(table) ? table : (table as { cases?: unknown })?.cases;
  if (!Array.isArray(cases)) throw new TypeError(`${file} holds no array of cases (or { "cases": [...] })`);
  return cases as SuiteCase[];
}

/** Runs `hvsh test-suite ARGS`; returns the exit status. */
export async function testSuiteCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { jobs: { type: "string", short: "j" }, "log-dir": { type: "string" }, help: { type: "boolean" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    console.error(`hvsh test-suite: ${(error as Error).message}\n${TEST_SUITE_USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(TEST_SUITE_USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error(`hvsh test-suite: expected one FILE, got ${JSON.stringify(positionals)}\n${TEST_SUITE_USAGE}`);
    return 2;
  }
  const jobs = values.jobs === undefined ? undefined : Number(values.jobs);
  if (jobs !== undefined && !(Number.isInteger(jobs) && jobs >= 1)) {
    console.error(`hvsh test-suite: invalid --jobs ${JSON.stringify(values.jobs)}: expected an integer >= 1`);
    return 2;
  }
  const file = resolve(positionals[0]!);
  try {
    const cases = await loadCases(file);
    const summary = await runSuite(cases, {
      baseDir: dirname(file),
      ...(jobs === undefined ? {} : { jobs }),
      ...(values["log-dir"] === undefined ? {} : { logDir: resolve(values["log-dir"]) }),
    });
    return summary.ok ? 0 : 1;
  } catch (error) {
    console.error(`hvsh test-suite: ${(error as Error).message}`);
    return 2;
  }
}
