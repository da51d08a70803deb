/**
 * The fuzz targets of `./hvsh fuzz`, run briefly with fixed seeds: a bounded
 * number of cases per target (a few seconds each here), which must all pass.
 * Longer runs: `./hvsh fuzz --minutes N [--seed S] [--only TARGET]`.
 */

import assert from "node:assert/strict";
import { loadFuzzTargets } from "../cli/fuzz.ts";
import { SeededRandom } from "./fuzz/_random.ts";
import { kvmAvailable } from "./_helpers.ts";

/** Cases per target: enough to touch every generator branch, few enough for CI. */
const CASES: Record<string, number> = { images: 150, guests: 40 };
const DEFAULT_CASES = 100;
const SEEDS = [1, 2];

Deno.test("SeededRandom replays the same sequence for the same seed and stays in bounds", () => {
  const a = new SeededRandom(7);
  const b = new SeededRandom(7);
  const values = Array.from({ length: 1000 }, () => a.int(10));
  assert.deepEqual(values, Array.from({ length: 1000 }, () => b.int(10)));
  assert.ok(values.every((v) => v >= 0 && v < 10));
  assert.equal(new Set(values).size, 10);
  assert.notDeepEqual(new SeededRandom(8).bytes(16), new SeededRandom(7).bytes(16));
});

for (const target of await loadFuzzTargets()) {
  for (const seed of SEEDS) {
    const maxCases = CASES[target.name] ?? DEFAULT_CASES;
    Deno.test({
      name: `fuzz target ${target.name} (seed ${seed}, ${maxCases} cases) breaks no rule`,
      ignore: !kvmAvailable,
      fn: async () => {
        const report = await target.run(new SeededRandom(seed), { maxCases, deadline: Infinity });
        assert.equal(report.cases, maxCases);
        assert.deepEqual(report.failures, []);
      },
    });
  }
}
