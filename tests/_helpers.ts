/**
 * Shared helpers of the foundation test suites: whether KVM can be used
 * here (computed once), the tiny guest kernels (built once per process) and
 * small conveniences for reading symbols and running guests.
 *
 * Tests that need `/dev/kvm` declare
 * `Deno.test({ name, ignore: !kvmAvailable, fn })` (or use the kit's
 * `kernelTest`), so they are reported as ignored, with one line saying why
 * (printed by the kit, testing.ts), on a host without KVM.
 *
 * @module
 */

import { buildGuests } from "../scripts/build_guests.ts";
import type { Vm } from "../core/vm.ts";

export { kvmAvailable, kvmMissingReason } from "../testing.ts";

let guests: Promise<Map<string, string>> | undefined;

/** Absolute path of a built test guest, e.g. `await guest("hello64.elf")` (builds stale guests once). */
export async function guest(name: string): Promise<string> {
  guests ??= buildGuests();
  const path = (await guests).get(name);
  if (path === undefined) throw new Error(`No test guest named ${name}`);
  return path;
}

/** The address of a symbol of the image last loaded into `vm`. */
export function symbol(vm: Vm, name: string): bigint {
  const found = vm.image?.symbols.find((s) => s.name === name);
  if (found === undefined) throw new Error(`No symbol ${name} in the loaded image`);
  return found.address;
}

/** Bytes as lowercase hex, two digits each, no separators. */
export function toHex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Milliseconds a run of a tiny guest may take before a test calls it hung. */
export const RUN_TIMEOUT_MS = 10_000;

/**
 * Waits until `condition()` holds, looking every few milliseconds; throws
 * naming `what` when it still does not hold after `timeoutMs`. Tests wait
 * for conditions this way instead of sleeping a fixed time.
 */
export async function waitUntil(condition: () => boolean, what: string, timeoutMs = RUN_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() >= deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const ROOT = new URL("..", import.meta.url).pathname;

/** What a whole `./hvsh` process left: its exit status (and signal, if one ended it) and its output. */
export interface HvshRun {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** How {@link runHvsh} starts the process. */
export interface RunHvshOptions {
  /** Written to its stdin, which is then closed. Default: nothing. */
  input?: string;
  /** Its environment, added to this one's (all of it with `clearEnv`); NO_COLOR=1 is always set. */
  env?: Record<string, string>;
  clearEnv?: boolean;
  /** Default: the repository root. */
  cwd?: string;
  /** Killed after this long (a hung process fails its test). Default 60 s. */
  timeoutMs?: number;
}

/** Runs `./hvsh ARGS` as a user does from a script: stdin piped, output collected, bounded in time. */
export async function runHvsh(args: string[], options: RunHvshOptions = {}): Promise<HvshRun> {
  const child = new Deno.Command(`${ROOT}hvsh`, {
    args,
    cwd: options.cwd ?? ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...options.env },
    clearEnv: options.clearEnv ?? false,
    signal: AbortSignal.timeout(options.timeoutMs ?? 60_000),
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(options.input ?? ""));
  await writer.close();
  const out = await child.output();
  return {
    code: out.code,
    signal: out.signal,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/**
 * The REPL as a user scripts it: `./hvsh ARGS` with `lines` on a piped stdin
 * (plain output, no colours, a history file of its own), waited for.
 */
export async function replPiped(args: string[], lines: string[], timeoutMs = 60_000): Promise<HvshRun> {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-repl-" });
  try {
    return await runHvsh(args, {
      input: lines.join("\n") + "\n",
      env: { HVSH_HISTORY: `${dir}/history` },
      timeoutMs,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
