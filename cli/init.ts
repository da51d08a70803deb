/**
 * `hvsh init DIR`: makes a ready kernel project in DIR: a small Multiboot
 * kernel (`boot.S`), its tests (`kernel_test.ts`, with the kit in
 * `testing.ts`), a `deno.json` whose import map points `hvsh/` at this
 * checkout, and a README. `deno test -A` passes there at once.
 *
 * @module
 */

import { basename, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The usage text of `hvsh init`. */
export const INIT_USAGE = `usage: hvsh init DIR

Makes a kernel project in DIR (new, or empty): boot.S (a Multiboot kernel in assembly),
kernel_test.ts (its tests, with hvsh's kit), deno.json (imports "hvsh/" from this checkout;
"deno task test" runs the tests with hvsh's Deno) and README.md.`;

const HVSH_ROOT = fileURLToPath(new URL("..", import.meta.url));
const TEMPLATE = new URL("../kit/template/", import.meta.url);

/** The files of a new project, by name. */
export async function projectFiles(name: string): Promise<Map<string, string>> {
  const deno = join(HVSH_ROOT, "node_modules", ".bin", "deno");
  const fill = (text: string) =>
    text.replaceAll("{{name}}", name).replaceAll("{{hvsh}}", HVSH_ROOT).replaceAll("{{deno}}", deno);
  const read = (file: string) => Deno.readTextFile(new URL(file, TEMPLATE));
  const denoJson = {
    imports: { "hvsh/": pathToFileURL(HVSH_ROOT).href.replace(/\/?$/, "/") },
    tasks: { test: `${deno} test -A` },
  };
  return new Map([
    ["boot.S", await read("boot.S")],
    ["kernel_test.ts", await read("kernel_test.ts.tmpl")],
    ["deno.json", JSON.stringify(denoJson, null, 2) + "\n"],
    ["README.md", fill(await read("README.md.tmpl"))],
  ]);
}

/** Runs `hvsh init ARGS`; returns the exit status (2 on a usage error or a folder that is not empty). */
export async function initCommand(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(INIT_USAGE);
    return 0;
  }
  if (args.length !== 1 || args[0]!.startsWith("-")) {
    console.error(`hvsh init: expected one folder, got ${JSON.stringify(args)}\n${INIT_USAGE}`);
    return 2;
  }
  const dir = resolve(args[0]!);
  try {
    const entries = [...Deno.readDirSync(dir)].map((entry) => entry.name);
    if (entries.length > 0) {
      console.error(`hvsh init: ${dir} is not empty (${entries.slice(0, 5).join(", ")}): choose a new folder`);
      return 2;
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      console.error(`hvsh init: cannot use ${dir}: ${(error as Error).message}`);
      return 2;
    }
  }
  const files = await projectFiles(basename(dir));
  try {
    await Deno.mkdir(dir, { recursive: true });
    for (const [name, text] of files) await Deno.writeTextFile(join(dir, name), text);
  } catch (error) {
    console.error(`hvsh init: cannot write the project in ${dir}: ${(error as Error).message}`);
    return 2;
  }
  const deno = join(HVSH_ROOT, "node_modules", ".bin", "deno");
  console.log(`hvsh init: made ${dir}: ${[...files.keys()].join(", ")}`);
  console.log(`run its tests: cd ${dir} && ${deno} test -A`);
  return 0;
}
