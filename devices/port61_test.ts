/** System control port B (0x61). */

import assert from "node:assert/strict";
import { PORT61, Port61 } from "./port61.ts";

Deno.test("Port61 flips the refresh bit on every read", () => {
  const port = new Port61();
  const levels = [0, 1, 2, 3].map(() => port.read(0, 1) & PORT61.refreshToggle);
  assert.deepEqual(levels, [0x10, 0, 0x10, 0]);
});

Deno.test("Port61 reports the PIT channel 2 output in bit 5", () => {
  let output = false;
  const port = new Port61({ pitOutput: () => output });
  assert.equal(port.read(0, 1) & PORT61.pitOutput, 0);
  output = true;
  assert.equal(port.read(0, 1) & PORT61.pitOutput, PORT61.pitOutput);
});

Deno.test("Port61 stores bits 0-3 and reports gate changes", () => {
  const gates: boolean[] = [];
  const port = new Port61({ onGate: (gate) => gates.push(gate) });
  port.write(0, 1, 0xff);
  assert.equal(port.read(0, 1) & 0xcf, 0x0f);
  assert.equal(port.gate, true);
  port.write(0, 1, 0x0f); // gate unchanged
  port.write(0, 1, 0x02);
  assert.equal(port.read(0, 1) & 0x0f, 0x02);
  assert.deepEqual(gates, [true, false]);
});
