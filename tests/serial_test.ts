/**
 * The 16550A UART model, driven through its register interface exactly as a
 * guest driver would (offsets 0-7 from the base port).
 */

import assert from "node:assert/strict";
import { Serial16550 } from "../devices/serial.ts";

const THR = 0; // RBR on read, DLL with DLAB
const IER = 1; // DLM with DLAB
const IIR = 2; // FCR on write
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;

function transmit(uart: Serial16550, text: string): void {
  for (const byte of new TextEncoder().encode(text)) uart.write(THR, 1, byte);
}

/** Reads RBR until LSR says no data is ready. */
function drain(uart: Serial16550): string {
  const bytes: number[] = [];
  while ((uart.read(LSR, 1) & LSR_DR) !== 0) bytes.push(uart.read(THR, 1));
  return new TextDecoder().decode(Uint8Array.from(bytes));
}

Deno.test("Serial16550 captures THR writes in output and hands each byte to onData observers", () => {
  const uart = new Serial16550();
  const seen: number[] = [];
  const unsubscribe = uart.onData((bytes) => seen.push(...bytes));
  transmit(uart, "hi\n");
  assert.equal(uart.output, "hi\n");
  assert.deepEqual(seen, [0x68, 0x69, 0x0a]);
  assert.equal(uart.transmitted, 3);
  unsubscribe();
  transmit(uart, "!");
  assert.deepEqual(seen, [0x68, 0x69, 0x0a], "an unsubscribed observer sees nothing");
  assert.equal(uart.output, "hi\n!");
  uart.clearOutput();
  assert.equal(uart.output, "");
  assert.equal(uart.transmitted, 4);
});

Deno.test("Serial16550 output decodes UTF-8 sequences split across THR writes", () => {
  const uart = new Serial16550();
  for (const byte of [0xc3, 0xa9, 0xe2, 0x82]) uart.write(THR, 1, byte);
  assert.equal(uart.output, "é", "an incomplete sequence is held back");
  uart.write(THR, 1, 0xac);
  assert.equal(uart.output, "é€");
});

Deno.test("Serial16550 LSR reports THRE|TEMT when idle and DR only while received data waits", () => {
  const uart = new Serial16550();
  assert.equal(uart.read(LSR, 1), LSR_THRE | LSR_TEMT);
  transmit(uart, "x");
  assert.equal(uart.read(LSR, 1) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT, "transmission is instantaneous");
  uart.send("k");
  assert.equal(uart.read(LSR, 1) & LSR_DR, LSR_DR);
  assert.equal(uart.read(THR, 1), 0x6b);
  assert.equal(uart.read(LSR, 1) & LSR_DR, 0);
  assert.equal(uart.read(THR, 1), 0, "an empty RBR reads 0");
});

Deno.test("Serial16550 with DLAB set routes offsets 0 and 1 to the divisor latch, never to the output", () => {
  const uart = new Serial16550();
  uart.write(IER, 1, 0x01);
  uart.write(LCR, 1, 0x80 | 0x03); // DLAB, 8N1
  uart.write(THR, 1, 0x01); // DLL: 115200 baud
  uart.write(IER, 1, 0x00); // DLM
  assert.equal(uart.output, "");
  assert.equal(uart.transmitted, 0);
  assert.equal(uart.read(THR, 1), 0x01);
  assert.equal(uart.read(IER, 1), 0x00);
  assert.equal(uart.state.dll, 0x01);
  assert.equal(uart.state.dlm, 0x00);
  uart.write(LCR, 1, 0x03);
  assert.equal(uart.read(IER, 1), 0x01, "IER kept its value under the latch");
  transmit(uart, "A");
  assert.equal(uart.output, "A");
  assert.equal(uart.read(LCR, 1), 0x03);
});

Deno.test("Serial16550.send() queues input behind a one-byte holding register, or a 16-byte FIFO once enabled", () => {
  const uart = new Serial16550();
  uart.send("abc");
  assert.equal(uart.pendingInput, 3);
  assert.equal(uart.read(THR, 1), 0x61);
  assert.equal(uart.pendingInput, 2);
  assert.equal(drain(uart), "bc");
  assert.equal(uart.pendingInput, 0);

  uart.write(IIR, 1, 0x07); // FCR: enable and clear FIFOs
  assert.equal(uart.read(IIR, 1) & 0xc0, 0xc0, "IIR reports the FIFOs enabled");
  const text = "0123456789abcdefghij"; // 20 bytes: 16 in the FIFO, 4 queued behind it
  uart.send(text.slice(0, 12));
  uart.send(new TextEncoder().encode(text.slice(12)));
  assert.equal(uart.pendingInput, 20);
  assert.equal(drain(uart), text, "bytes arrive in order across send() calls and the FIFO boundary");
  assert.equal(uart.pendingInput, 0);
});

Deno.test("Serial16550 FCR bit 1 clears the receive FIFO", () => {
  const uart = new Serial16550();
  uart.write(IIR, 1, 0x01);
  uart.send("abcd");
  uart.write(IIR, 1, 0x03);
  assert.equal(uart.pendingInput, 0);
  assert.equal(uart.read(LSR, 1) & LSR_DR, 0);
});

Deno.test("Serial16550.send() refuses input beyond its 1 MiB queue with a RangeError and queues none of it", () => {
  const uart = new Serial16550();
  assert.throws(() => uart.send(new Uint8Array((1 << 20) + 1)), RangeError);
  assert.equal(uart.pendingInput, 0);
  uart.send(new Uint8Array(1 << 20).fill(0x41));
  assert.equal(uart.pendingInput, 1 << 20);
  assert.throws(() => uart.send("xy"), (e: Error) => e instanceof RangeError && /2 bytes/.test(e.message));
  assert.equal(uart.pendingInput, 1 << 20);
});

Deno.test("Serial16550 raises its interrupt line for received data (IER bit 0) and drops it once read", () => {
  const uart = new Serial16550();
  const levels: boolean[] = [];
  uart.connectInterrupt((level) => levels.push(level));
  uart.send("z");
  assert.deepEqual(levels, [], "no interrupt while IER is 0");
  assert.equal(uart.read(IIR, 1) & 0x0f, 0x01, "IIR: none pending");
  uart.write(IER, 1, 0x01);
  assert.deepEqual(levels, [true]);
  assert.equal(uart.read(IIR, 1) & 0x0f, 0x04, "IIR: received data available");
  assert.equal(uart.read(THR, 1), 0x7a);
  assert.deepEqual(levels, [true, false]);
  assert.equal(uart.read(IIR, 1) & 0x0f, 0x01);
});

Deno.test("Serial16550 raises THRE interrupts when enabled and after each THR write, cleared by reading IIR", () => {
  const uart = new Serial16550();
  const levels: boolean[] = [];
  uart.connectInterrupt((level) => levels.push(level));
  uart.write(IER, 1, 0x02);
  assert.deepEqual(levels, [true], "enabling THRE with an empty THR interrupts at once");
  assert.equal(uart.read(IIR, 1) & 0x0f, 0x02);
  assert.deepEqual(levels, [true, false], "reading IIR acknowledges the THRE interrupt");
  assert.equal(uart.read(IIR, 1) & 0x0f, 0x01);
  transmit(uart, "a");
  assert.deepEqual(levels, [true, false, true]);
  uart.write(IER, 1, 0x00);
  assert.deepEqual(levels, [true, false, true, false], "disabling the interrupt lowers the line");
});

Deno.test("Serial16550 received data takes priority over THRE in IIR", () => {
  const uart = new Serial16550();
  uart.write(IER, 1, 0x03);
  uart.send("q");
  assert.equal(uart.read(IIR, 1) & 0x0f, 0x04);
  uart.read(THR, 1);
  assert.equal(uart.read(IIR, 1) & 0x0f, 0x02);
});

Deno.test("Serial16550 in loopback (MCR bit 4) feeds THR back to RBR instead of the output", () => {
  const uart = new Serial16550();
  uart.write(MCR, 1, 0x10);
  transmit(uart, "ok");
  assert.equal(uart.output, "");
  assert.equal(drain(uart), "ok");
  uart.write(MCR, 1, 0x00);
  transmit(uart, "!");
  assert.equal(uart.output, "!");
  assert.equal(uart.read(LSR, 1) & LSR_DR, 0);
});

// Regression (devices/serial.ts, read() case MSR): loopback once mapped MCR bits 0-1 to MSR bits 4-5 in the
// same order, so DTR showed as CTS and RTS as DSR; the 16550 (and QEMU) wire DTR->DSR (bit 5) and RTS->CTS
// (bit 4). Linux's 8250 autoconfig writes MCR = LOOP|RTS|OUT2 (0x1a) and wants MSR & 0xf0 == 0x90
// (CTS|DCD); reading 0xa0 it decided no UART was present.
Deno.test("Serial16550 in loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD as Linux's probe expects", () => {
  const uart = new Serial16550();
  uart.write(MCR, 1, 0x10 | 0x0a); // LOOP | RTS | OUT2: Linux's autoconfig loopback test
  assert.equal(uart.read(MSR, 1) & 0xf0, 0x90);
  uart.write(MCR, 1, 0x10 | 0x01); // DTR -> DSR (MSR bit 5)
  assert.equal(uart.read(MSR, 1) & 0xf0, 0x20);
  uart.write(MCR, 1, 0x10 | 0x04); // OUT1 -> RI (MSR bit 6)
  assert.equal(uart.read(MSR, 1) & 0xf0, 0x40);
  uart.write(MCR, 1, 0x10 | 0x0f);
  assert.equal(uart.read(MSR, 1) & 0xf0, 0xf0);
});

Deno.test("Serial16550 scratch register keeps its value", () => {
  const uart = new Serial16550();
  uart.write(SCR, 1, 0x5a);
  assert.equal(uart.read(SCR, 1), 0x5a);
});

Deno.test("Serial16550.waitFor() resolves with output already captured and with output that arrives later", async () => {
  const uart = new Serial16550();
  transmit(uart, "boot: ok\n");
  const early = await uart.waitFor(/boot: (\w+)/);
  assert.equal(early[1], "ok");
  const later = uart.waitFor("login$"); // a string is matched literally
  setTimeout(() => transmit(uart, "login$ "), 5);
  assert.equal((await later)[0], "login$");
});

Deno.test("Serial16550.waitFor() rejects after its timeout with a message naming the pattern and the output", async () => {
  const uart = new Serial16550();
  transmit(uart, "nothing here");
  const started = performance.now();
  await assert.rejects(
    uart.waitFor(/never/, { timeout: 30 }),
    (e: Error) => /30 ms/.test(e.message) && /\/never\//.test(e.message) && /nothing here/.test(e.message),
  );
  assert.ok(performance.now() - started >= 25);
});
