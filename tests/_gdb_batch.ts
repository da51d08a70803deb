/**
 * Real gdb against `hvsh boot --gdb`, as a user runs them: hvsh as one
 * subprocess (held for gdb with --wait), `gdb -batch` with the guest's ELF
 * as another, both waited for. Shared by the gdb suites that drive a whole
 * session from a list of gdb commands.
 *
 * @module
 */

import assert from "node:assert/strict";

/** Why real gdb cannot be used here, or undefined when it can (computed once). */
export const gdbMissingReason: string | undefined = (() => {
  try {
    const out = new Deno.Command("gdb", { args: ["--version"], stdout: "piped", stderr: "null" }).outputSync();
    return out.success ? undefined : "gdb --version failed";
  } catch (error) {
    return `no gdb on PATH (${(error as Error).message})`;
  }
})();

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** What a gdb session left: gdb's output and errors, and hvsh's (the guest's output on stdout) and exit status. */
export interface GdbSession {
  gdb: string;
  gdbErrors: string;
  /** What the guest printed (hvsh's stdout). */
  guest: string;
  hvshErrors: string;
  code: number;
}

/**
 * Boots `elf` with `hvsh boot --kernel ELF ...bootArgs --gdb 127.0.0.1:PORT --wait`, runs
 * `gdb -batch` with `file ELF`, `target remote` and `commands`, and waits for both.
 */
export async function gdbBatch(
  elf: string,
  bootArgs: string[],
  commands: string[],
  timeoutMs = 60_000,
): Promise<GdbSession> {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = `127.0.0.1:${probe.addr.port}`;
  probe.close();
  const hvsh = new Deno.Command(Deno.execPath(), {
    args: ["run", "-q", "--allow-all", MAIN, "boot", "--kernel", elf, ...bootArgs, "--gdb", address, "--wait"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).spawn();
  const stderr = hvsh.stderr.getReader();
  const { value } = await stderr.read(); // "gdb server on ...": listening now
  const first = new TextDecoder().decode(value);
  assert.match(first, new RegExp(`gdb server on ${address}`));
  stderr.releaseLock();
  const args = ["-batch", "-nx", "-ex", "set confirm off"];
  for (const command of [`file ${elf}`, `target remote ${address}`, ...commands]) args.push("-ex", command);
  const gdb = await new Deno.Command("gdb", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).output();
  const result = await hvsh.output();
  return {
    gdb: new TextDecoder().decode(gdb.stdout),
    gdbErrors: new TextDecoder().decode(gdb.stderr),
    guest: new TextDecoder().decode(result.stdout),
    hvshErrors: first + new TextDecoder().decode(result.stderr),
    code: result.code,
  };
}

/** `$N = VALUE` lines of gdb's `print`, in order. */
export function printed(output: string): string[] {
  return [...output.matchAll(/^\$\d+ = (.*)$/gm)].map((m) => m[1]!);
}
