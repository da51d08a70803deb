/**
 * kvm-unit-tests-style suites: a table of kernels, their arguments and the
 * exit status each should end with, run as `hvsh boot` processes in
 * parallel. Each case is one line (`PASS`, `FAIL` or `SKIP`), then a
 * summary. As in kvm-unit-tests (`x86/run`, `unittests.cfg`), a guest that
 * writes 0 to the debug-exit port ends with status 1 and passes, and status
 * 77 (a write of 38) means the test skipped itself.
 *
 * @module
 */

import { mkdir, writeFile } from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Exit status kvm-unit-tests reads as a pass: the guest wrote 0 to the debug-exit port. */
const PASS_STATUS = 1;
/** Exit status kvm-unit-tests reads as a skip. */
const SKIP_STATUS = 77;
/** `hvsh boot`'s status for a timeout and for a crash (see cli/boot.ts). */
const TIMEOUT_STATUS = 124;
const CRASH_STATUS = 4;
/** kvm-unit-tests' default timeout per test. */
const DEFAULT_TIMEOUT_MS = 90_000;

/** One row of a suite. */
export interface SuiteCase {
  /** The case's name (also its log file's). */
  name: string;
  /** The kernel image (relative paths are taken from {@link SuiteOptions.baseDir}). */
  kernel: string;
  /** The kernel command line (`--append`). */
  append?: string;
  /** The exit status that passes. Default 1 (the guest wrote 0 to port 0xf4). */
  expect?: number;
  /** Milliseconds before the case fails as timed out. Default 90 000. */
  timeout?: number;
  /** Guest RAM, e.g. "128M". Default hvsh boot's (64M). */
  memory?: string;
  /** vCPUs (kvm-unit-tests' `smp`). Default 1. */
  cpus?: number;
  /** Further `hvsh boot` arguments, e.g. `["--cpuid-hide", "x2apic"]`. */
  args?: string[];
}

/** Options of {@link runSuite}. */
export interface SuiteOptions {
  /** Cases run at once. Default: the number of CPUs. */
  jobs?: number;
  /** Folder relative kernel paths are resolved from. Default: the current folder. */
  baseDir?: string;
  /** Writes `<name>.log` (the command and the guest's output) for each case here. */
  logDir?: string;
  /** Where the lines go. Default `console.log`. */
  print?: (line: string) => void;
}

/** How a case ended. */
export type SuiteStatus = "PASS" | "FAIL" | "SKIP";

/** One case's result. */
export interface SuiteResult {
  name: string;
  status: SuiteStatus;
  /** The `hvsh boot` process's exit status. */
  exitStatus: number;
  /** Why it failed or skipped ("exit status 3, expected 1", "timed out after 90 s"…); empty for a pass. */
  detail: string;
  /** Wall time of the case in milliseconds. */
  ms: number;
  /** The guest's output (stdout) and hvsh's messages (stderr). */
  output: string;
}

/** What {@link runSuite} resolves with. */
export interface SuiteSummary {
  results: SuiteResult[];
  passed: number;
  failed: number;
  skipped: number;
  /** True when no case failed. */
  ok: boolean;
}

const MAIN_TS = fileURLToPath(new URL("../main.ts", import.meta.url));

function validate(cases: readonly SuiteCase[]): void {
  const names = new Set<string>();
  for (const [index, entry] of cases.entries()) {
    if (typeof entry?.name !== "string" || entry.name === "" || /[\/\0]/.test(entry.name)) {
      throw new TypeError(
        `Invalid suite case ${index}: name ${JSON.stringify(entry?.name)} (a non-empty name, no "/")`,
      );
    }
    if (names.has(entry.name)) throw new TypeError(`Invalid suite case ${index}: duplicate name ${entry.name}`);
    names.add(entry.name);
    if (typeof entry.kernel !== "string" || entry.kernel === "") {
      throw new TypeError(`Invalid suite case ${entry.name}: kernel ${JSON.stringify(entry.kernel)} (a path)`);
    }
    if (entry.timeout !== undefined && !(entry.timeout > 0)) {
      throw new RangeError(`Invalid suite case ${entry.name}: timeout ${entry.timeout} (ms > 0)`);
    }
  }
}

/** The line a case prints: `PASS name (0.12 s)`, `FAIL name (exit status 3, expected 1; 0.2 s)`. */
export function formatSuiteLine(result: SuiteResult): string {
  const seconds = `${(result.ms / 1000).toFixed(2)} s`;
  return `${result.status} ${result.name} (${result.detail === "" ? "" : `${result.detail}; `}${seconds})`;
}

function judge(entry: SuiteCase, exitStatus: number, output: string): { status: SuiteStatus; detail: string } {
  const expected = entry.expect ?? PASS_STATUS;
  if (exitStatus === expected) return { status: "PASS", detail: "" };
  if (exitStatus === SKIP_STATUS) return { status: "SKIP", detail: "exit status 77" };
  if (exitStatus === TIMEOUT_STATUS) {
    return { status: "FAIL", detail: `timed out after ${(entry.timeout ?? DEFAULT_TIMEOUT_MS) / 1000} s` };
  }
  const lastLine = output.trimEnd().split("\n").at(-1) ?? "";
  const why = exitStatus === CRASH_STATUS && lastLine !== "" ? `: ${lastLine}` : "";
  return { status: "FAIL", detail: `exit status ${exitStatus}, expected ${expected}${why}` };
}

async function runCase(entry: SuiteCase, options: SuiteOptions): Promise<SuiteResult> {
  const baseDir = options.baseDir ?? Deno.cwd();
  const kernel = isAbsolute(entry.kernel) ? entry.kernel : resolve(baseDir, entry.kernel);
  const timeout = entry.timeout ?? DEFAULT_TIMEOUT_MS;
  const args = ["run", "-q", "--allow-all", MAIN_TS, "boot", "--kernel", kernel, "--timeout", String(timeout / 1000)];
  if (entry.append !== undefined) args.push("--append", entry.append);
  if (entry.memory !== undefined) args.push("--mem", entry.memory);
  if (entry.cpus !== undefined) args.push("--cpus", String(entry.cpus));
  args.push(...(entry.args ?? []));
  const started = performance.now();
  const result = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: baseDir,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const ms = performance.now() - started;
  const output = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
  const { status, detail } = judge(entry, result.code, output);
  if (options.logDir !== undefined) {
    await writeFile(
      join(options.logDir, `${entry.name}.log`),
      `$ hvsh ${args.slice(4).join(" ")}\n${output}\n[${status}${detail === "" ? "" : `: ${detail}`}]\n`,
    );
  }
  return { name: entry.name, status, exitStatus: result.code, detail, ms, output };
}

/**
 * Runs every case as an `hvsh boot` process, `jobs` at a time, prints one
 * line per case as it ends and a summary, and resolves with the results
 * (in the table's order). Throws a TypeError for a malformed table.
 *
 * @example
 * ```ts ignore
 * const summary = await runSuite([
 *   { name: "smptest", kernel: "x86/smptest.flat", cpus: 2 },
 *   { name: "exit42", kernel: "exit42.elf", expect: 85 },
 * ], { jobs: 4, logDir: "logs" });
 * if (!summary.ok) Deno.exit(1);
 * ```
 */
export async function runSuite(cases: readonly SuiteCase[], options: SuiteOptions = {}): Promise<SuiteSummary> {
  validate(cases);
  const jobs = options.jobs ?? navigator.hardwareConcurrency;
  if (!Number.isInteger(jobs) || jobs < 1) throw new RangeError(`Invalid jobs ${jobs}: expected an integer >= 1`);
  const print = options.print ?? ((line: string) => console.log(line));
  if (options.logDir !== undefined) await mkdir(options.logDir, { recursive: true });
  const results: SuiteResult[] = new Array(cases.length);
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const index = next++;
      const result = await runCase(cases[index]!, options);
      results[index] = result;
      print(formatSuiteLine(result));
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, cases.length) }, worker));
  const count = (status: SuiteStatus) => results.filter((r) => r.status === status).length;
  const summary = {
    results,
    passed: count("PASS"),
    failed: count("FAIL"),
    skipped: count("SKIP"),
    ok: count("FAIL") === 0,
  };
  print(
    `SUMMARY: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped (${cases.length} cases)`,
  );
  return summary;
}
