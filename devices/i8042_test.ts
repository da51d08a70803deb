/**
 * The 8042 keyboard controller, driven through its two ports as a guest
 * would: `dataPort` is 0x60, `commandPort` is 0x64.
 */

import assert from "node:assert/strict";
import { I8042, I8042_STATUS } from "./i8042.ts";

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
