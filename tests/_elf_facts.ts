/**
 * Facts about a test guest's ELF file read without hvsh's own code, so tests
 * can check hvsh's answers against them: call sites and instructions as
 * binutils' objdump decodes them, and where bytes of the file land in guest
 * physical memory according to the program headers (parsed here).
 *
 * @module
 */

interface Disassembly {
  /** Function name -> start address. */
  functions: Map<string, bigint>;
  /** Per function, its instructions in order: address, raw bytes (hex, spaced), text (spaces collapsed). */
  instructions: Map<string, { address: bigint; bytes: string; text: string }[]>;
}

const cache = new Map<string, Disassembly>();

/** `objdump -d -M intel ELF`, parsed. */
export function disassembly(elf: string): Disassembly {
  const cached = cache.get(elf);
  if (cached !== undefined) return cached;
  const out = new Deno.Command("objdump", { args: ["-d", "-M", "intel", "-w", elf], stdout: "piped" }).outputSync();
  if (!out.success) throw new Error(`objdump -d ${elf} failed`);
  const result: Disassembly = { functions: new Map(), instructions: new Map() };
  let current: { address: bigint; bytes: string; text: string }[] | undefined;
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    const head = /^([0-9a-f]+) <([^>]+)>:$/.exec(line);
    if (head !== null) {
      current = [];
      result.functions.set(head[2]!, BigInt(`0x${head[1]}`));
      result.instructions.set(head[2]!, current);
      continue;
    }
    const insn = /^\s+([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$/.exec(line);
    if (insn !== null && current !== undefined) {
      current.push({
        address: BigInt(`0x${insn[1]}`),
        bytes: insn[2]!.trim(),
        text: insn[3]!.replace(/\s+/g, " ").trim(),
      });
    }
  }
  cache.set(elf, result);
  return result;
}

/** `caller+N` (N decimal) for the return address of the call from `caller` to `callee`, as objdump decodes it. */
export function returnSite(elf: string, caller: string, callee: string): string {
  const { functions, instructions } = disassembly(elf);
  const code = instructions.get(caller) ?? [];
  const at = code.findIndex((insn) => /^call /.test(insn.text) && insn.text.endsWith(`<${callee}>`));
  if (at < 0 || at + 1 >= code.length) throw new Error(`objdump shows no call from ${caller} to ${callee} in ${elf}`);
  return `${caller}+${code[at + 1]!.address - functions.get(caller)!}`;
}

/** Guest physical addresses where `needle` lies in the ELF's PT_LOAD segments (file bytes only). */
export function loadedOccurrences(elf: string, needle: Uint8Array): bigint[] {
  const file = Deno.readFileSync(elf);
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (view.getUint32(0) !== 0x7f454c46 || file[4] !== 2) throw new Error(`${elf} is not an ELF64 file`);
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true);
  const phnum = view.getUint16(0x38, true);
  const hits: bigint[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (view.getUint32(at, true) !== 1) continue; // PT_LOAD
    const offset = Number(view.getBigUint64(at + 8, true));
    const paddr = view.getBigUint64(at + 24, true);
    const filesz = Number(view.getBigUint64(at + 32, true));
    const segment = file.subarray(offset, offset + filesz);
    for (let j = 0; j + needle.length <= segment.length; j++) {
      if (needle.every((b, k) => segment[j + k] === b)) hits.push(paddr + BigInt(j));
    }
  }
  return hits.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}
