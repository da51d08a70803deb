/**
 * `hvsh bench --only reverse`: what running backwards costs, each figure
 * beside its forward baseline in the same process:
 *
 * - recording overhead: bench_pio.elf's N port writes run with
 *   `vm.debug.record()` against the same run unrecorded (µs per exit, paired
 *   ratio of interleaved rounds); recording logs every port/MMIO answer and
 *   takes a checkpoint (KVM state and the RAM pages written since the last)
 *   every 20 ms of running;
 * - reverse-stepi latency: `vm.debug.reverseStep()` on rloop.elf from its
 *   third `tick` hit, against `vm.debug.step()` (a forward single step) in
 *   the same VM; and on counter.elf after 300 ms of recorded running (a
 *   checkpoint every 20 ms), where going back replays from the last one;
 * - reverse-continue latency: from rloop's third `tick` hit to its second.
 *
 * @module
 */

import { cpus, loadavg } from "node:os";
import { Vm } from "../core/vm.ts";

/** What the reverse rows need from bench.ts. */
export interface ReverseBenchTools {
  /** The `hvsh` launcher, for the gdb row (`hvsh boot --record --gdb`). */
  launcher: string;
  benchPio: string;
  rloop: string;
  counter: string;
  median(values: readonly number[]): number;
}

/** The figures of one run of the reverse rows. */
export interface ReverseResult {
  exits: number;
  plainUs: number;
  recordedUs: number;
  recordedRatio: number;
  recordStartMs: number;
  stepUs: number;
  reverseStepUs: number;
  counterReverseStepUs: number;
  counterCheckpoints: number;
  reverseContinueMs: number;
  /** gdb 13's `reverse-stepi` and `stepi` as a user times them, µs (undefined without gdb). */
  gdb?: { reverseStepiUs: number; stepiUs: number };
}

async function pioRun(
  tools: ReverseBenchTools,
  exits: number,
  record: boolean,
): Promise<{ us: number; startMs: number }> {
  const vm = await Vm.create({ memory: "64M" });
  try {
    await vm.load(tools.benchPio);
    vm.cpu(0).setRegs({ rcx: exits });
    const t0 = performance.now();
    if (record) vm.debug.record();
    const startMs = performance.now() - t0;
    const t1 = performance.now();
    const stop = await vm.run();
    const us = ((performance.now() - t1) * 1000) / (exits + 1);
    if (stop.reason !== "exit") throw new Error(`bench_pio stopped with ${stop.reason}, expected exit`);
    return { us, startMs };
  } finally {
    await vm.close();
  }
}

async function timeEach(count: number, action: () => Promise<unknown>): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    await action();
    times.push((performance.now() - t0) * 1000);
  }
  return times;
}

/** Runs the reverse rows: `rounds` interleaved pairs for the recording overhead, `steps` timed steps each way. */
export async function benchReverse(
  tools: ReverseBenchTools,
  exits: number,
  rounds: number,
  steps: number,
): Promise<ReverseResult> {
  const { median } = tools;
  await pioRun(tools, exits, false);
  await pioRun(tools, exits, true);
  const plain: number[] = [];
  const recorded: number[] = [];
  const starts: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? [false, true] : [true, false];
    for (const record of order) {
      const run = await pioRun(tools, exits, record);
      if (record) {
        recorded.push(run.us);
        starts.push(run.startMs);
      } else {
        plain.push(run.us);
      }
    }
  }

  const vm = await Vm.create({ memory: "16M" });
  let stepUs: number, reverseStepUs: number, reverseContinueMs: number;
  try {
    await vm.load(tools.rloop);
    vm.debug.record();
    vm.debug.break("tick");
    for (let i = 0; i < 3; i++) await vm.run();
    const continues: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      await vm.debug.reverseContinue(); // the 3rd hit back to the 2nd
      continues.push(performance.now() - t0);
      await vm.run(); // forward to the 3rd again
    }
    reverseContinueMs = median(continues);
    vm.debug.clear();
    reverseStepUs = median(await timeEach(steps, () => vm.debug.reverseStep()));
    stepUs = median(await timeEach(steps, () => vm.debug.step()));
  } finally {
    await vm.close();
  }

  const counter = await Vm.create({ memory: "16M" });
  let counterReverseStepUs: number, counterCheckpoints: number;
  try {
    await counter.load(tools.counter);
    counter.debug.record();
    await counter.run({ timeout: 300 });
    counterCheckpoints = counter.debug.recording!.checkpoints;
    counterReverseStepUs = median(await timeEach(steps, () => counter.debug.reverseStep()));
  } finally {
    await counter.close();
  }

  const gdb = await gdbSteps(tools, steps);
  return {
    ...(gdb === undefined ? {} : { gdb }),
    exits,
    plainUs: median(plain),
    recordedUs: median(recorded),
    recordedRatio: median(recorded.map((us, i) => us / plain[i]!)),
    recordStartMs: median(starts),
    stepUs,
    reverseStepUs,
    counterReverseStepUs,
    counterCheckpoints,
    reverseContinueMs,
  };
}

/**
 * gdb on rloop held by `hvsh boot --record --gdb --wait`: at tick's third
 * hit, `steps` reverse-stepi then `steps` stepi, each timed inside gdb
 * (Python's clock around gdb.execute): what a user waits for per command.
 */
async function gdbSteps(
  tools: ReverseBenchTools,
  steps: number,
): Promise<{ reverseStepiUs: number; stepiUs: number } | undefined> {
  try {
    if (!(await new Deno.Command("gdb", { args: ["--version"], stdout: "null", stderr: "null" }).output()).success) {
      return undefined;
    }
  } catch {
    return undefined;
  }
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = `127.0.0.1:${probe.addr.port}`;
  probe.close();
  const hvsh = new Deno.Command(tools.launcher, {
    args: ["boot", "--kernel", tools.rloop, "--record", "--gdb", address, "--wait"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    signal: AbortSignal.timeout(120_000),
  }).spawn();
  const reader = hvsh.stderr.getReader();
  await reader.read(); // "gdb server on ...": listening
  reader.releaseLock();
  const timing = [
    "import time",
    "def timed(command, n):",
    "    out = []",
    "    for _ in range(n):",
    "        t0 = time.perf_counter()",
    "        gdb.execute(command, to_string=True)",
    "        out.append((time.perf_counter() - t0) * 1e6)",
    "    out.sort()",
    "    return out[len(out) // 2]",
    `print("REVERSE_STEPI_US", timed("reverse-stepi", ${steps}))`,
    `print("STEPI_US", timed("stepi", ${steps}))`,
  ].join("\n");
  const script = await Deno.makeTempFile({ suffix: ".py" });
  try {
    await Deno.writeTextFile(script, timing + "\n");
    const args = [
      "-batch",
      "-nx",
      "-ex",
      "set confirm off",
      "-ex",
      `file ${tools.rloop}`,
      "-ex",
      `target remote ${address}`,
    ];
    for (const command of ["break tick", "continue", "continue", "continue", "delete", `source ${script}`, "kill"]) {
      args.push("-ex", command);
    }
    const out = await new Deno.Command("gdb", { args, stdout: "piped", stderr: "piped" }).output();
    await hvsh.output();
    const text = new TextDecoder().decode(out.stdout);
    const reverse = text.match(/REVERSE_STEPI_US ([\d.]+)/);
    const forward = text.match(/^STEPI_US ([\d.]+)/m);
    if (reverse === null || forward === null) return undefined;
    return { reverseStepiUs: Number(reverse[1]), stepiUs: Number(forward[1]) };
  } finally {
    await Deno.remove(script);
  }
}

/** The reverse rows as a table, with the environment they were measured in. */
export function formatReverseTable(r: ReverseResult, rounds: number, steps: number): string {
  const [load1] = loadavg();
  const lines = [
    `Reverse execution (${rounds} interleaved rounds, ${steps} timed steps each way; load average ${
      load1!.toFixed(2)
    }, ${cpus().length} CPUs)`,
    "| what | recorded / reversed | forward baseline | ratio |",
    "| --- | ---: | ---: | ---: |",
    `| port-I/O exit, bench_pio ${r.exits} exits, µs | ${r.recordedUs.toFixed(2)} | ${r.plainUs.toFixed(2)} | ${
      r.recordedRatio.toFixed(2)
    } |`,
    `| reverse-stepi on rloop (from tick's 3rd hit) vs step, µs | ${r.reverseStepUs.toFixed(0)} | ${
      r.stepUs.toFixed(0)
    } | ${(r.reverseStepUs / r.stepUs).toFixed(1)} |`,
    `| reverse-stepi on counter after 300 ms (${r.counterCheckpoints} checkpoints), µs | ${
      r.counterReverseStepUs.toFixed(0)
    } | ${r.stepUs.toFixed(0)} | ${(r.counterReverseStepUs / r.stepUs).toFixed(1)} |`,
    r.gdb === undefined
      ? "| gdb 13 reverse-stepi vs stepi | (no gdb) | | |"
      : `| gdb 13 \`reverse-stepi\` vs \`stepi\` on rloop, µs per command | ${r.gdb.reverseStepiUs.toFixed(0)} | ${
        r.gdb.stepiUs.toFixed(0)
      } | ${(r.gdb.reverseStepiUs / r.gdb.stepiUs).toFixed(1)} |`,
    `| reverse-continue, rloop's 3rd tick hit to its 2nd, ms | ${r.reverseContinueMs.toFixed(1)} | | |`,
    `| vm.debug.record() on a 64 MiB VM, ms | ${r.recordStartMs.toFixed(2)} | | |`,
  ];
  return lines.join("\n");
}
