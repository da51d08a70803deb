/**
 * `hvsh bench --only process`: hvsh measured as users run it, as whole
 * processes, beside its baselines in the same run (issue 18's table):
 *
 * - per-exit cost through `hvsh boot`: wall of a guest that executes
 *   200000 `out 0x80` minus the wall of the same guest with none, against
 *   the C loop (bench/kvm_exit_bench.c) run the same way;
 * - cold start and peak RSS of `hvsh boot` on the multiboot hello guest with
 *   64 MiB of RAM, against QEMU `-M microvm` and an empty `deno run` (the
 *   floor hvsh stands on).
 *
 * Rounds interleave the contenders; figures are medians and the paired
 * ratio is the median of each round's ratio. The environment (load average,
 * CPU count) is printed with them: this host is shared and noisy.
 *
 * @module
 */

import { join } from "node:path";
import { cpus, loadavg } from "node:os";

/** What the process rows need from bench.ts. */
export interface ProcessBenchTools {
  /** Repository root. */
  root: string;
  /** The `hvsh` launcher. */
  launcher: string;
  /** The C exit loop (bench/kvm_exit_bench), built. */
  cExitBench: string;
  /** tests/guests/build/bench_pio.elf (ECX = N set by the host). */
  benchPio: string;
  /** tests/guests/build/mb_hello.elf. */
  mbHello: string;
  median(values: readonly number[]): number;
  onPath(command: string): Promise<boolean>;
}

/** One contender's medians. */
export interface ProcessRow {
  what: string;
  hvsh: number;
  baseline: number;
  baselineName: string;
  unit: string;
  /** Median of each round's hvsh/baseline. */
  paired: number;
  goal: string;
  /** Whether lower is better for the ratio (all rows here). */
  met: boolean;
}

/** The exits the long guest takes (the issue's figure). */
export const PROCESS_EXITS = 200_000;
/** The issue's goals: hvsh/baseline. */
const EXIT_GOAL = 1.05;
const START_GOAL = 1.0;
const RSS_GOAL = 1.0;

/** One whole-process run: wall ms, peak RSS in MiB (from GNU time), exit status. */
interface Sample {
  ms: number;
  rssMiB: number;
  code: number;
  stdout: string;
}

async function timeProcess(command: string, args: string[], cwd: string): Promise<Sample> {
  // GNU time reports the child's peak RSS (ru_maxrss); its own start is outside neither side's count alike.
  const report = await Deno.makeTempFile({ prefix: "hvsh-bench-rss-" });
  try {
    const t0 = performance.now();
    const output = await new Deno.Command("/usr/bin/time", {
      args: ["-f", "%M", "-o", report, command, ...args],
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
      signal: AbortSignal.timeout(60_000),
    }).output();
    const ms = performance.now() - t0;
    const text = await Deno.readTextFile(report);
    const kib = Number(text.trim().split("\n").at(-1));
    return { ms, rssMiB: kib / 1024, code: output.code, stdout: new TextDecoder().decode(output.stdout) };
  } finally {
    await Deno.remove(report).catch(() => {});
  }
}

/** Builds bench_pio with ECX fixed at `count` (hvsh boot sets no registers) into bench/build/. */
async function buildFixedPio(root: string, count: number): Promise<string> {
  const dir = join(root, "bench", "build");
  await Deno.mkdir(dir, { recursive: true });
  const object = join(dir, `bench_pio_${count}.o`);
  const elf = join(dir, `bench_pio_${count}.elf`);
  const lib = join(root, "tests", "guests", "lib");
  const steps: [string, string[]][] = [
    ["gcc", [
      "-m32",
      "-I",
      lib,
      `-DPIO_COUNT=${count}`,
      "-c",
      "-o",
      object,
      join(root, "tests", "guests", "bench_pio.S"),
    ]],
    ["ld", [
      "-m",
      "elf_i386",
      "-T",
      join(lib, "link32.ld"),
      "-Ttext=0x100000",
      "-nostdlib",
      "-static",
      "--build-id=none",
      "-z",
      "noexecstack",
      "--no-warn-rwx-segments",
      "-o",
      elf,
      object,
    ]],
  ];
  for (const [command, args] of steps) {
    const output = await new Deno.Command(command, { args, stdout: "null", stderr: "piped" }).output();
    if (!output.success) {
      throw new Error(`${command} ${args.join(" ")} failed: ${new TextDecoder().decode(output.stderr).trim()}`);
    }
  }
  return elf;
}

interface Contender {
  label: string;
  command: string;
  args: string[];
  /** Exit statuses that mean the guest ran to its end. */
  okCodes: number[];
  expect?: string;
}

/** Runs every contender `rounds` times, interleaved, after one warm-up each; checks each run's status and output. */
async function interleave(contenders: Contender[], rounds: number, cwd: string): Promise<Map<string, Sample[]>> {
  const samples = new Map<string, Sample[]>(contenders.map((c) => [c.label, []]));
  for (let round = -1; round < rounds; round++) {
    for (const c of contenders) {
      const sample = await timeProcess(c.command, c.args, cwd);
      if (!c.okCodes.includes(sample.code) || (c.expect !== undefined && !sample.stdout.includes(c.expect))) {
        throw new Error(
          `${c.label}: exit status ${sample.code}, output ${JSON.stringify(sample.stdout.slice(0, 200))}`,
        );
      }
      if (round >= 0) samples.get(c.label)!.push(sample);
    }
  }
  return samples;
}

/** The environment line printed with the figures. */
export function environmentLine(): string {
  const [one, five, fifteen] = loadavg();
  return `load average ${one!.toFixed(2)} ${five!.toFixed(2)} ${fifteen!.toFixed(2)}, ${cpus().length} CPUs, ${
    new Date().toISOString()
  }`;
}

/** Measures the process rows; notes say what was skipped. */
export async function benchProcess(
  tools: ProcessBenchTools,
  rounds: number,
): Promise<{ rows: ProcessRow[]; notes: string[]; before: string; after: string }> {
  const notes: string[] = [];
  const before = environmentLine();
  const rows: ProcessRow[] = [];
  if (!(await tools.onPath("time")) && !(await Deno.stat("/usr/bin/time").catch(() => undefined))) {
    return {
      rows,
      notes: ["/usr/bin/time (GNU time) missing: process rows skipped (apt-get install -y time)"],
      before,
      after: before,
    };
  }
  const { median } = tools;
  const ratioRow = (
    what: string,
    unit: string,
    hvsh: number[],
    base: number[],
    baselineName: string,
    goal: number,
  ): ProcessRow => {
    const paired = median(hvsh.map((h, i) => h / base[i]!));
    const ratio = median(hvsh) / median(base);
    return {
      what,
      hvsh: median(hvsh),
      baseline: median(base),
      baselineName,
      unit,
      paired,
      goal: `≤ ${goal.toFixed(2)}`,
      met: ratio <= goal,
    };
  };

  // Per-exit cost through hvsh boot vs the C loop, each as a process: (wall at N) - (wall at 0), per exit.
  const [pioMany, pioNone] = [await buildFixedPio(tools.root, PROCESS_EXITS), await buildFixedPio(tools.root, 0)];
  const exitRuns = await interleave(
    [
      { label: "hvsh N", command: tools.launcher, args: ["boot", "--kernel", pioMany], okCodes: [1] },
      { label: "hvsh 0", command: tools.launcher, args: ["boot", "--kernel", pioNone], okCodes: [1] },
      { label: "C N", command: tools.cExitBench, args: [tools.benchPio, String(PROCESS_EXITS)], okCodes: [0] },
      { label: "C 0", command: tools.cExitBench, args: [tools.benchPio, "0"], okCodes: [0] },
    ],
    rounds,
    tools.root,
  );
  const perExit = (many: string, none: string) =>
    exitRuns.get(many)!.map((s, i) => (s.ms - exitRuns.get(none)![i]!.ms) * 1000 / PROCESS_EXITS);
  rows.push(ratioRow(
    `port-I/O exit through hvsh boot (${PROCESS_EXITS} - 0 outs)`,
    "µs",
    perExit("hvsh N", "hvsh 0"),
    perExit("C N", "C 0"),
    "C loop",
    EXIT_GOAL,
  ));

  // Cold start and peak RSS of the multiboot hello guest, 64 MiB.
  const start: Contender[] = [
    {
      label: "hvsh",
      command: tools.launcher,
      args: ["boot", "--kernel", tools.mbHello, "--mem", "64M"],
      okCodes: [1],
      expect: "multiboot ok",
    },
  ];
  const deno = join(tools.root, "node_modules", ".bin", "deno");
  const empty = await Deno.makeTempFile({ prefix: "hvsh-bench-empty-", suffix: ".ts" });
  start.push({ label: "deno", command: deno, args: ["run", "-q", empty], okCodes: [0] });
  const qemu = await tools.onPath("qemu-system-x86_64");
  if (qemu) {
    start.push({
      label: "qemu",
      command: "qemu-system-x86_64",
      args: [
        "-M",
        "microvm",
        "-enable-kvm",
        "-m",
        "64M",
        "-kernel",
        tools.mbHello,
        "-nographic",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
      ],
      okCodes: [1],
      expect: "multiboot ok",
    });
  } else {
    notes.push("qemu-system-x86_64 not on PATH: start and RSS rows use the empty Deno as their baseline only");
  }
  let startRuns;
  try {
    startRuns = await interleave(start, rounds, tools.root);
  } finally {
    await Deno.remove(empty).catch(() => {});
  }
  const ms = (label: string) => startRuns.get(label)!.map((s) => s.ms);
  const rss = (label: string) => startRuns.get(label)!.map((s) => s.rssMiB);
  const base = qemu ? "qemu" : "deno";
  const baseName = qemu ? "QEMU -M microvm" : "empty deno run";
  rows.push(ratioRow("cold start, mb_hello, hvsh boot --mem 64M", "ms", ms("hvsh"), ms(base), baseName, START_GOAL));
  rows.push(ratioRow("peak RSS, same run", "MiB", rss("hvsh"), rss(base), baseName, RSS_GOAL));
  notes.push(
    `empty \`deno run\` (hvsh's floor): ${median(ms("deno")).toFixed(1)} ms, ${
      median(rss("deno")).toFixed(1)
    } MiB peak RSS`,
  );
  return { rows, notes, before, after: environmentLine() };
}

/** The process rows as a table. */
export function formatProcessTable(
  result: { rows: ProcessRow[]; notes: string[]; before: string; after: string },
  rounds: number,
): string {
  const lines = [
    `hvsh as users run it (whole processes): ${rounds} interleaved rounds, medians`,
    `environment before: ${result.before}`,
    `${"what".padEnd(58)}${"hvsh".padStart(9)}${"baseline".padStart(10)}${"ratio".padStart(8)}${
      "paired".padStart(8)
    }  goal`,
  ];
  for (const r of result.rows) {
    lines.push(
      `${`${r.what} (${r.unit})`.padEnd(58)}${r.hvsh.toFixed(2).padStart(9)}${r.baseline.toFixed(2).padStart(10)}${
        (r.hvsh / r.baseline).toFixed(3).padStart(8)
      }${r.paired.toFixed(3).padStart(8)}  ${r.goal} ${r.met ? "MET" : "MISS"} (baseline: ${r.baselineName})`,
    );
  }
  lines.push(`environment after: ${result.after}`);
  return [...lines, ...result.notes.map((note) => `note: ${note}`)].join("\n");
}
