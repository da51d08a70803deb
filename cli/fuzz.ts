/**
 * `hvsh fuzz`: runs hvsh's fuzz targets (generated images, hostile guests,
 * gdb packets, ...) for a bounded time with a seed, and reports how many
 * cases ran and what broke. CI runs the same targets briefly with fixed
 * seeds (tests/fuzz_test.ts).
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { FuzzTarget } from "../tests/fuzz/_target.ts";

/** The usage text of `hvsh fuzz`. */
export const FUZZ_USAGE = `usage: hvsh fuzz [--minutes N] [--seed S] [--only TARGET,...] [--help]

Runs each fuzz target in turn for its share of --minutes (default 1) with seed S
(default: from the clock, printed so a run can be replayed) and prints, per
target, how many cases ran and one line per case that broke a rule. Exit status:
0 when nothing broke, 1 when a case did, 2 on a usage error.`;

/** The folder of fuzz targets: every `tests/fuzz/*.ts` not starting with `_` exports one (its export name ends in "Target"). */
const TARGET_FOLDER = new URL("../tests/fuzz/", import.meta.url);

/** Loads every fuzz target in tests/fuzz/, sorted by name. */
export async function loadFuzzTargets(): Promise<FuzzTarget[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(TARGET_FOLDER)) {
    if (entry.isFile && entry.name.endsWith(".ts") && !entry.name.startsWith("_") && !entry.name.endsWith("_test.ts")) {
      files.push(entry.name);
    }
  }
  const targets: FuzzTarget[] = [];
  for (const file of files.sort()) {
    const exports = await import(new URL(file, TARGET_FOLDER).href) as Record<string, unknown>;
    for (const [name, value] of Object.entries(exports)) {
      if (name.endsWith("Target") && typeof value === "object" && value !== null && "run" in value) {
        targets.push(value as FuzzTarget);
      }
    }
  }
  return targets.sort((a, b) => a.name.localeCompare(b.name));
}

/** Runs `hvsh fuzz ARGS` and returns the exit status. */
export async function fuzzCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        minutes: { type: "string", default: "1" },
        seed: { type: "string" },
        only: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    console.error(`hvsh fuzz: ${(error as Error).message}\n${FUZZ_USAGE}`);
    return 2;
  }
  const targets = await loadFuzzTargets();
  if (values.help) {
    console.log(
      FUZZ_USAGE + "\n\ntargets:\n" + targets.map((t) => `  ${t.name.padEnd(12)} ${t.description}`).join("\n"),
    );
    return 0;
  }
  const minutes = Number(values.minutes);
  if (!(minutes > 0)) {
    console.error(
      `hvsh fuzz: Invalid --minutes ${JSON.stringify(values.minutes)}: expected a number > 0\n${FUZZ_USAGE}`,
    );
    return 2;
  }
  const seed = values.seed === undefined ? Date.now() % 0x1_0000_0000 : Number(values.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    console.error(`hvsh fuzz: Invalid --seed ${JSON.stringify(values.seed)}: expected an integer >= 0\n${FUZZ_USAGE}`);
    return 2;
  }
  let chosen = targets;
  if (values.only !== undefined) {
    const names = values.only.split(",").filter((name) => name !== "");
    const unknown = names.filter((name) => !targets.some((t) => t.name === name));
    if (unknown.length > 0 || names.length === 0) {
      console.error(
        `hvsh fuzz: Unknown target ${JSON.stringify(unknown.join(","))} in --only (targets: ${
          targets.map((t) => t.name).join(", ")
        })`,
      );
      return 2;
    }
    chosen = targets.filter((t) => names.includes(t.name));
  }
  const { SeededRandom } = await import("../tests/fuzz/_random.ts");
  console.log(`hvsh fuzz: seed ${seed}, ${minutes} minute(s), targets ${chosen.map((t) => t.name).join(", ")}`);
  const shareMs = (minutes * 60_000) / chosen.length;
  let broken = 0;
  for (const target of chosen) {
    const started = performance.now();
    const report = await target.run(new SeededRandom(seed), {
      maxCases: Number.MAX_SAFE_INTEGER,
      deadline: started + shareMs,
    });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.log(`${target.name}: ${report.cases} cases in ${seconds} s, ${report.failures.length} failed`);
    for (const failure of report.failures) console.log(`  ${failure}`);
    broken += report.failures.length;
  }
  return broken === 0 ? 0 : 1;
}
