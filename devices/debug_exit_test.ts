/** The debug-exit port and the sink port (port 0x80), through their register interface. */

import assert from "node:assert/strict";
import { DebugExit, type DebugExitState, SinkPort, type SinkPortState } from "./debug_exit.ts";

Deno.test("DebugExit is stateless: its state is {} and restoring {} keeps it working", () => {
  const values: number[] = [];
  const device = new DebugExit((value) => values.push(value));
  assert.deepEqual(device.state, {});
  device.restore(JSON.parse(JSON.stringify(device.state)));
  device.write(0, 1, 3);
  assert.deepEqual(values, [3]);
  assert.equal(device.read(0, 2), 0xffff);
  assert.throws(() => device.restore({ last: 1 } as unknown as DebugExitState), {
    name: "TypeError",
    message: "Cannot restore the debug-exit state: it has no fields, got last",
  });
  assert.throws(
    () => device.restore([] as unknown as DebugExitState),
    /debug-exit state: it is an array of 0, not an object/,
  );
});

Deno.test("SinkPort state restores the last value written into a fresh port", () => {
  const port = new SinkPort();
  port.write(0, 1, 0x55);
  const copy = SinkPort.fromState(JSON.parse(JSON.stringify(port.state)));
  assert.equal(copy.read(0, 1), port.read(0, 1));
  assert.equal(copy.read(0, 1), 0x55);
});

Deno.test("SinkPort.restore() refuses a corrupt state, naming the field, and changes nothing", () => {
  const port = new SinkPort();
  port.write(0, 1, 0x42);
  assert.throws(() => port.restore({ last: -1 }), {
    name: "RangeError",
    message: "Cannot restore the sink port state: last is -1, not an integer in 0x0-0xffffffff",
  });
  assert.throws(() => port.restore({} as SinkPortState), /last is undefined/);
  assert.equal(port.last, 0x42);
});
