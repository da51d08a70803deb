/**
 * Fuzz target "images": generated and mutated ELF32, ELF64, multiboot (ELF
 * and a.out kludge) and flat images, loaded the way `hvsh boot` loads them
 * (`Vm.load` on a VM with the PC platform). Each must load, or be refused
 * with a SyntaxError, TypeError or RangeError whose message says which image
 * and which field ("Cannot load ELF image "x": program header 3 ..."): never
 * a JavaScript internal error, a crash or a hang. A loaded image runs for a
 * few milliseconds and must stop or time out without `run()` throwing. Every
 * few cases the same image goes through the real `./hvsh boot` process, whose
 * status must be one `hvsh boot --help` documents, with no stack trace.
 *
 * @module
 */

import { Vm } from "../../core/vm.ts";
import { buildAoutKernel, buildElfLayout, multibootHeader, type SegmentSpec } from "../../core/loader/_test_images.ts";
import { SeededRandom } from "./_random.ts";
import type { FuzzRandom, FuzzReport, FuzzTarget } from "./_target.ts";

const HVSH = new URL("../../hvsh", import.meta.url).pathname;
const RAM_BYTES = 8 << 20;

/** Messages that betray a JavaScript error escaping the loader instead of a check naming a field. */
const INTERNAL_ERROR =
  /is not a function|Cannot read properties|undefined|Offset is outside the bounds|Invalid typed array length|Array buffer allocation failed|Maximum call stack|out of memory|Cannot convert|Invalid array length|NaN/;

const INTERESTING = [0, 1, 2, 3, 0x40, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff];

function randomSegments(random: FuzzRandom, is64: boolean): SegmentSpec[] {
  const count = 1 + random.int(4);
  const segments: SegmentSpec[] = [];
  const lowAddresses = [0, 0x500, 0x1000, 0x3000, 0x7c00, 0x9f000, 0xe0000, 0xf0000, 0x100000, 0x200000];
  for (let i = 0; i < count; i++) {
    const data = random.bytes(random.int(64));
    const paddr = random.int(3) === 0
      ? random.pick(lowAddresses)
      : random.int(4) === 0
      ? random.int(0x1_0000_0000)
      : 0x100000 + random.int(0x300) * 0x1000;
    const segment: SegmentSpec = { paddr, data, flags: 7 };
    if (random.int(3) === 0) segment.memsz = data.length + random.int(0x4000);
    if (is64 && random.int(5) === 0) segment.vaddr = 0xffff_ffff_8000_0000n + BigInt(paddr);
    if (random.int(6) === 0) segment.type = random.pick([0, 2, 4, 6, 7, 0x6474e551]);
    segments.push(segment);
  }
  return segments;
}

/** A well-formed image of a random kind, before mutation. */
function baseImage(random: FuzzRandom): { bytes: Uint8Array; kind: string; fields: Map<string, number> } {
  const kind = random.pick(["elf32", "elf64", "multiboot-elf32", "multiboot-elf64", "multiboot-aout", "flat"]);
  const fields = new Map<string, number>();
  if (kind === "flat") return { bytes: random.bytes(1 + random.int(512)), kind, fields };
  if (kind === "multiboot-aout") {
    const kernel = buildAoutKernel({
      loadAddr: random.pick([0x100000, 0x200000, 0x500, 0x1000, random.int(0x1_0000_0000)]),
      code: [...random.bytes(random.int(32))],
      fileSize: random.int(0x3000),
      headerOffset: random.int(2048) * 4,
      flags: random.pick([0x3, 0x7, 0x1, 0x0, 0x10000 | random.int(0x10000)]),
    });
    const headerOffset = kernel.bytes.findIndex((_, i) =>
      new DataView(kernel.bytes.buffer).getUint32(i, true) === 0x1badb002 && i % 4 === 0
    );
    if (headerOffset >= 0) {
      ["magic", "flags", "checksum", "header_addr", "load_addr", "load_end_addr", "bss_end_addr", "entry_addr"]
        .forEach((name, i) => fields.set(name, headerOffset + i * 4));
    }
    return { bytes: kernel.bytes, kind, fields };
  }
  const is64 = kind.endsWith("64");
  const segments = randomSegments(random, is64);
  if (kind.startsWith("multiboot")) {
    // The multiboot header goes in the first segment's data, within the first 8 KiB of the file.
    const header = multibootHeader({ flags: random.pick([0x3, 0x1, 0x2]) });
    const first = segments[0]!;
    first.data = new Uint8Array([...header, ...first.data]);
  }
  const entryBase = segments[0]!.vaddr ?? segments[0]!.paddr;
  const entry = random.int(4) === 0 ? BigInt(random.int(0x1_0000_0000)) : BigInt(entryBase) + BigInt(random.int(16));
  const layout = buildElfLayout({ class: is64 ? 64 : 32, entry, segments });
  const field64 = (name: string, offset32: number, offset64: number) => fields.set(name, is64 ? offset64 : offset32);
  field64("e_entry", 24, 24);
  field64("e_phoff", 28, 32);
  field64("e_shoff", 32, 40);
  field64("e_phentsize", 42, 54);
  field64("e_phnum", 44, 56);
  field64("e_shentsize", 46, 58);
  field64("e_shnum", 48, 60);
  field64("e_shstrndx", 50, 62);
  fields.set("e_machine", 18);
  fields.set("EI_CLASS", 4);
  fields.set("EI_DATA", 5);
  fields.set("e_type", 16);
  const phNames = is64
    ? [["p_type", 0], ["p_offset", 8], ["p_paddr", 24], ["p_filesz", 32], ["p_memsz", 40]]
    : [["p_type", 0], ["p_offset", 4], ["p_paddr", 12], ["p_filesz", 16], ["p_memsz", 20]];
  segments.forEach((_, i) => {
    for (const [name, offset] of phNames) {
      fields.set(`ph${i}.${name}`, layout.phoff + i * layout.phentsize + (offset as number));
    }
  });
  return { bytes: layout.bytes, kind, fields };
}

/** Applies a few random mutations: field overwrites with interesting values, byte flips, truncation, growth. */
function mutate(random: FuzzRandom, image: { bytes: Uint8Array; fields: Map<string, number> }): {
  bytes: Uint8Array;
  mutations: string[];
} {
  let bytes = image.bytes.slice();
  const mutations: string[] = [];
  const rounds = random.int(4);
  for (let round = 0; round < rounds; round++) {
    const choice = random.int(5);
    if (choice <= 1 && image.fields.size > 0) {
      const [name, offset] = random.pick([...image.fields.entries()]);
      const value = random.int(2) === 0 ? random.pick(INTERESTING) : random.int(0x1_0000_0000);
      const width = name.startsWith("EI_") ? 1 : name.includes("ent") || name.includes("num") || name.includes("ndx") ||
          name === "e_machine" || name === "e_type"
        ? 2
        : 4;
      if (offset + width <= bytes.length) {
        for (let i = 0; i < width; i++) bytes[offset + i] = (value >>> (8 * i)) & 0xff;
        mutations.push(`${name}=0x${value.toString(16)}`);
      }
    } else if (choice === 2 && bytes.length > 0) {
      const count = 1 + random.int(8);
      for (let i = 0; i < count; i++) bytes[random.int(bytes.length)] = random.int(256);
      mutations.push(`${count} random bytes`);
    } else if (choice === 3) {
      const length = random.int(bytes.length + 1);
      bytes = bytes.slice(0, length);
      mutations.push(`truncated to ${length}`);
    } else {
      const extra = random.bytes(random.int(9000));
      bytes = new Uint8Array([...bytes, ...extra]);
      mutations.push(`${extra.length} bytes appended`);
    }
  }
  return { bytes, mutations };
}

/** Loads one image into `vm`; returns what went wrong, or undefined. */
async function loadCase(vm: Vm, bytes: Uint8Array, format: string): Promise<string | undefined> {
  let loaded;
  try {
    loaded = await vm.load(bytes, { path: "fuzz.img", format: format as "auto" });
  } catch (error) {
    const e = error as Error;
    const known = e instanceof SyntaxError || e instanceof TypeError || e instanceof RangeError;
    if (!known) return `refused with ${e.name}, not SyntaxError/TypeError/RangeError: ${e.message}`;
    if (!/^Cannot (load|parse) [^:]+: \S/.test(e.message)) return `refused without naming the image: ${e.message}`;
    if (INTERNAL_ERROR.test(e.message)) return `refused with an internal error: ${e.message}`;
    return undefined;
  }
  if (loaded.format !== "flat" && (loaded.entry < 0n || loaded.entry >= 0x1_0000_0000n && loaded.mode !== "long")) {
    return `loaded with entry 0x${loaded.entry.toString(16)} out of reach of ${loaded.mode} mode`;
  }
  try {
    await vm.run({ timeout: 5 });
  } catch (error) {
    return `run() threw after loading: ${(error as Error).stack ?? error}`;
  }
  return undefined;
}

const DOCUMENTED_STATUS = (code: number) => code === 0 || code === 2 || code === 4 || code === 124 || code % 2 === 1;

/** Runs the image through the real `./hvsh boot`; returns what went wrong, or undefined. */
async function bootCase(bytes: Uint8Array): Promise<string | undefined> {
  const path = await Deno.makeTempFile({ prefix: "hvsh-fuzz-", suffix: ".img" });
  try {
    await Deno.writeFile(path, bytes);
    const out = await new Deno.Command(HVSH, {
      args: ["boot", "--mem", "8M", "--timeout", "0.2", "--kernel", path],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      signal: AbortSignal.timeout(30_000),
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    if (out.signal !== null) return `hvsh boot died by ${out.signal}: ${stderr}`;
    if (!DOCUMENTED_STATUS(out.code)) return `hvsh boot exited ${out.code}: ${stderr}`;
    if (/Uncaught|^\s+at /m.test(stderr)) return `hvsh boot printed a stack trace: ${stderr}`;
    return undefined;
  } finally {
    await Deno.remove(path);
  }
}

/** The "images" fuzz target. */
export const imagesTarget: FuzzTarget = {
  name: "images",
  description: "generated and mutated ELF32/ELF64/multiboot/flat images through Vm.load and ./hvsh boot: " +
    "each loads or is refused naming a field",
  async run(random: FuzzRandom, options: { maxCases: number; deadline: number }): Promise<FuzzReport> {
    const failures: string[] = [];
    let cases = 0;
    let vm = await Vm.create({ memory: RAM_BYTES });
    vm.serial.outputLimit = 4096;
    try {
      while (cases < options.maxCases && performance.now() < options.deadline) {
        const caseSeed = random.int(0x1_0000_0000);
        const caseRandom = new SeededRandom(caseSeed);
        const base = baseImage(caseRandom);
        const { bytes, mutations } = mutate(caseRandom, base);
        const format = caseRandom.pick(["auto", "auto", "auto", "elf", "multiboot", "flat"]);
        const what = `images case ${cases} (case seed ${caseSeed}; ${base.kind}, ${
          mutations.join(", ") || "unmutated"
        }, format ${format})`;
        let problem = await loadCase(vm, bytes, format);
        if (problem === undefined && cases % 25 === 0) problem = await bootCase(bytes);
        cases++;
        if (problem !== undefined) {
          failures.push(`${what}: ${problem}`);
          // Start the next case on a fresh VM, so one failure does not hide the next.
          await vm.close();
          vm = await Vm.create({ memory: RAM_BYTES });
          vm.serial.outputLimit = 4096;
        }
      }
    } finally {
      await vm.close();
    }
    return { cases, failures };
  },
};
