/**
 * Builds the REPL's demo guest image, `repl/demo/demo.elf`, from
 * tests/guests/demo.c and its start-up code, and records the digest of those
 * sources beside it. The image is checked into the repository so that
 * `./hvsh` opens the demo VM without a C toolchain and without running gcc;
 * tests/demo_image_test.ts fails when the sources change and the image was
 * not rebuilt (`deno task demo`).
 *
 * @module
 */

import { createHash } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { buildGuests } from "./build_guests.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const GUESTS = join(ROOT, "tests", "guests");

/** The demo image the REPL opens. */
export const DEMO_IMAGE: string = join(ROOT, "repl", "demo", "demo.elf");
/** The sha-256 of the sources it was built from, one hex line. */
export const DEMO_DIGEST: string = join(ROOT, "repl", "demo", "demo.elf.sources.sha256");
/** What the image is built from: the guest, its start-up code, the headers and the linker script. */
export const DEMO_SOURCES: readonly string[] = ["demo.c", "lib/start64.S", "lib/serial.h", "lib/link64.ld"];

/** The digest of the demo's sources as they are now. */
export async function demoSourcesDigest(): Promise<string> {
  const hash = createHash("sha256");
  for (const source of DEMO_SOURCES) {
    hash.update(`${source}\0`);
    hash.update(await Deno.readFile(join(GUESTS, source)));
  }
  return hash.digest("hex");
}

/** Builds demo.elf, keeps its symbols but not its debug sections (they hold this machine's paths), and records the digest. */
export async function buildDemo(): Promise<string> {
  const built = (await buildGuests()).get("demo.elf");
  if (built === undefined) throw new Error("build_guests did not build demo.elf");
  const strip = await new Deno.Command("objcopy", { args: ["--strip-debug", built, DEMO_IMAGE] }).output();
  if (!strip.success) throw new Error(`objcopy --strip-debug failed: ${new TextDecoder().decode(strip.stderr)}`);
  await Deno.writeTextFile(DEMO_DIGEST, `${await demoSourcesDigest()}\n`);
  return DEMO_IMAGE;
}

if (import.meta.main) {
  console.log(await buildDemo());
}
