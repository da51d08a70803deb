/**
 * `deno task bench`: hvsh's exit round trip against a minimal C VMM, the
 * debugger's single-step rate and breakpoint round trip against a minimal C
 * debugger (bench/kvm_debug_bench.c), and cold-start wall time against the C
 * VMM and QEMU.
 *
 * This host's KVM is nested and emulated (see shared DESIGN.md): absolute
 * figures say little and the two cores are noisy, so every figure is a ratio
 * to a C baseline measured in this same script, with C and hvsh runs
 * interleaved so that drifts in machine load hit both sides alike.
 *
 * Bars (the issues'): hvsh/C ≤ 1.05 µs per exit for port I/O and MMIO;
 * hvsh's single-step rate ≥ 0.9 of C's. The breakpoint round trip has no bar
 * (its ratio is printed). A miss is printed, never turned into a failing exit
 * status: this is a benchmark, not a test.
 *
 * Usage: `deno task bench [--n 20000] [--rounds 15] [--steps 20000]
 * [--hits 48] [--debug-rounds 9] [--cold-runs 5]`
 *
 * @module
 */

import { stat } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Vm } from "../core/vm.ts";
import type { StopEvent } from "../core/stop.ts";
import { readElfSymbols } from "../core/loader/elf.ts";
import { buildGuests } from "./build_guests.ts";

/** Repository root (the launcher, tests/ and bench/ are found from here). */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const C_SOURCE = join(ROOT, "bench", "kvm_exit_bench.c");
const C_BINARY = join(ROOT, "bench", "build", "kvm_exit_bench");
const C_DEBUG_SOURCE = join(ROOT, "bench", "kvm_debug_bench.c");
const C_DEBUG_BINARY = join(ROOT, "bench", "build", "kvm_debug_bench");
const LAUNCHER = join(ROOT, "hvsh");
/** The issue's bar for hvsh's per-exit cost relative to C. */
const RATIO_BAR = 1.05;
/** The issue's bar for hvsh's single-step rate relative to C's (steps/s, higher is better). */
const STEP_RATE_BAR = 0.9;
/** demo.elf prints one line every this many loop iterations (tests/guests/demo.c PRINT_EVERY). */
const DEMO_PRINT_EVERY = 16;
/** A stuck subprocess must not hang the bench. */
const SUBPROCESS_TIMEOUT_MS = 20_000;

/** One timed run of a bench guest. */
export interface ExitSample {
  /** KVM exits taken, the final debug exit included. */
  exits: number;
  /** Seconds spent in the run loop. */
  seconds: number;
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError("median of an empty list");
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** A file's modification time, or undefined when it does not exist. */
async function mtimeMs(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mtimeMs;
  } catch {
    return undefined;
  }
}

/** Runs a command to completion; throws with its stderr when it cannot start or exits with a status not allowed. */
async function runCommand(
  command: string,
  args: string[],
  okCodes: readonly number[] = [0],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(command, {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(SUBPROCESS_TIMEOUT_MS),
  }).output();
  const decoder = new TextDecoder();
  const result = { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
  if (!okCodes.includes(result.code)) {
    throw new Error(`${command} ${args.join(" ")} exited with ${result.code}: ${result.stderr.trim()}`);
  }
  return result;
}

/** Compiles one C baseline into bench/build/ unless the binary is newer than its source. */
async function buildC(sourcePath: string, binaryPath: string): Promise<string> {
  const source = await mtimeMs(sourcePath);
  if (source === undefined) throw new Error(`Missing ${sourcePath}`);
  const binary = await mtimeMs(binaryPath);
  if (binary !== undefined && binary >= source) return binaryPath;
  await Deno.mkdir(dirname(binaryPath), { recursive: true });
  await runCommand("gcc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", binaryPath, sourcePath]);
  return binaryPath;
}

/** Compiles the C baselines (exit bench, debugger bench); returns the exit bench's path. */
export async function buildCBench(): Promise<string> {
  await buildC(C_DEBUG_SOURCE, C_DEBUG_BINARY);
  return await buildC(C_SOURCE, C_BINARY);
}

/** One C run: a fresh process, but only its KVM_RUN loop is timed (by the program itself). */
async function runC(guest: string, n: number): Promise<ExitSample> {
  const { stdout } = await runCommand(C_BINARY, [guest, String(n)]);
  const sample = JSON.parse(stdout) as ExitSample;
  if (sample.exits !== n + 1) throw new Error(`C bench took ${sample.exits} exits, expected ${n + 1}`);
  return sample;
}

/** One hvsh run through the public API; times vm.run() (kick timer and event-loop yields included). */
async function runHvsh(guest: string, n: number): Promise<ExitSample> {
  const vm = await Vm.create({ memory: "64M" });
  try {
    await vm.load(guest);
    vm.cpu(0).setRegs({ rcx: n });
    const t0 = performance.now();
    const stop = await vm.run();
    const seconds = (performance.now() - t0) / 1000;
    if (stop.reason !== "exit") throw new Error(`hvsh bench stopped with ${stop.reason}, expected exit`);
    // The guest exits once per loop iteration plus once on the debug-exit port, like the C count.
    return { exits: n + 1, seconds };
  } finally {
    await vm.close();
  }
}

function usPerExit(sample: ExitSample): number {
  return (sample.seconds * 1e6) / sample.exits;
}

/** Per-exit medians for one guest, C and hvsh, from interleaved runs. */
export interface ExitResult {
  label: string;
  /** Median µs per exit of the C runs. */
  cUs: number;
  /** Median µs per exit of the hvsh runs. */
  hvshUs: number;
  /** Median of each round's hvsh/C: adjacent runs share the machine's load of the moment, so this drifts less. */
  pairedRatio: number;
}

/**
 * Measures one guest: a warm-up of each side (JIT, page cache, KVM module
 * caches), then `rounds` interleaved pairs whose order flips every round, so
 * neither side always runs right after the other.
 */
async function benchExits(label: string, guest: string, n: number, rounds: number): Promise<ExitResult> {
  await runC(guest, n);
  await runHvsh(guest, n);
  const c: number[] = [];
  const hvsh: number[] = [];
  for (let round = 0; round < rounds; round++) {
    if (round % 2 === 0) {
      c.push(usPerExit(await runC(guest, n)));
      hvsh.push(usPerExit(await runHvsh(guest, n)));
    } else {
      hvsh.push(usPerExit(await runHvsh(guest, n)));
      c.push(usPerExit(await runC(guest, n)));
    }
  }
  const pairedRatio = median(hvsh.map((us, round) => us / c[round]!));
  return { label, cUs: median(c), hvshUs: median(hvsh), pairedRatio };
}

// ---------------------------------------------------------------- debugger rows

/** The guests of the debugger rows and the symbol addresses both sides use (identity-mapped: virtual = physical). */
interface DebugGuests {
  /** spin.elf: prints a line, then `spin_here: jmp spin_here` forever (no I/O in the stepped region). */
  spin: string;
  spinHere: bigint;
  /** demo.elf: loops forever calling tick(), compute() and a ~4k-instruction delay(); a line every 16 ticks. */
  demo: string;
  tick: bigint;
}

/** Reads the symbols the debugger rows need from the guests' ELF files. */
async function debugGuests(spin: string, demo: string): Promise<DebugGuests> {
  const address = async (path: string, name: string): Promise<bigint> => {
    const symbol = readElfSymbols(await Deno.readFile(path), path).find((s) => s.name === name);
    if (symbol === undefined) throw new Error(`${path} has no symbol ${name}`);
    return BigInt(symbol.address);
  };
  return { spin, spinHere: await address(spin, "spin_here"), demo, tick: await address(demo, "tick") };
}

/** Runs the C debugger bench in one of its modes; returns its JSON report. */
async function runCDebug(args: string[]): Promise<Record<string, number>> {
  const { stdout } = await runCommand(C_DEBUG_BINARY, args);
  return JSON.parse(stdout) as Record<string, number>;
}

/** C: seconds for `n` single steps of spin.elf from `spin_here`. */
async function runCStep(g: DebugGuests, n: number): Promise<number> {
  const r = await runCDebug(["step", g.spin, `0x${g.spinHere.toString(16)}`, String(n)]);
  if (r.steps !== n) throw new Error(`C step bench took ${r.steps} steps, expected ${n}`);
  return r.seconds!;
}

/** hvsh: seconds for `await vm.debug.step(n)` from the same state (spin.elf loaded, rip at `spin_here`). */
async function runHvshStep(g: DebugGuests, n: number): Promise<number> {
  const vm = await Vm.create({ memory: "64M" });
  try {
    await vm.load(g.spin);
    vm.cpu(0).setRegs({ rip: g.spinHere });
    const t0 = performance.now();
    const stop = await vm.debug.step(n);
    const seconds = (performance.now() - t0) / 1000;
    if (stop.reason !== "step" || stop.address !== g.spinHere) {
      throw new Error(`hvsh step bench stopped with ${stop.reason} at 0x${stop.rip.toString(16)}, expected a step`);
    }
    return seconds;
  } finally {
    await vm.close();
  }
}

/** One breakpoint run: µs per hit + resume round trip, then µs per guest loop iteration with no breakpoint. */
interface BreakSample {
  hitUs: number;
  loopUs: number;
}

/**
 * C: `k` breakpoint hit + resume round trips at demo.elf's `tick` (the first
 * hit untimed), then, in the same VM with the breakpoint removed, `lines` of
 * the guest's serial lines (16 loop iterations each).
 */
async function runCBreak(g: DebugGuests, k: number, lines: number): Promise<BreakSample> {
  const r = await runCDebug(["break", g.demo, `0x${g.tick.toString(16)}`, String(k), String(lines)]);
  if (r.hits !== k || r.lines !== lines) throw new Error(`C break bench timed ${r.hits} hits and ${r.lines} lines`);
  return { hitUs: r.seconds! * 1e6 / k, loopUs: r.loopSeconds! * 1e6 / (lines * DEMO_PRINT_EVERY) };
}

/**
 * hvsh, the same two phases through the public API: `vm.debug.break("tick")`,
 * one untimed `vm.run()`, `k` timed ones (each a breakpoint stop); then the
 * breakpoint deleted, run to the end of the next serial line and time `lines`
 * more from the serial device's output observer.
 */
async function runHvshBreak(g: DebugGuests, k: number, lines: number): Promise<BreakSample> {
  const vm = await Vm.create({ memory: "64M" });
  try {
    await vm.load(g.demo);
    const bp = vm.debug.break("tick");
    const check = (stop: StopEvent) => {
      if (stop.reason !== "breakpoint" || stop.address !== g.tick) {
        throw new Error(`hvsh break bench stopped with ${stop.reason} at 0x${stop.rip.toString(16)}, expected tick`);
      }
    };
    check(await vm.run());
    const t0 = performance.now();
    for (let hit = 0; hit < k; hit++) check(await vm.run());
    const hitUs = (performance.now() - t0) * 1000 / k;

    vm.debug.delete(bp.id);
    let seen = 0;
    let t1 = 0;
    let t2 = 0;
    vm.serial.onData((bytes) => {
      for (const byte of bytes) {
        if (byte !== 0x0a) continue;
        seen++;
        if (seen === 1) t1 = performance.now();
        if (seen === 1 + lines) {
          t2 = performance.now();
          void vm.pause();
        }
      }
    });
    const stop = await vm.run({ timeout: SUBPROCESS_TIMEOUT_MS });
    if (seen < 1 + lines) throw new Error(`hvsh break bench stopped with ${stop.reason} after ${seen} lines`);
    return { hitUs, loopUs: (t2 - t1) * 1000 / (lines * DEMO_PRINT_EVERY) };
  } finally {
    await vm.close();
  }
}

/** Medians of the debugger rows (rates in steps/s, times in µs). */
export interface DebugResult {
  steps: number;
  hits: number;
  cStepRate: number;
  hvshStepRate: number;
  /** Median of each round's hvsh/C step rate. */
  stepPaired: number;
  cHitUs: number;
  hvshHitUs: number;
  /** Median of each round's hvsh/C µs per hit. */
  hitPaired: number;
  /** The guest loop's own time per iteration, no breakpoint (what each hit also includes). */
  cLoopUs: number;
  hvshLoopUs: number;
  /** Median of each run's µs per hit minus its own µs per loop iteration: what a hit adds to the guest's work. */
  cOverUs: number;
  hvshOverUs: number;
}

/**
 * The debugger rows: a warm-up of each side, then `rounds` interleaved
 * rounds whose order flips every round (as in {@link benchExits}).
 */
async function benchDebug(g: DebugGuests, steps: number, hits: number, rounds: number): Promise<DebugResult> {
  const lines = Math.max(1, Math.round(hits / DEMO_PRINT_EVERY));
  const c = { step: [] as number[], hit: [] as number[], loop: [] as number[] };
  const hvsh = { step: [] as number[], hit: [] as number[], loop: [] as number[] };
  const cRound = async () => {
    c.step.push(steps / await runCStep(g, steps));
    const { hitUs, loopUs } = await runCBreak(g, hits, lines);
    c.hit.push(hitUs);
    c.loop.push(loopUs);
  };
  const hvshRound = async () => {
    hvsh.step.push(steps / await runHvshStep(g, steps));
    const { hitUs, loopUs } = await runHvshBreak(g, hits, lines);
    hvsh.hit.push(hitUs);
    hvsh.loop.push(loopUs);
  };
  await runCStep(g, steps);
  await runHvshStep(g, steps);
  await runCBreak(g, hits, lines);
  await runHvshBreak(g, hits, lines);
  for (let round = 0; round < rounds; round++) {
    if (round % 2 === 0) {
      await cRound();
      await hvshRound();
    } else {
      await hvshRound();
      await cRound();
    }
  }
  return {
    steps,
    hits,
    cStepRate: median(c.step),
    hvshStepRate: median(hvsh.step),
    stepPaired: median(hvsh.step.map((rate, round) => rate / c.step[round]!)),
    cHitUs: median(c.hit),
    hvshHitUs: median(hvsh.hit),
    hitPaired: median(hvsh.hit.map((us, round) => us / c.hit[round]!)),
    cLoopUs: median(c.loop),
    hvshLoopUs: median(hvsh.loop),
    cOverUs: median(c.hit.map((us, round) => us - c.loop[round]!)),
    hvshOverUs: median(hvsh.hit.map((us, round) => us - hvsh.loop[round]!)),
  };
}

/** The debugger table; PASS/MISS judges the step-rate ratio of the medians. */
function formatDebugTable(r: DebugResult, rounds: number): string {
  const row = (label: string, cValue: number, hvshValue: number, digits: number, paired?: number) =>
    [
      label.padEnd(34),
      cValue.toFixed(digits).padStart(10),
      hvshValue.toFixed(digits).padStart(10),
      (hvshValue / cValue).toFixed(3).padStart(9),
      paired === undefined ? "" : paired.toFixed(3).padStart(9),
    ].join("");
  const stepRatio = r.hvshStepRate / r.cStepRate;
  const lines = [
    `Debugger: ${rounds} interleaved runs per side, medians`,
    `${"what".padEnd(34)}${"C".padStart(10)}${"hvsh".padStart(10)}${"hvsh/C".padStart(9)}${"paired".padStart(9)}`,
    `${row(`single-step, N = ${r.steps} (steps/s)`, r.cStepRate, r.hvshStepRate, 0, r.stepPaired)}  bar ≥ ${
      STEP_RATE_BAR.toFixed(2)
    } ${stepRatio >= STEP_RATE_BAR ? "PASS" : "MISS"}`,
    `${row(`breakpoint hit+resume, K = ${r.hits} (µs)`, r.cHitUs, r.hvshHitUs, 0, r.hitPaired)}  (no bar)`,
    row("  guest loop alone, no bp (µs/iter)", r.cLoopUs, r.hvshLoopUs, 0),
    row("  hit cost over the loop (µs/hit)", r.cOverUs, r.hvshOverUs, 0),
    "(step: spin.elf's `jmp .` stepped N times; hit: demo.elf, breakpoint on tick, ~5k guest instructions between",
    " hits; loop alone: the same VM after its hits, breakpoint removed, timed over its serial lines (16 iterations",
    " each); hit cost over the loop: median of each run's hit minus its own loop time)",
  ];
  return lines.join("\n");
}

/** A cold-start contender: the command to run and the output that proves the guest ran. */
interface ColdCase {
  label: string;
  command: string;
  args: string[];
  expect: string;
  /** Exit statuses that mean success (the debug exit makes QEMU and hvsh return 1). */
  okCodes: number[];
}

/** Whether `command` is an entry of some $PATH directory (checked before spawning, to skip rather than fail). */
async function onPath(command: string): Promise<boolean> {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").filter((dir) => dir !== "");
  for (const dir of dirs) {
    if ((await mtimeMs(join(dir, command))) !== undefined) return true;
  }
  return false;
}

/** Wall time of one run in ms; checks the guest's output so a failed boot is not timed as a fast one. */
async function timeCold(entry: ColdCase): Promise<number> {
  const t0 = performance.now();
  const { stdout } = await runCommand(entry.command, entry.args, entry.okCodes);
  const ms = performance.now() - t0;
  if (!stdout.includes(entry.expect)) {
    throw new Error(`${entry.label}: output lacks ${JSON.stringify(entry.expect)}: ${JSON.stringify(stdout)}`);
  }
  return ms;
}

/**
 * QEMU's microvm machine is the fair comparison (no firmware tables, no PCI
 * scan); fall back to `-M pc` if this QEMU's microvm refuses a multiboot image.
 */
async function qemuCase(mbHello: string): Promise<{ entry?: ColdCase; note: string }> {
  if (!(await onPath("qemu-system-x86_64"))) return { note: "qemu-system-x86_64 not on PATH: row skipped" };
  const tail = ["-enable-kvm", "-kernel", mbHello, "-nographic", "-no-reboot"];
  const debugExit = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"];
  let lastError = "";
  for (const machine of ["microvm", "pc"]) {
    const entry: ColdCase = {
      label: `qemu -M ${machine}`,
      command: "qemu-system-x86_64",
      args: ["-M", machine, ...tail, ...debugExit],
      expect: "multiboot ok",
      okCodes: [1],
    };
    try {
      await timeCold(entry); // also the warm-up run (binary and firmware into the page cache)
      return { entry, note: `QEMU ran the multiboot guest mb_hello.elf with -M ${machine}` };
    } catch (error) {
      lastError = (error as Error).message;
    }
  }
  return { note: `QEMU could not run mb_hello.elf (${lastError}): row skipped` };
}

/** Median cold-start wall time per case, from interleaved rounds; notes say what was skipped. */
async function benchCold(
  guests: Map<string, string>,
  runs: number,
): Promise<{ rows: [string, number][]; notes: string[] }> {
  const hello32 = guests.get("hello32.elf");
  const mbHello = guests.get("mb_hello.elf");
  if (hello32 === undefined || mbHello === undefined) {
    throw new Error("buildGuests() lacks hello32.elf or mb_hello.elf");
  }
  const notes: string[] = [];
  const cases: ColdCase[] = [
    { label: "C --cold", command: C_BINARY, args: ["--cold", hello32], expect: "hello", okCodes: [0] },
  ];
  if ((await mtimeMs(LAUNCHER)) !== undefined) {
    cases.push({
      label: "hvsh boot",
      command: LAUNCHER,
      args: ["boot", "--kernel", hello32],
      expect: "hello",
      okCodes: [1],
    });
  } else {
    notes.push("./hvsh launcher missing: hvsh boot row skipped");
  }
  const qemu = await qemuCase(mbHello);
  notes.push(qemu.note);
  if (qemu.entry !== undefined) cases.push(qemu.entry);

  for (const entry of cases) await timeCold(entry); // warm-up
  const times = new Map<string, number[]>(cases.map((entry) => [entry.label, []]));
  for (let round = 0; round < runs; round++) {
    for (const entry of cases) times.get(entry.label)!.push(await timeCold(entry));
  }
  return { rows: cases.map((entry) => [entry.label, median(times.get(entry.label)!)]), notes };
}

/** The exit table; PASS/MISS judges the ratio of medians, the paired ratio is shown as a noise check. */
function formatExitTable(results: ExitResult[], n: number, rounds: number): string {
  const header = ["guest".padEnd(8), "C µs/exit".padStart(12), "hvsh µs/exit".padStart(15), "hvsh/C".padStart(9)];
  const lines = [
    `Exit round trip: N = ${n} exits per run, ${rounds} interleaved runs per side, medians`,
    `${header.join("")}${"paired".padStart(9)}  bar ≤ ${RATIO_BAR.toFixed(2)}`,
  ];
  for (const { label, cUs, hvshUs, pairedRatio } of results) {
    const ratio = hvshUs / cUs;
    const cells = [label.padEnd(8), cUs.toFixed(2).padStart(12), hvshUs.toFixed(2).padStart(15)];
    cells.push(ratio.toFixed(3).padStart(9), pairedRatio.toFixed(3).padStart(9));
    lines.push(`${cells.join("")}  ${ratio <= RATIO_BAR ? "PASS" : "MISS"}`);
  }
  lines.push("(hvsh/C: ratio of the medians; paired: median of each round's ratio, C and hvsh run back to back)");
  return lines.join("\n");
}

/** The cold-start table, each row also as a multiple of the C program's time. */
function formatColdTable(rows: [string, number][], notes: string[], runs: number): string {
  const c = rows.find(([label]) => label === "C --cold")?.[1];
  const lines = [
    `Cold start (wall time of the whole process, median of ${runs})`,
    `${"what".padEnd(16)}${"ms".padStart(9)}${"÷ C".padStart(9)}`,
  ];
  for (const [label, ms] of rows) {
    lines.push(`${label.padEnd(16)}${ms.toFixed(1).padStart(9)}${(c ? (ms / c).toFixed(1) : "-").padStart(9)}`);
  }
  return [...lines, ...notes.map((note) => `note: ${note}`)].join("\n");
}

/** Parses a count option; a bad value is an error, not a silent default. */
function positiveInt(value: string | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 1) throw new RangeError(`--${name} ${value}: expected a positive integer`);
  return parsed;
}

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      n: { type: "string" },
      rounds: { type: "string" },
      steps: { type: "string" },
      hits: { type: "string" },
      "debug-rounds": { type: "string" },
      "cold-runs": { type: "string" },
    },
  });
  // ≈20000 exits is ≈0.15 s per run here: long enough to swamp the kick timer's granularity, short enough for ~60 s.
  const n = positiveInt(values.n, 20_000, "n");
  // 15 rounds: medians steady to ~1% on this noisy 2-core host, and the whole bench stays near 15 s.
  const rounds = positiveInt(values.rounds, 15, "rounds");
  // 20000 steps ≈ 0.14 s in C here; 48 hits = 3 of demo.elf's 16-iteration output lines (≈0.15 s in C).
  const steps = positiveInt(values.steps, 20_000, "steps");
  const hits = positiveInt(values.hits, 48, "hits");
  const debugRounds = positiveInt(values["debug-rounds"], 9, "debug-rounds");
  const coldRuns = positiveInt(values["cold-runs"], 5, "cold-runs");

  const [guests] = await Promise.all([buildGuests(), buildCBench()]);
  const pio = guests.get("bench_pio.elf");
  const mmio = guests.get("bench_mmio.elf");
  const spin = guests.get("spin.elf");
  const demo = guests.get("demo.elf");
  if (pio === undefined || mmio === undefined) throw new Error("buildGuests() lacks bench_pio.elf or bench_mmio.elf");
  if (spin === undefined || demo === undefined) throw new Error("buildGuests() lacks spin.elf or demo.elf");

  const started = performance.now();
  const results = [await benchExits("PIO", pio, n, rounds), await benchExits("MMIO", mmio, n, rounds)];
  console.log(formatExitTable(results, n, rounds));
  console.log();
  const debug = await benchDebug(await debugGuests(spin, demo), steps, hits, debugRounds);
  console.log(formatDebugTable(debug, debugRounds));
  console.log();
  const cold = await benchCold(guests, coldRuns);
  console.log(formatColdTable(cold.rows, cold.notes, coldRuns));
  console.log(`\n(bench took ${((performance.now() - started) / 1000).toFixed(1)} s)`);
}

if (import.meta.main) {
  await main(Deno.args);
}
