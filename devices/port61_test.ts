/** System control port B (0x61). */

import assert from "node:assert/strict";
import { PORT61, Port61, type Port61State } from "./port61.ts";

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

Deno.test("Port61 state restores the stored bits and the refresh phase into a fresh port", () => {
  const gates: boolean[] = [];
  const port = new Port61({ pitOutput: () => true });
  port.write(0, 1, 0x03);
  port.read(0, 1);
  const state = port.state;
  const copy = Port61.fromState(JSON.parse(JSON.stringify(state)), {
    pitOutput: () => true,
    onGate: (g) => gates.push(g),
  });
  assert.deepEqual(copy.state, state);
  const reads = (p: Port61) => [p.read(0, 1), p.read(0, 1), p.read(0, 1)];
  assert.deepEqual(reads(copy), reads(port));
  assert.equal(copy.gate, true);
  assert.deepEqual(gates, [], "the gate belongs to the PIT's state: restoring does not report it");
});

Deno.test("Port61.restore() refuses a corrupt state, naming the field, and changes nothing", () => {
  const port = new Port61();
  port.write(0, 1, 0x01);
  const before = port.state;
  assert.throws(() => port.restore({ value: 0x10, refresh: false }), {
    name: "RangeError",
    message: "Cannot restore the port 0x61 state: value is 0x10, not an integer in 0x0-0xf",
  });
  assert.throws(() => port.restore({ value: 1 } as Port61State), /refresh is undefined, not a boolean/);
  assert.deepEqual(port.state, before);
});
