/**
 * The 8042 keyboard controller, driven through its two ports as a guest
 * would: `dataPort` is 0x60, `commandPort` is 0x64.
 */

import assert from "node:assert/strict";
import { I8042, I8042_STATUS, type I8042State } from "./i8042.ts";

function setup() {
  const events: string[] = [];
  const kbc = new I8042({
    onReset: () => events.push("reset"),
    setIrq: (irq, level) => events.push(`irq${irq}=${level ? 1 : 0}`),
    onA20: (enabled) => events.push(`a20=${enabled ? 1 : 0}`),
  });
  const command = (byte: number) => kbc.commandPort.write(0, 1, byte);
  const data = (byte: number) => kbc.dataPort.write(0, 1, byte);
  const status = () => kbc.commandPort.read(0, 1);
  const read = () => kbc.dataPort.read(0, 1);
  return { kbc, events, command, data, status, read };
}

Deno.test("I8042 status starts with no output, self-tested and unlocked; port 0x60 reads 0", () => {
  const { status, read } = setup();
  assert.equal(status() & I8042_STATUS.outputFull, 0);
  assert.equal(status() & (I8042_STATUS.system | I8042_STATUS.unlocked), 0x14);
  assert.equal(read(), 0);
});

Deno.test("I8042 answers self-test 0xaa with 0x55, then repeats the last byte", () => {
  const { command, status, read, events } = setup();
  command(0xaa);
  assert.equal(status() & I8042_STATUS.outputFull, I8042_STATUS.outputFull);
  assert.equal(read(), 0x55);
  assert.equal(status() & I8042_STATUS.outputFull, 0);
  assert.equal(read(), 0x55);
  assert.deepEqual(events, ["irq1=1", "irq1=0"]);
});

Deno.test("I8042 command 0xfe pulses the reset line; 0xff does not", () => {
  const { command, events } = setup();
  command(0xff);
  assert.deepEqual(events, []);
  command(0xfe);
  assert.deepEqual(events, ["reset"]);
  command(0xf0); // pulses all four lines, reset among them
  assert.deepEqual(events, ["reset", "reset"]);
});

Deno.test("I8042 output-port write 0xd1 resets with bit 0 clear and gates A20 with bit 1", () => {
  const { kbc, command, data, read, events } = setup();
  command(0xd1);
  data(0x03);
  assert.deepEqual(events, []);
  command(0xd1);
  data(0x01); // A20 off, reset line high
  assert.deepEqual(events, ["a20=0"]);
  command(0xd1);
  data(0x02); // reset line low
  assert.deepEqual(events, ["a20=0", "a20=1", "reset"]);
  command(0xd0);
  assert.equal(read(), 0x03); // the reset line is back up
  assert.equal(kbc.state.pendingCommand, 0);
});

Deno.test("I8042 reads and writes the command byte with 0x20 and 0x60", () => {
  const { kbc, command, data, read, status } = setup();
  command(0x60);
  assert.equal(status() & I8042_STATUS.command, I8042_STATUS.command);
  data(0x44); // no interrupts, system flag, translate
  assert.equal(status() & I8042_STATUS.command, 0);
  command(0x20);
  assert.equal(read(), 0x44);
  command(0xad);
  command(0x20);
  assert.equal(read(), 0x54);
  command(0xae);
  assert.equal(kbc.state.mode, 0x44);
  command(0xa7);
  assert.equal(kbc.state.mode, 0x64);
  command(0xa8);
  assert.equal(kbc.state.mode, 0x44);
});

Deno.test("I8042 raises IRQ 12 for a byte written to the mouse output buffer", () => {
  const { command, data, status, read, events } = setup();
  command(0xd3);
  data(0x5a);
  assert.equal(status() & (I8042_STATUS.outputFull | I8042_STATUS.mouseOutputFull), 0x21);
  assert.equal(read(), 0x5a);
  assert.deepEqual(events, ["irq12=1", "irq12=0"]);
});

Deno.test("I8042 keeps interrupts low when the command byte disables them", () => {
  const { command, data, read, events } = setup();
  command(0x60);
  data(0x00);
  command(0xaa);
  assert.equal(read(), 0x55);
  assert.deepEqual(events, []);
});

Deno.test("I8042 drops bytes meant for the absent keyboard", () => {
  const { data, status } = setup();
  data(0xff); // keyboard reset
  assert.equal(status() & I8042_STATUS.outputFull, 0);
});

/** Through JSON, as a snapshot file would carry it. */
function viaJson<T>(state: T): T {
  return JSON.parse(JSON.stringify(state));
}

/** A controller with three bytes queued (keyboard, keyboard, mouse), IRQ 1 raised and 0xd1 waiting for its data. */
function busy() {
  const kbc = setup();
  kbc.command(0xaa); // self-test: 0x55
  kbc.command(0x20); // the command byte
  kbc.command(0xd3);
  kbc.data(0x7e); // a mouse byte
  kbc.command(0xd1); // output port write, data to follow
  return kbc;
}

/** What a guest does next: poll status, read each byte, finish the pending command, read the output port. */
function drive(kbc: ReturnType<typeof setup>): number[] {
  const reads: number[] = [];
  for (let i = 0; i < 4; i++) reads.push(kbc.status(), kbc.read());
  kbc.data(0x01); // the pending 0xd1: A20 off
  kbc.command(0xd0);
  reads.push(kbc.status(), kbc.read(), kbc.status());
  return reads;
}

Deno.test("I8042 state with the output buffer full and IRQ 1 raised restores into a fresh controller", () => {
  const original = busy();
  assert.deepEqual(original.events, ["irq1=1"]);
  const state = original.kbc.state;
  assert.equal(state.status & I8042_STATUS.outputFull, I8042_STATUS.outputFull);
  assert.equal(state.pendingCommand, 0xd1);

  const copy = setup();
  copy.kbc.restore(viaJson(state));
  assert.deepEqual(copy.events, ["irq1=1"], "the pending interrupt is raised on the new controller's line");
  assert.deepEqual(copy.kbc.state, state);
  original.events.length = 0;
  copy.events.length = 0;
  const expected = drive(original);
  assert.deepEqual(drive(copy), expected);
  assert.deepEqual(copy.events, original.events);
  assert.deepEqual(original.events, ["irq1=0", "irq12=1", "irq12=0", "a20=0", "irq1=1", "irq1=0"]);
  assert.deepEqual(expected.slice(0, 6), [0x1d, 0x55, 0x1d, 0x47, 0x3d, 0x7e]);
});

Deno.test("I8042.fromState() builds a controller whose line follows the state; restore() lowers a line it raised", () => {
  const events: string[] = [];
  const setIrq = (irq: number, level: boolean) => events.push(`irq${irq}=${level ? 1 : 0}`);
  const idle = new I8042({ onReset: () => {} }).state;
  const kbc = I8042.fromState(viaJson(busy().kbc.state), { onReset: () => {}, setIrq });
  assert.deepEqual(events, ["irq1=1"]);
  kbc.restore(viaJson(kbc.state));
  assert.deepEqual(events, ["irq1=1", "irq1=1"], "restoring a pending interrupt asserts the line again");
  kbc.restore(idle);
  assert.deepEqual(events, ["irq1=1", "irq1=1", "irq1=0"]);
  kbc.restore(idle);
  assert.equal(events.length, 3, "a line the controller did not raise is left alone");
});

Deno.test("I8042.restore() refuses a corrupt state, naming the field, and leaves the controller as it was", () => {
  const { kbc, events } = busy();
  const before = kbc.state;
  const corrupt = (edit: (state: Record<string, unknown>) => void) => {
    const state = viaJson(before) as unknown as Record<string, unknown>;
    edit(state);
    return () => kbc.restore(state as unknown as I8042State);
  };
  assert.throws(corrupt((s) => s.pendingCommand = 0xaa), {
    name: "RangeError",
    message:
      "Cannot restore the i8042 state: pendingCommand is 170, not 0 or a command that takes data (0x60, 0xd1-0xd4)",
  });
  assert.throws(corrupt((s) => (s.queue as unknown[])[1] = { byte: 0x100, mouse: false }), /queue\[1\]\.byte is 0x100/);
  assert.throws(corrupt((s) => (s.queue as unknown[])[2] = 7), /i8042 state: queue\[2\] is 7, not an object/);
  assert.throws(corrupt((s) => s.queue = Array(17).fill({ byte: 0, mouse: false })), /queue has 17 elements, not 0-16/);
  assert.throws(corrupt((s) => s.mode = -1), /mode is -1, not an integer in 0x0-0xff/);
  assert.deepEqual(kbc.state, before);
  assert.deepEqual(events, ["irq1=1"]);
});
