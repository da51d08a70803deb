/**
 * Serial16550's state object: taken while the UART is busy, sent through
 * JSON, restored into a fresh UART, which must then answer the guest's
 * register reads exactly as the original does, interrupt line included.
 */

import assert from "node:assert/strict";
import { Serial16550, type SerialState } from "../devices/serial.ts";

const THR = 0;
const IER = 1;
const IIR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const SCR = 7;

/** A UART whose interrupt line levels are recorded. */
function wired(uart = new Serial16550()): { uart: Serial16550; levels: boolean[] } {
  const levels: boolean[] = [];
  uart.connectInterrupt((level) => levels.push(level));
  return { uart, levels };
}

/** What a guest's interrupt handler does until the UART is quiet: IIR, LSR, then RBR while data is ready. */
function service(uart: Serial16550, levels: boolean[]): number[][] {
  const trace: number[][] = [];
  for (let round = 0; round < 40; round++) {
    const iir = uart.read(IIR, 1);
    const lsr = uart.read(LSR, 1);
    const rbr = (lsr & 0x01) !== 0 ? uart.read(THR, 1) : -1;
    trace.push([iir, lsr, rbr, levels.at(-1) === true ? 1 : 0]);
    if ((iir & 0x01) !== 0 && rbr === -1) break;
  }
  return trace;
}

/** Through JSON, as a snapshot file would carry it. */
function viaJson<T>(state: T): T {
  return JSON.parse(JSON.stringify(state));
}

/** A UART with its FIFO full, 4 bytes more queued on the host, a THR-empty interrupt pending and the line up. */
function busyUart(): { uart: Serial16550; levels: boolean[] } {
  const { uart, levels } = wired();
  uart.write(LCR, 1, 0x80 | 0x03);
  uart.write(THR, 1, 0x01); // divisor 1: 115200 baud
  uart.write(LCR, 1, 0x03);
  uart.write(IIR, 1, 0x01); // FIFO on
  uart.write(MCR, 1, 0x0b);
  uart.write(SCR, 1, 0x5a);
  uart.write(IER, 1, 0x03); // RDA and THRE
  uart.send("abcdefghijklmnopqrst");
  uart.write(THR, 1, 0x21); // transmits "!": THRE pending behind RDA
  return { uart, levels };
}

Deno.test("Serial16550 state taken while busy restores into a fresh UART that answers the same reads", () => {
  const original = busyUart();
  assert.equal(original.levels.at(-1), true, "the line is up before the snapshot");
  const state = original.uart.state;
  assert.equal(state.rxFifo.length, 16);
  assert.equal(atob(state.inputQueue), "qrst");
  assert.equal(state.thrInterruptPending, true);

  const copy = wired(Serial16550.fromState(viaJson(state)));
  assert.deepEqual(copy.levels, [true], "connecting a restored UART with a pending interrupt raises its line");
  assert.deepEqual(copy.uart.state, state);
  assert.equal(copy.uart.pendingInput, original.uart.pendingInput);
  assert.equal(copy.uart.read(LCR, 1), 0x03);
  assert.equal(copy.uart.read(SCR, 1), 0x5a);

  const expected = service(original.uart, original.levels);
  assert.equal(
    String.fromCharCode(...expected.map((row) => row[2]!).filter((byte) => byte >= 0)),
    "abcdefghijklmnopqrst",
  );
  assert.deepEqual(service(copy.uart, copy.levels), expected);
  assert.equal(copy.levels.at(-1), false, "the line falls once the handler drained everything");
  assert.equal(copy.uart.output, "", "captured output is the host's transcript, not device state");
});

Deno.test("Serial16550 state keeps the bytes loopback writes put in the receive buffer", () => {
  const { uart } = wired();
  uart.write(MCR, 1, 0x10); // loopback
  uart.write(IER, 1, 0x02);
  uart.write(THR, 1, 0x41);
  uart.write(THR, 1, 0x42);
  const copy = wired(Serial16550.fromState(viaJson(uart.state)));
  const reads = (u: Serial16550) => [u.read(IIR, 1), u.read(LSR, 1), u.read(THR, 1), u.read(THR, 1), u.read(IIR, 1)];
  assert.deepEqual(reads(copy.uart), reads(uart));
});

Deno.test("Serial16550.restore() drives the line: raised for a pending interrupt, lowered when none is", () => {
  const busy = busyUart();
  const { uart, levels } = wired();
  const idle = uart.state;
  uart.restore(viaJson(busy.uart.state));
  uart.restore(viaJson(busy.uart.state)); // again: the line is asserted again, never dropped
  assert.deepEqual(levels, [true, true]);
  uart.restore(idle);
  assert.deepEqual(levels, [true, true, false]);
  uart.restore(idle);
  assert.deepEqual(levels, [true, true, false], "a line this UART did not raise is left alone");
});

Deno.test("Serial16550.restore() refuses a corrupt state, naming the field, and leaves the UART as it was", () => {
  const { uart, levels } = busyUart();
  const before = uart.state;
  const levelsBefore = [...levels];
  const corrupt = (edit: (state: Record<string, unknown>) => void): SerialState => {
    const state = viaJson(before) as unknown as Record<string, unknown>;
    edit(state);
    return state as unknown as SerialState;
  };
  assert.throws(() => uart.restore(corrupt((s) => s.lcr = "3")), {
    name: "TypeError",
    message: 'Cannot restore the serial port state: lcr is "3", not an integer in 0x0-0xff',
  });
  assert.throws(() => uart.restore(corrupt((s) => s.mcr = 0x20)), {
    name: "RangeError",
    message: "Cannot restore the serial port state: mcr is 0x20, not an integer in 0x0-0x1f",
  });
  assert.throws(
    () => uart.restore(corrupt((s) => s.rxFifo = Array(17).fill(0))),
    /serial port state: rxFifo has 17 elements, not 0-16/,
  );
  assert.throws(() => uart.restore(corrupt((s) => s.rxFifo = [1, 256])), /rxFifo\[1\] is 256, not a byte/);
  assert.throws(() => uart.restore(corrupt((s) => s.inputQueue = "not base64!")), /inputQueue is "not base64!"/);
  assert.throws(() => uart.restore(corrupt((s) => delete s.fifoEnabled)), /fifoEnabled is undefined, not a boolean/);
  assert.throws(() => uart.restore(null as unknown as SerialState), /serial port state: it is null, not an object/);
  assert.deepEqual(uart.state, before);
  assert.deepEqual(levels, levelsBefore, "the line was not touched");
});
