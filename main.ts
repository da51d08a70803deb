/**
 * The hvsh command line: `hvsh` (the REPL), `hvsh boot`, `hvsh run SCRIPT`.
 *
 * @module
 */

import { bootCommand } from "./cli/boot.ts";

const USAGE = `hvsh: a hypervisor shell on KVM

usage: hvsh                          open the REPL on the demo VM
       hvsh --kernel FILE [OPTIONS]  open the REPL on a kernel (boot options as below)
       hvsh --empty                  open the REPL with no VM
       hvsh boot --kernel FILE ...   run a kernel with COM1 on this terminal (hvsh boot --help)
       hvsh boot --restore FILE      run on a VM saved in a snapshot file
       hvsh listen --migrate ADDR    receive a VM migrated from another hvsh and run it
       hvsh run SCRIPT.ts [ARGS]     run a provisioning script with the scripting API`;

async function runScript(args: string[]): Promise<number> {
  const [script] = args;
  if (script === undefined) {
    console.error("hvsh run: missing SCRIPT.ts\n" + USAGE);
    return 2;
  }
  const { runScriptFile } = await import("./cli/run_script.ts");
  return await runScriptFile(script);
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
    case "help":
    case "--help":
    case "-h":
      console.log(USAGE);
      return 0;
    default: {
      const { replCommand } = await import("./repl/main.ts");
      return await replCommand(args);
    }
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
