// cli/_args.ts's parseOptions against node's util.parseArgs (strict, positionals allowed), which it stands in for
// in `hvsh boot` so that a cold start need not load Deno's Node layer: same values, positionals and error messages.

import assert from "node:assert/strict";
import { parseArgs } from "node:util";
import { parseOptions } from "../cli/_args.ts";

const OPTIONS = {
  kernel: { type: "string", short: "k" },
  mem: { type: "string", short: "m", default: "64M" },
  format: { type: "string", default: "auto" },
  wait: { type: "boolean", default: false },
  quiet: { type: "boolean", short: "q" },
  verbose: { type: "boolean", short: "v" },
  disk: { type: "string", multiple: true },
} as const;

const CASES: string[][] = [
  [],
  ["file"],
  ["--kernel", "a.elf", "--mem", "32M"],
  ["--kernel=a.elf", "--mem=", "x"],
  ["-k", "a.elf", "-m32M", "pos"],
  ["-k=x"],
  ["-qv", "-vk", "f", "-qkfile"],
  ["--disk", "a", "--disk=b,ro", "-", "c"],
  ["--kernel", "a", "--kernel", "b", "--wait", "--wait"],
  ["--", "--wait", "-k"],
  ["a", "--", "--"],
  ["--foo"],
  ["--foo", "bar"],
  ["-x"],
  ["-qx"],
  ["--Kernel=x"],
  ["---x"],
  ["--=x"],
  ["-1"],
  ["--kernel"],
  ["-k"],
  ["-qk"],
  ["--wait=1"],
  ["--wait="],
  ["-q=1"],
  ["--kernel", "-x"],
  ["-k", "--wait"],
  ["-m", "-"],
  ["--append=-vmx"],
];

Deno.test("parseOptions reads every argument list as node's parseArgs does, errors included", () => {
  for (const args of CASES) {
    let expected: unknown;
    try {
      const { values, positionals } = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
      expected = { values: { ...values }, positionals };
    } catch (error) {
      expected = { error: (error as Error).message };
    }
    let actual: unknown;
    try {
      const { values, positionals } = parseOptions(args, OPTIONS);
      actual = { values: { ...values }, positionals };
    } catch (error) {
      assert.ok(error instanceof TypeError, `${JSON.stringify(args)}: ${String(error)}`);
      actual = { error: error.message };
    }
    assert.deepEqual(actual, expected, JSON.stringify(args));
  }
});
