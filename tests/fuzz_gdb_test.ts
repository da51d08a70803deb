/**
 * The gdb-packets fuzz target (tests/fuzz/gdb_packets.ts), bounded, with
 * fixed seeds: the same cases on every run. `./hvsh fuzz` runs it longer.
 */

import assert from "node:assert/strict";
import { target } from "./fuzz/gdb_packets.ts";
import { SeededRandom } from "./fuzz/_gdb_random.ts";
import { kvmAvailable } from "./_helpers.ts";

const SEEDS = [1, 2, 3];
const CASES_PER_SEED = 25;

for (const seed of SEEDS) {
  Deno.test({
    name: `gdb-packets fuzz, seed ${seed}: ${CASES_PER_SEED} batches; after each the stub answers ? and g, VM intact`,
    ignore: !kvmAvailable,
    async fn() {
      const report = await target.run(new SeededRandom(seed), {
        maxCases: CASES_PER_SEED,
        deadline: performance.now() + 240_000,
      });
      assert.deepEqual(report.failures, []);
      assert.equal(report.cases, CASES_PER_SEED, "every case ran before the deadline");
    },
  });
}

Deno.test("SeededRandom gives the same sequence for the same seed and another for another seed", () => {
  const draw = (seed: number) => {
    const random = new SeededRandom(seed);
    return [random.int(1000), random.int(2 ** 40), [...random.bytes(8)], random.pick(["a", "b", "c", "d"])];
  };
  assert.deepEqual(draw(5), draw(5));
  assert.notDeepEqual(draw(5), draw(6));
  const random = new SeededRandom(9);
  const counts = new Array<number>(4).fill(0);
  for (let i = 0; i < 4000; i++) counts[random.int(4)]!++;
  for (const count of counts) assert.ok(count > 800 && count < 1200, `roughly uniform: ${counts}`);
  assert.throws(() => random.int(0), /Invalid bound 0/);
});
