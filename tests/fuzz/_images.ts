// Test-only: generated guest images (code from _asm.ts wrapped in an ELF),
// shared by the fuzz targets and the regression tests for hostile input.

import { buildElf, type SegmentSpec } from "../../core/loader/_test_images.ts";
import { Code } from "./_asm.ts";

/** Where generated guests put their code (1 MiB, clear of every boot structure). */
export const CODE_ADDRESS = 0x10_0000;

/** An ELF image (ELF32: protected mode, ELF64: long mode) whose code sits at {@linkcode CODE_ADDRESS}. */
export function elfGuest(code: Code, extraSegments: SegmentSpec[] = []): Uint8Array {
  return buildElf({
    class: code.bits,
    entry: CODE_ADDRESS,
    segments: [{ paddr: CODE_ADDRESS, data: code.bytes(), flags: 5 }, ...extraSegments],
  });
}

/**
 * A 64-bit guest that writes `count` bytes of `byte` to COM1, then exits
 * with debug-exit code `exitCode` (or spins forever when `spin` is set).
 */
export function floodGuest(
  count: number,
  options: { byte?: number; exitCode?: number; spin?: boolean } = {},
): Uint8Array {
  const code = new Code(64).movEdx(0x3f8).movEcx(count).movEax(options.byte ?? 0x41).outDxLoop();
  if (options.spin) code.spin();
  else code.exit(options.exitCode ?? 0);
  return elfGuest(code);
}

/** A 64-bit guest that writes `text` to COM1, then spins without exits (it stops only when hvsh stops it). */
export function printThenSpinGuest(text: string): Uint8Array {
  const code = new Code(64).movEdx(0x3f8);
  for (const byte of new TextEncoder().encode(text)) code.movEax(byte).outDx(1);
  code.spin();
  return elfGuest(code);
}

/** Writes bytes to a new temporary file and returns its path. */
export async function tempImage(bytes: Uint8Array, dir?: string): Promise<string> {
  const path = await Deno.makeTempFile({ ...(dir === undefined ? {} : { dir }), suffix: ".elf" });
  await Deno.writeFile(path, bytes);
  return path;
}
