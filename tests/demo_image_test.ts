// The REPL's demo guest ships as a checked-in image: it must match its
// sources, and `./hvsh` must open it on a machine without a C toolchain.

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEMO_DIGEST, DEMO_IMAGE, demoSourcesDigest } from "../scripts/build_demo.ts";
import { readElfSymbols } from "../core/loader/elf.ts";
import { kvmAvailable, kvmMissingReason, runHvsh } from "./_helpers.ts";

Deno.test("repl/demo/demo.elf was built from the demo's sources as they are now (else: deno task demo)", async () => {
  const recorded = (await Deno.readTextFile(DEMO_DIGEST)).trim();
  assert.equal(recorded, await demoSourcesDigest(), "the demo's sources changed: run `deno task demo` and commit");
  const names = readElfSymbols(await Deno.readFile(DEMO_IMAGE)).map((s) => s.name);
  for (const name of ["tick", "compute", "delay", "main", "ticks", "last_result"]) {
    assert.ok(names.includes(name), `demo.elf keeps the symbol ${name}`);
  }
});

Deno.test({
  name: kvmAvailable
    ? "./hvsh opens the demo VM with no compiler on PATH and runs no build"
    : `./hvsh opens the demo VM with no compiler on PATH (ignored: ${kvmMissingReason})`,
  ignore: !kvmAvailable,
  async fn() {
    // A PATH with only what the launcher script itself uses: no gcc, ld, objcopy or npm.
    const bin = await Deno.makeTempDir({ prefix: "hvsh-nocc-" });
    try {
      for (const tool of ["sh", "dirname"]) {
        const found = new Deno.Command("sh", { args: ["-c", `command -v ${tool}`], stdout: "piped" }).outputSync();
        await Deno.symlink(new TextDecoder().decode(found.stdout).trim(), join(bin, tool));
      }
      const { code, stdout, stderr } = await runHvsh([], {
        input: ".sym tick\n.exit\n",
        env: { PATH: bin, HOME: bin },
        clearEnv: true,
      });
      assert.equal(code, 0, stderr);
      assert.match(stdout, /= tick|tick = /, stdout);
      assert.doesNotMatch(stderr, /build_guests|gcc|not found/);
    } finally {
      await Deno.remove(bin, { recursive: true });
    }
  },
});
