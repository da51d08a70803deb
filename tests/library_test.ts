/**
 * hvsh as a library imported from other folders: its npm dependencies are
 * named with `npm:NAME@VERSION` specifiers (so Deno resolves them outside the
 * checkout too), and each version is the one package.json pins (so inside
 * the checkout the same package comes from node_modules/).
 */

import assert from "node:assert/strict";
import { join, relative } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;

async function* sources(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory && !["node_modules", ".git", "build"].includes(entry.name)) yield* sources(path);
    else if (entry.isFile && entry.name.endsWith(".ts")) yield path;
  }
}

Deno.test("every npm: specifier in hvsh's sources names the version package.json pins, and no bare one is left", async () => {
  const pins = JSON.parse(await Deno.readTextFile(join(ROOT, "package.json"))).dependencies as Record<string, string>;
  const seen = new Set<string>();
  for await (const path of sources(ROOT)) {
    const text = await Deno.readTextFile(path);
    for (const match of text.matchAll(/import\("npm:(@?[^@"]+)@([^"]+)"\)/g)) {
      const [, name, version] = match;
      assert.equal(
        version,
        pins[name!],
        `${relative(ROOT, path)}: npm:${name}@${version}, package.json pins ${pins[name!]}`,
      );
      seen.add(name!);
    }
    for (const bare of ["iced-x86", "esbuild"]) {
      assert.ok(!text.includes(`import("${bare}")`), `${relative(ROOT, path)} imports the bare specifier "${bare}"`);
    }
  }
  assert.deepEqual([...seen].sort(), ["esbuild", "iced-x86"]);
});
