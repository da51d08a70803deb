/**
 * `assemble()`: builds a small kernel from assembly (`.S`) and freestanding
 * C (`.c`) sources with the host's gcc and ld, cached by content: a second
 * call with the same sources, headers and options returns the image built
 * before without running a tool.
 *
 * The cache entry's name is a hash of the options and of every source's
 * path and content; the entry records the headers the compiler read (gcc
 * `-MD`) with their hashes, and a changed header rebuilds it. Entries are
 * built in a temporary folder and renamed into place, so concurrent test
 * processes never see a half-written image.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { detectFormat } from "../core/loader/detect_format.ts";

/** Bumped when the way images are built changes, so old cache entries are not reused. */
const RECIPE_VERSION = 1;

/**
 * What to build:
 * - `"multiboot"`: a 32-bit ELF linked at 1 MiB whose sources carry a
 *   Multiboot 1 header (in a `.multiboot` section, which goes first);
 * - `"elf32"` / `"elf64"`: an ELF entered at `_start` in flat protected mode
 *   or in long mode with identity-mapped RAM (as hvsh loads them);
 * - `"flat"`: a 16-bit flat binary for `linkAddress` (default 0x7c00).
 */
export type AssembleFormat = "multiboot" | "elf32" | "elf64" | "flat";

/**
 * ld flags for a freestanding kernel image: no libc, static, no build-id
 * note, 4 KiB segment alignment, no executable-stack or RWX-segment notes
 * (one PT_LOAD that is read, write and execute). The test guests' build
 * uses them too.
 */
export const STANDALONE_LINK_FLAGS: readonly string[] = [
  "-nostdlib",
  "-static",
  "--build-id=none",
  "-z",
  "max-page-size=0x1000",
  "-z",
  "noexecstack",
  "--no-warn-rwx-segments",
];

/** Options of {@link assemble}. */
export interface AssembleOptions {
  /** What to build. Default `"multiboot"`. */
  format?: AssembleFormat;
  /** Where the image is linked. Default 1 MiB (0x7c00 for `"flat"`). */
  linkAddress?: number;
  /** Extra folders for `#include` (each source's own folder is searched first). */
  includeDirs?: string[];
  /** Extra flags for gcc, after hvsh's. */
  cflags?: string[];
  /** Where built images are kept. Default `$HVSH_CACHE_DIR`, else `$XDG_CACHE_HOME/hvsh`, else `~/.cache/hvsh`. */
  cacheDir?: string;
}

/** Flags for freestanding C: no libc, no SSE or x87 (a tiny kernel enables neither), frame pointers for backtraces. */
const C_FLAGS = [
  "-ffreestanding",
  "-nostdlib",
  "-fno-pic",
  "-fno-pie",
  "-fno-stack-protector",
  "-fcf-protection=none",
  "-fno-asynchronous-unwind-tables",
  "-fno-omit-frame-pointer",
  "-mgeneral-regs-only",
  "-O1",
  "-Wall",
];

function linkerScript(bits: 32 | 64): string {
  return `OUTPUT_FORMAT("${bits === 64 ? "elf64-x86-64" : "elf32-i386"}")
ENTRY(_start)
PHDRS { image PT_LOAD FLAGS(7); }
SECTIONS {
  .text : { KEEP(*(.multiboot)) *(.text.entry) *(.text .text.*) } :image
  .rodata : { *(.rodata .rodata.*) } :image
  .data : { *(.data .data.*) } :image
  .bss : { *(.bss .bss.*) *(COMMON) *(.stack) } :image
  /DISCARD/ : { *(.note .note.*) *(.comment) *(.eh_frame .eh_frame_hdr) }
}
`;
}

function sha256(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

function defaultCacheDir(): string {
  const explicit = Deno.env.get("HVSH_CACHE_DIR");
  if (explicit) return explicit;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  return join(xdg ? xdg : join(homedir(), ".cache"), "hvsh");
}

function toPath(source: string | URL): string {
  if (source instanceof URL) return fileURLToPath(source);
  return source.startsWith("file:") ? fileURLToPath(source) : resolve(source);
}

/** What a cache entry records beside its image. */
interface CacheEntry {
  image: string;
  /** Every file the build read (sources and headers) with its sha256. */
  inputs: Record<string, string>;
}

async function entryIsCurrent(dir: string): Promise<string | undefined> {
  let entry: CacheEntry;
  try {
    entry = JSON.parse(await readFile(join(dir, "entry.json"), "utf8"));
  } catch {
    return undefined;
  }
  for (const [path, hash] of Object.entries(entry.inputs)) {
    try {
      if (sha256(await readFile(path)) !== hash) return undefined;
    } catch {
      return undefined;
    }
  }
  return join(dir, entry.image);
}

async function runTool(what: string, command: string, args: string[], cwd: string): Promise<void> {
  let result;
  try {
    result = await new Deno.Command(command, { args, cwd, stdin: "null", stdout: "piped", stderr: "piped" }).output();
  } catch (error) {
    throw new Error(
      `Cannot assemble ${what}: cannot run ${command} (${(error as Error).message}); install gcc and binutils`,
      { cause: error },
    );
  }
  if (!result.success) {
    const output = new TextDecoder().decode(result.stderr) + new TextDecoder().decode(result.stdout);
    throw new Error(
      `Cannot assemble ${what}: ${command} exited with status ${result.code}\n  ${command} ${
        args.join(" ")
      }\n${output}`,
    );
  }
}

/** The files a gcc `-MD` dependency file lists (the object's prerequisites). */
function parseDependencies(text: string): string[] {
  const body = text.replace(/\\\n/g, " ");
  const colon = body.indexOf(": ");
  return body.slice(colon + 2).split(/\s+/).filter((path) => path !== "");
}

/**
 * Builds a kernel image from `.S` and `.c` sources (paths relative to the
 * current folder, or file URLs) and returns the image's absolute path.
 * Throws an Error naming the failing command and the compiler's messages
 * when a tool fails, and when a `"multiboot"` image has no Multiboot header.
 *
 * @example
 * ```ts ignore
 * import { assemble, bootKernel } from "hvsh/testing.ts";
 * const kernel = await assemble("boot.S", { format: "multiboot" });
 * const c = await assemble([new URL("./entry.S", import.meta.url), new URL("./main.c", import.meta.url)]);
 * ```
 */
export async function assemble(
  sources: string | URL | readonly (string | URL)[],
  options: AssembleOptions = {},
): Promise<string> {
  const paths = (Array.isArray(sources) ? sources : [sources] as (string | URL)[]).map(toPath);
  if (paths.length === 0) throw new TypeError("Cannot assemble: no sources given");
  const format = options.format ?? "multiboot";
  if (!["multiboot", "elf32", "elf64", "flat"].includes(format)) {
    throw new TypeError(`Cannot assemble: unknown format ${JSON.stringify(format)} (multiboot, elf32, elf64, flat)`);
  }
  const what = paths.map((path) => basename(path)).join(", ");
  for (const path of paths) {
    if (!/\.(S|c)$/.test(path)) throw new TypeError(`Cannot assemble ${path}: expected a .S or .c source`);
  }
  const linkAddress = options.linkAddress ?? (format === "flat" ? 0x7c00 : 0x10_0000);
  const includeDirs = (options.includeDirs ?? []).map((dir) => resolve(dir));
  const cflags = options.cflags ?? [];
  const contents: [string, string][] = [];
  for (const path of paths) {
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch (error) {
      throw new Error(`Cannot assemble ${what}: cannot read ${path}: ${(error as Error).message}`, { cause: error });
    }
    contents.push([path, sha256(bytes)]);
  }
  const key = sha256(JSON.stringify({ RECIPE_VERSION, format, linkAddress, includeDirs, cflags, contents }));
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const entryDir = join(cacheDir, "kernels", key.slice(0, 32));
  const cached = await entryIsCurrent(entryDir);
  if (cached !== undefined) return cached;

  await mkdir(join(cacheDir, "kernels"), { recursive: true });
  const work = await mkdtemp(join(cacheDir, "kernels", ".build-"));
  try {
    const bits = format === "elf64" ? 64 : 32;
    const objects: string[] = [];
    const inputs: Record<string, string> = {};
    for (const [index, path] of paths.entries()) {
      const object = join(work, `${index}.o`);
      const args = [bits === 64 ? "-m64" : "-m32", "-c", "-g", "-MD", "-MF", join(work, `${index}.d`)];
      for (const dir of includeDirs) args.push("-I", dir);
      if (path.endsWith(".c")) args.push(...C_FLAGS, ...(bits === 64 ? ["-mno-red-zone"] : []));
      args.push(...cflags, "-o", object, path);
      await runTool(what, "gcc", args, dirname(path));
      objects.push(object);
      const dependencies = parseDependencies(await readFile(join(work, `${index}.d`), "utf8"));
      for (const dependency of dependencies) {
        const absolute = isAbsolute(dependency) ? dependency : resolve(dirname(path), dependency);
        inputs[absolute] = sha256(await readFile(absolute));
      }
      inputs[path] = contents[index]![1];
    }
    await writeFile(join(work, "link.ld"), linkerScript(bits));
    const elf = join(work, "kernel.elf");
    await runTool(what, "ld", [
      "-m",
      bits === 64 ? "elf_x86_64" : "elf_i386",
      "-T",
      join(work, "link.ld"),
      `-Ttext=0x${linkAddress.toString(16)}`,
      ...STANDALONE_LINK_FLAGS,
      "-o",
      elf,
      ...objects,
    ], work);
    let image = "kernel.elf";
    if (format === "flat") {
      await runTool(what, "objcopy", ["-O", "binary", elf, join(work, "kernel.bin")], work);
      image = "kernel.bin";
    }
    if (format === "multiboot" && detectFormat(await readFile(elf)) !== "multiboot") {
      throw new Error(
        `Cannot assemble ${what} as a multiboot kernel: it has no Multiboot header in its first 8 KiB ` +
          `(put the magic 0x1BADB002, flags and checksum in a .multiboot section, or use format "elf32")`,
      );
    }
    const entry: CacheEntry = { image, inputs };
    await writeFile(join(work, "entry.json"), JSON.stringify(entry, null, 1));
    await rm(entryDir, { recursive: true, force: true });
    try {
      await rename(work, entryDir);
    } catch (error) {
      // Another process put the same entry in place first: theirs is as good.
      if ((await entryIsCurrent(entryDir)) === undefined) throw error;
      await rm(work, { recursive: true, force: true });
    }
    return join(entryDir, image);
  } catch (error) {
    await rm(work, { recursive: true, force: true });
    throw error;
  }
}
