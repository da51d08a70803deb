/**
 * The hvsh command line: `hvsh` (the REPL), `hvsh boot`, `hvsh run SCRIPT`
 * (`hvsh test` and `hvsh bench` are handled by the launcher script).
 *
 * @module
 */

import { bootCommand, createBootVm, parseBootArgs, UsageError } from "./cli/boot.ts";
import type { ReplStart } from "./repl/main.ts";

const USAGE = `hvsh: a hypervisor shell on KVM

usage: hvsh                          open the REPL on the demo VM
       hvsh --kernel FILE [OPTIONS]  open the REPL on a kernel (boot options as below)
       hvsh --empty                  open the REPL with no VM
       hvsh boot --kernel FILE ...   run a kernel with COM1 on this terminal (hvsh boot --help)
       hvsh boot --restore FILE      run on a VM saved in a snapshot file
       hvsh listen --migrate ADDR    receive a VM migrated from another hvsh and run it
       hvsh run SCRIPT.ts [ARGS]     run a provisioning script, type-checked (hvsh run --help)
       hvsh init DIR                 make a kernel project tested with deno test (hvsh init --help)
       hvsh test-suite FILE          run a kvm-unit-tests-style table of kernels (hvsh test-suite --help)
       hvsh test [FILES] [OPTIONS]   run the test suites (deno test)
       hvsh bench [OPTIONS]          measure hvsh against C and QEMU baselines (hvsh bench --help)
       hvsh fuzz [--minutes N] [--seed S] [--only a,b]  fuzz hvsh itself (hvsh fuzz --help)
       hvsh help                     this text`;

const COMMANDS = ["boot", "listen", "run", "init", "test-suite", "test", "bench", "fuzz", "help"];

async function runScript(args: string[]): Promise<number> {
  const { runCommand } = await import("./cli/run_script.ts");
  return await runCommand(args);
}

async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  switch (command) {
    case "boot":
      return await bootCommand(rest);
    case "run":
      return await runScript(rest);
    case "listen": {
      const { listenCommand } = await import("./cli/listen.ts");
      return await listenCommand(rest);
    }
    case "fuzz": {
      const { fuzzCommand } = await import("./cli/fuzz.ts");
      return await fuzzCommand(rest);
    }
    case "init":
      return await (await import("./cli/init.ts")).initCommand(rest);
    case "test-suite":
      return await (await import("./cli/test_suite.ts")).testSuiteCommand(rest);
    case "help":
    case "--help":
    case "-h":
      console.log(USAGE);
      return 0;
    default: {
      // A word that is neither a command, an option nor a file is a typo of a command, not a kernel to read.
      if (command !== undefined && !command.startsWith("-") && !(await isFile(command))) {
        console.error(
          `hvsh: unknown command ${JSON.stringify(command)} (commands: ${COMMANDS.join(", ")}; ` +
            `a kernel is given with --kernel FILE)\n${USAGE}`,
        );
        return 2;
      }
      const start = await replStart(args);
      if (typeof start === "number") return start;
      const { replCommand } = await import("./repl/main.ts");
      return await replCommand(start);
    }
  }
}

/** What `hvsh [--kernel FILE [boot options] | --empty]` opens the REPL on, or the exit status of a bad command line. */
async function replStart(args: string[]): Promise<ReplStart | number> {
  if (args.includes("--empty")) return "empty";
  if (args.length === 0) return "demo";
  try {
    const options = parseBootArgs(args);
    const vm = await createBootVm(options);
    const createOptions = { memory: options.memory, cpus: options.cpus, cpuid: { hide: options.cpuidHide } };
    return { vm, kernel: options.kernel, createOptions, load: options.load, initrd: options.initrd };
  } catch (error) {
    console.error(`hvsh: ${(error as Error).message}`);
    if (error instanceof UsageError) console.error("usage: hvsh [--kernel FILE [boot options] | --empty]");
    return 2;
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
