/**
 * `hvsh listen --migrate ADDR`: waits for one VM migrated from another hvsh
 * (`vm.migrate(ADDR)`), then runs it with COM1 on this terminal as
 * `hvsh boot` does.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Vm } from "../core/vm.ts";
import { BOOT_STATUS, type BootOptions, runOnTerminal, UsageError } from "./boot.ts";

/** The usage text of `hvsh listen`. */
export const LISTEN_USAGE = `usage: hvsh listen --migrate [HOST:]PORT [--timeout SECONDS]

Waits on HOST:PORT (127.0.0.1 unless a host is given) for one VM that another hvsh
migrates here (vm.migrate("HOST:PORT")), then runs it on with COM1 on this terminal,
as hvsh boot does (same exit statuses; --timeout counts from the arrival).
Prints "hvsh: listening for a migration on HOST:PORT" on stderr once the port is open.`;

/** Runs `hvsh listen ARGS` and returns the process exit status. */
export async function listenCommand(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(LISTEN_USAGE);
    return 0;
  }
  let address: string;
  let timeoutMs: number | undefined;
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { migrate: { type: "string" }, timeout: { type: "string" } },
      allowPositionals: true,
      strict: true,
    });
    if (positionals.length > 0) throw new UsageError(`Unexpected argument ${JSON.stringify(positionals[0])}`);
    if (values.migrate === undefined) throw new UsageError("Missing --migrate [HOST:]PORT");
    address = values.migrate;
    if (values.timeout !== undefined) {
      const seconds = Number(values.timeout);
      if (!(seconds > 0)) {
        throw new UsageError(`Invalid --timeout ${JSON.stringify(values.timeout)}: expected seconds > 0`);
      }
      timeoutMs = seconds * 1000;
    }
  } catch (error) {
    console.error(`hvsh listen: ${(error as Error).message}\n${LISTEN_USAGE}`);
    return BOOT_STATUS.usage;
  }
  let vm: Vm;
  try {
    vm = await Vm.receiveMigration(address, {
      onListening: (bound) => console.error(`hvsh: listening for a migration on ${bound}`),
    });
  } catch (error) {
    console.error(`hvsh listen: ${(error as Error).message}`);
    return BOOT_STATUS.usage;
  }
  const options: BootOptions = {
    kernel: "",
    load: {},
    memory: "",
    cpus: vm.cpus.length,
    timeoutMs,
    cpuidHide: [],
    cpuidVendor: undefined,
    initrd: undefined,
    gdb: undefined,
    wait: false,
    gdbAllowJs: false,
    symbols: undefined,
    bootTimer: false,
  };
  return await runOnTerminal(vm, options);
}
