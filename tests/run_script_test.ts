/**
 * `./hvsh run` as a user runs it (real processes): module scripts are
 * type-checked first (`--no-check` skips it), and errors in REPL-style
 * scripts (what `.save` writes) name the file and line.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { guest, kvmAvailable, runHvsh } from "./_helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const PROCESS_TIMEOUT_MS = 120_000;

async function hvsh(args: string[], input = ""): Promise<{ code: number; stdout: string; stderr: string }> {
  return await runHvsh(args, { input, timeoutMs: PROCESS_TIMEOUT_MS });
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-run-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "hvsh run type-checks a module script: a type error stops it with file and line; --no-check runs it",
  ignore: !kvmAvailable,
  fn: () =>
    withTempDir(async (dir) => {
      const script = join(dir, "typed.ts");
      await Deno.writeTextFile(
        script,
        [
          `import { Vm } from "${join(ROOT, "mod.ts")}";`,
          `await using vm = await Vm.create({ memory: "16M" });`,
          `await vm.load("${await guest("exit42.elf")}");`,
          `const stop = await vm.run({ timeout: 5_000 });`,
          `const value: string = stop.reason === "exit" ? stop.value : "none";`,
          `console.log("value", value);`,
        ].join("\n") + "\n",
      );
      const checked = await hvsh(["run", script]);
      assert.equal(checked.code, 1, checked.stdout + checked.stderr);
      assert.match(checked.stderr, /TS2322 \[ERROR\]: Type 'number \| "none"' is not assignable to type 'string'/);
      assert.ok(checked.stderr.includes(`at file://${script}:5:7`), checked.stderr);
      assert.match(checked.stderr, /hvsh run: .*typed\.ts does not type-check \(hvsh run --no-check runs it anyway\)/);
      assert.equal(checked.stdout, "", "the script did not run");

      const unchecked = await hvsh(["run", "--no-check", script]);
      assert.equal(unchecked.code, 0, unchecked.stderr);
      assert.equal(unchecked.stdout, "value 42\n");

      await Deno.writeTextFile(
        script,
        `import { Vm } from "${join(ROOT, "mod.ts")}";\nconsole.log(typeof Vm);\nthrow new Error("module boom");\n`,
      );
      const failing = await hvsh(["run", script]);
      assert.equal(failing.code, 1);
      assert.equal(failing.stdout, "function\n");
      assert.ok(failing.stderr.includes(`module boom\n    at file://${script}:3:7`), failing.stderr);
    }),
});

Deno.test({
  name: "hvsh run names the file and line of the failing statement of a script saved by the REPL",
  ignore: !kvmAvailable,
  fn: () =>
    withTempDir(async (dir) => {
      const saved = join(dir, "session.ts");
      const repl = await hvsh(["--kernel", await guest("exit42.elf")], `const answer: number = 42\n.save ${saved}\n`);
      assert.equal(repl.code, 0, repl.stderr);
      const lines = (await Deno.readTextFile(saved)).trimEnd().split("\n");
      lines.push(
        "console.log('answer', answer);",
        "",
        "const cpus = vm.cpus.length; // a comment",
        "vm.cpu(cpus + 6);",
        "console.log('not reached');",
      );
      await Deno.writeTextFile(saved, lines.join("\n") + "\n");
      const replay = await hvsh(["run", saved]);
      assert.equal(replay.code, 1);
      assert.match(replay.stdout, /^answer 42$/m);
      assert.doesNotMatch(replay.stdout, /not reached/);
      assert.equal(
        replay.stderr.trim(),
        `hvsh run: ${saved}:${lines.length - 1}: RangeError: No vCPU 7: this VM has 1 (0-0)`,
      );

      const broken = join(dir, "broken.ts");
      await Deno.writeTextFile(broken, "const x = 1;\nconst y = (;\n");
      const syntax = await hvsh(["run", broken]);
      assert.equal(syntax.code, 1);
      assert.equal(syntax.stderr.trim(), `hvsh run: ${broken}:2:12: SyntaxError: Unexpected ";"`);
    }),
});

Deno.test("hvsh run refuses an unknown option with its usage", async () => {
  const run = await hvsh(["run", "--fast", "x.ts"]);
  assert.equal(run.code, 2);
  assert.match(run.stderr, /hvsh run: unknown option --fast\nusage: hvsh run \[--no-check\] SCRIPT\.ts/);
});
