/**
 * Builds the tiny test guest kernels in `tests/guests/` into
 * `tests/guests/build/` with gcc / ld / objcopy.
 *
 * Usage: `deno run -A scripts/build_guests.ts`, or from a test:
 * `const guests = await buildGuests(); guests.get("hello64.elf")`.
 *
 * A guest is rebuilt only when one of its sources, a shared file in
 * `tests/guests/lib/`, or this script is newer than its output. Outputs are
 * written to a temporary name and renamed into place, so concurrent builds
 * (e.g. two test processes) never expose a half-written file.
 *
 * @module
 */

import { mkdir, mkdtemp, readdir, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { STANDALONE_LINK_FLAGS } from "../kit/assemble.ts";

/** Absolute path of this script. */
const SCRIPT_PATH = fileURLToPath(import.meta.url);
/** Absolute path of `tests/guests/`. */
const GUESTS_DIR = resolve(dirname(SCRIPT_PATH), "..", "tests", "guests");
/** Absolute path of the shared headers / linker scripts / entry stubs. */
const LIB_DIR = join(GUESTS_DIR, "lib");
/** Absolute path of the (git-ignored) output folder `tests/guests/build/`. */
export const GUEST_BUILD_DIR: string = join(GUESTS_DIR, "build");

/**
 * How a guest is linked and packaged:
 * - `flat16` / `flat32`: ELF32 linked at `linkAddress`, then
 *   `objcopy -O binary` gives `<name>.bin`; the `<name>.elf` is kept beside it.
 * - `elf32` / `elf64`: the linked ELF itself is the output `<name>.elf`.
 * - `user64`: a static Linux user program without libc (`gcc -static
 *   -nostdlib`, linked where gcc links programs; `linkAddress` is unused),
 *   e.g. the /init of the Linux boot tests.
 */
type GuestKind = "flat16" | "flat32" | "elf32" | "elf64" | "user64";

/** One row of the guest table. */
interface GuestSpec {
  /** Base name; outputs are `<name>.bin` (+ `.elf`) or `<name>.elf`. */
  name: string;
  kind: GuestKind;
  /** Sources relative to `tests/guests/` (`.S` assembly or `.c`). */
  sources: string[];
  /** Where the image is linked (its PT_LOAD physical address). */
  linkAddress: number;
}

/** 1 MiB: where ELF and Multiboot guests are loaded. */
const MIB = 0x100000;
/** The BIOS boot-sector address for flat real-mode images. */
const BOOT_SECTOR = 0x7c00;

/** Every guest we build. */
const GUESTS: GuestSpec[] = [
  {
    name: "hello16",
    kind: "flat16",
    sources: ["hello16.S"],
    linkAddress: BOOT_SECTOR,
  },
  {
    name: "sleep",
    kind: "flat16",
    sources: ["sleep.S"],
    linkAddress: BOOT_SECTOR,
  },
  {
    name: "modeswitch",
    kind: "flat16",
    sources: ["modeswitch.S"],
    linkAddress: BOOT_SECTOR,
  },
  { name: "hello32", kind: "elf32", sources: ["hello32.S"], linkAddress: MIB },
  { name: "hello64", kind: "elf64", sources: ["hello64.S"], linkAddress: MIB },
  {
    name: "mb_hello",
    kind: "elf32",
    sources: ["mb_hello_entry.S", "mb_hello.c"],
    linkAddress: MIB,
  },
  { name: "mb_aout", kind: "flat32", sources: ["mb_aout.S"], linkAddress: MIB },
  { name: "exit42", kind: "elf32", sources: ["exit42.S"], linkAddress: MIB },
  {
    name: "triple_fault",
    kind: "elf64",
    sources: ["triple_fault.S"],
    linkAddress: MIB,
  },
  { name: "halt", kind: "elf32", sources: ["halt.S"], linkAddress: MIB },
  { name: "echo", kind: "elf32", sources: ["echo.S"], linkAddress: MIB },
  { name: "toy_shell", kind: "elf32", sources: ["lib/start32.S", "toy_shell.c"], linkAddress: MIB },
  { name: "pattern", kind: "elf64", sources: ["pattern.S"], linkAddress: MIB },
  { name: "watch_sites", kind: "elf64", sources: ["watch_sites.S"], linkAddress: MIB },
  { name: "spin", kind: "elf64", sources: ["spin.S"], linkAddress: MIB },
  { name: "counter", kind: "elf64", sources: ["counter.S"], linkAddress: MIB },
  { name: "counter_mb", kind: "elf32", sources: ["counter_mb.S"], linkAddress: MIB },
  {
    name: "bench_pio",
    kind: "elf32",
    sources: ["bench_pio.S"],
    linkAddress: MIB,
  },
  {
    name: "bench_mmio",
    kind: "elf32",
    sources: ["bench_mmio.S"],
    linkAddress: MIB,
  },
  {
    name: "dbg64",
    kind: "elf64",
    sources: ["lib/start64.S", "dbg64.c"],
    linkAddress: MIB,
  },
  {
    name: "rloop",
    kind: "elf64",
    sources: ["lib/start64.S", "rloop.c"],
    linkAddress: MIB,
  },
  {
    name: "demo",
    kind: "elf64",
    sources: ["lib/start64.S", "demo.c"],
    linkAddress: MIB,
  },
  {
    name: "smp",
    kind: "elf32",
    sources: ["lib/start32.S", "smp.c", "smp_tramp.S"],
    linkAddress: MIB,
  },
  {
    name: "smp_calls",
    kind: "elf64",
    sources: ["lib/start64.S", "smp_calls.c", "smp64_tramp.S"],
    linkAddress: MIB,
  },
  {
    name: "pit_irq",
    kind: "elf32",
    sources: ["lib/start32.S", "pit_irq.c"],
    linkAddress: MIB,
  },
  {
    name: "lapic_timer",
    kind: "elf32",
    sources: ["lib/start32.S", "lapic_timer.c"],
    linkAddress: MIB,
  },
  {
    name: "serial_irq",
    kind: "elf32",
    sources: ["lib/start32.S", "serial_irq.c"],
    linkAddress: MIB,
  },
  {
    name: "fwcfg",
    kind: "elf32",
    sources: ["lib/start32.S", "fwcfg.c"],
    linkAddress: MIB,
  },
  {
    name: "madt",
    kind: "elf32",
    sources: ["lib/start32.S", "madt.c"],
    linkAddress: MIB,
  },
  {
    name: "virtio",
    kind: "elf32",
    sources: ["mb_hello_entry.S", "virtio.c"],
    linkAddress: MIB,
  },
  {
    name: "reset",
    kind: "elf32",
    sources: ["lib/start32.S", "reset.c"],
    linkAddress: MIB,
  },
  { name: "linux_init", kind: "user64", sources: ["linux_init.c"], linkAddress: 0 },
];

/** Flags for C sources (both widths). */
const CFLAGS = [
  "-ffreestanding",
  "-nostdlib",
  "-fno-pic",
  "-fno-pie",
  "-static",
  "-fno-omit-frame-pointer",
  "-mno-omit-leaf-frame-pointer", // see also FORCE_FRAME() in lib/serial.h
  "--param=max-completely-peel-times=0", // keep small loops as loops
  "-fno-optimize-sibling-calls", // keep every call frame for backtraces
  "-fno-stack-protector",
  "-fcf-protection=none",
  "-fno-asynchronous-unwind-tables",
  "-mgeneral-regs-only", // no SSE/x87: the host may not enable them
  "-O1",
  "-g",
  "-Wall",
  "-Wextra",
];

/** Returns true when `kind` produces 64-bit code. */
function is64(kind: GuestKind): boolean {
  return kind === "elf64" || kind === "user64";
}

/** Returns true when `kind` is packaged as a flat binary. */
function isFlat(kind: GuestKind): boolean {
  return kind === "flat16" || kind === "flat32";
}

/** Output file names of a guest; the first one is the primary output. */
function outputNames(g: GuestSpec): string[] {
  return isFlat(g.kind) ? [`${g.name}.bin`, `${g.name}.elf`] : [
    `${g.name}.elf`,
  ];
}

/** Modification time in ms, or undefined when the file does not exist. */
async function mtimeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mtimeMs;
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") return undefined;
    throw err;
  }
}

/** True when some output is missing or older than one of `deps`. */
async function isStale(outputs: string[], deps: string[]): Promise<boolean> {
  let oldestOutput = Infinity;
  for (const out of outputs) {
    const t = await mtimeOf(out);
    if (t === undefined) return true;
    oldestOutput = Math.min(oldestOutput, t);
  }
  for (const dep of deps) {
    const t = await mtimeOf(dep);
    if (t === undefined) throw new Error(`guest source missing: ${dep}`);
    if (t > oldestOutput) return true;
  }
  return false;
}

/**
 * Runs a tool; on failure prints the command and its output and throws.
 * Warnings (stderr of a successful run) are passed through to stderr.
 */
async function run(cmd: string, args: string[]): Promise<void> {
  const res = await new Deno.Command(cmd, {
    args,
    cwd: GUESTS_DIR,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!res.success) {
    const line = [cmd, ...args].join(" ");
    const dec = new TextDecoder();
    const out = dec.decode(res.stdout) + dec.decode(res.stderr);
    console.error(`build_guests: command failed (exit ${res.code}):\n  ${line}`);
    console.error(out);
    throw new Error(`build_guests: ${cmd} failed (exit ${res.code}): ${line}`);
  }
  const warnings = new TextDecoder().decode(res.stderr).trim();
  if (warnings) console.error(warnings);
}

/** Compiles, links and (for flat kinds) objcopies one guest into `tmp`. */
async function buildOne(
  g: GuestSpec,
  tmp: string,
): Promise<string[]> {
  const bits64 = is64(g.kind);
  if (g.kind === "user64") {
    const elf = join(tmp, `${g.name}.elf`);
    await run("gcc", [
      "-static",
      "-nostdlib",
      "-fno-pic",
      "-no-pie",
      "-fno-stack-protector",
      "-fcf-protection=none",
      "-O1",
      "-Wall",
      "-Wextra",
      "-Wl,--build-id=none",
      "-o",
      elf,
      ...g.sources.map((s) => join(GUESTS_DIR, s)),
    ]);
    return [elf];
  }
  const objs: string[] = [];
  for (const [i, src] of g.sources.entries()) {
    const obj = join(tmp, `${i}.o`);
    const args = [bits64 ? "-m64" : "-m32", "-I", LIB_DIR, "-g", "-c"];
    if (src.endsWith(".c")) {
      args.push(...CFLAGS);
      if (bits64) args.push("-mno-red-zone", "-mcmodel=small");
    }
    args.push("-o", obj, join(GUESTS_DIR, src));
    await run("gcc", args);
    objs.push(obj);
  }

  const elf = join(tmp, `${g.name}.elf`);
  await run("ld", [
    "-m",
    bits64 ? "elf_x86_64" : "elf_i386",
    "-T",
    join(LIB_DIR, bits64 ? "link64.ld" : "link32.ld"),
    `-Ttext=0x${g.linkAddress.toString(16)}`,
    ...STANDALONE_LINK_FLAGS,
    "-o",
    elf,
    ...objs,
  ]);
  if (!isFlat(g.kind)) return [elf];

  const bin = join(tmp, `${g.name}.bin`);
  await run("objcopy", ["-O", "binary", elf, bin]);
  return [bin, elf];
}

/** Builds one guest if stale; returns its output paths (primary first). */
async function ensureGuest(g: GuestSpec, deps: string[]): Promise<string[]> {
  const outputs = outputNames(g).map((n) => join(GUEST_BUILD_DIR, n));
  const srcs = g.sources.map((s) => join(GUESTS_DIR, s));
  if (!(await isStale(outputs, [...srcs, ...deps]))) return outputs;

  const tmp = await mkdtemp(join(GUEST_BUILD_DIR, `.tmp-${g.name}-`));
  try {
    const built = await buildOne(g, tmp);
    // Rename the primary output last: its presence and mtime mark the guest
    // as built for isStale(). Renames within one folder are atomic.
    for (let i = built.length - 1; i >= 0; i--) {
      const from = built[i];
      const to = outputs[i];
      if (from === undefined || to === undefined) {
        throw new Error(`build_guests: output list mismatch for ${g.name}`);
      }
      await rename(from, to);
    }
    console.error(`build_guests: built ${outputNames(g).join(", ")}`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return outputs;
}

/**
 * Builds every test guest in `tests/guests/` that is missing or out of date
 * into `tests/guests/build/` (safe to call from several processes at once).
 *
 * @returns a map from output file name (e.g. `"hello16.bin"`,
 *   `"hello16.elf"`, `"dbg64.elf"`) to its absolute path.
 * @throws Error when a compiler, linker or objcopy invocation fails (the
 *   failing command and its output are printed to stderr first).
 */
export async function buildGuests(): Promise<Map<string, string>> {
  await mkdir(GUEST_BUILD_DIR, { recursive: true });
  const libFiles = (await readdir(LIB_DIR)).sort().map((f) => join(LIB_DIR, f));
  const deps = [SCRIPT_PATH, ...libFiles];

  // Build all guests in parallel; wait for every one (so temp folders are
  // cleaned up) before reporting the first failure.
  const results = await Promise.allSettled(
    GUESTS.map((g) => ensureGuest(g, deps)),
  );
  const map = new Map<string, string>();
  for (const r of results) {
    if (r.status === "rejected") throw r.reason;
    for (const path of r.value) map.set(basename(path), path);
  }
  return map;
}

if (import.meta.main) {
  try {
    const outputs = await buildGuests();
    for (const [name, path] of outputs) console.log(`${name}\t${path}`);
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    Deno.exit(1);
  }
}
