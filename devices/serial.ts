/**
 * A 16550A UART model (the PC's COM ports), in the style of rust-vmm's
 * vm-superio: a pure register model with an injected interrupt line and
 * observers, placed on the I/O bus by the machine builder.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader, toBase64 } from "./_state.ts";
import { type ExecOptions, type ExpectOptions, SerialReader, type StopSource } from "./serial_reader.ts";

const RBR_THR = 0; // DLL when DLAB
const IER = 1; // DLM when DLAB
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const IER_RDA = 0x01;
const IER_THRE = 0x02;
const IER_RLS = 0x04;
const IER_MSI = 0x08;

const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_FIFO_ENABLED = 0xc0;

const LCR_DLAB = 0x80;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;

/** Bytes the chip holds in its receive FIFO; further input waits in the host-side queue. */
const RX_FIFO_SIZE = 16;
/** Host-side input queue bound: input beyond it is refused, not silently dropped. */
const INPUT_LIMIT = 1 << 20;
/**
 * How many bytes of output {@link Serial16550.output} keeps by default: the
 * last 1 MiB (older bytes are dropped first). Set `outputLimit` to keep more,
 * or `Infinity` to keep everything.
 *
 * @example
 * ```ts
 * import { DEFAULT_SERIAL_OUTPUT_LIMIT } from "./serial.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(DEFAULT_SERIAL_OUTPUT_LIMIT, 1 << 20);
 * ```
 */
export const DEFAULT_SERIAL_OUTPUT_LIMIT = 1 << 20;

/** Options of {@linkcode Serial16550}. */
export interface SerialOptions {
  /** Bytes of output `output` keeps (default {@linkcode DEFAULT_SERIAL_OUTPUT_LIMIT}); `Infinity` keeps all. */
  outputLimit?: number;
}

/** The last `limit` bytes pushed, in a buffer that grows up to the limit and then wraps. */
class ByteRing {
  #buffer: Uint8Array;
  #start = 0;
  #length = 0;
  #limit: number;
  /** Bytes pushed out of the ring since the last clear. */
  dropped = 0;

  constructor(limit: number) {
    this.#limit = limit;
    this.#buffer = new Uint8Array(Math.min(4096, limit));
  }

  get length(): number {
    return this.#length;
  }

  get limit(): number {
    return this.#limit;
  }

  set limit(limit: number) {
    if (!(limit >= 0)) throw new RangeError(`Invalid serial output limit ${limit}: expected bytes >= 0 or Infinity`);
    const keep = this.toBytes().subarray(Math.max(0, this.#length - limit));
    this.dropped += this.#length - keep.length;
    this.#limit = limit;
    this.#buffer = new Uint8Array(Math.max(Math.min(4096, limit), keep.length));
    this.#buffer.set(keep);
    this.#start = 0;
    this.#length = keep.length;
  }

  push(byte: number): void {
    if (this.#limit === 0) {
      this.dropped++;
      return;
    }
    if (this.#length === this.#buffer.length && this.#length < this.#limit) {
      const grown = new Uint8Array(Math.min(this.#buffer.length * 2, this.#limit));
      grown.set(this.toBytes());
      this.#buffer = grown;
      this.#start = 0;
    }
    if (this.#length < this.#buffer.length) {
      this.#buffer[(this.#start + this.#length++) % this.#buffer.length] = byte;
    } else {
      this.#buffer[this.#start] = byte;
      this.#start = (this.#start + 1) % this.#buffer.length;
      this.dropped++;
    }
  }

  toBytes(): Uint8Array {
    const end = this.#start + this.#length;
    if (end <= this.#buffer.length) return this.#buffer.slice(this.#start, end);
    const out = new Uint8Array(this.#length);
    out.set(this.#buffer.subarray(this.#start));
    out.set(this.#buffer.subarray(0, end - this.#buffer.length), this.#buffer.length - this.#start);
    return out;
  }

  clear(): void {
    this.#buffer = new Uint8Array(Math.min(4096, this.#limit));
    this.#start = 0;
    this.#length = 0;
    this.dropped = 0;
  }
}

/**
 * Snapshot of the UART: its registers, the bytes in its receive FIFO and the
 * input still queued for it on the host side. Plain JSON data. The captured
 * output ({@link Serial16550.output}) is the host's transcript, not device
 * state, and is not part of it; the interrupt level follows from the rest.
 */
export interface SerialState {
  ier: number;
  lcr: number;
  mcr: number;
  /** The stored line status bits (THRE, TEMT, OE); DR is derived from the FIFO. */
  lsr: number;
  msr: number;
  scr: number;
  dll: number;
  dlm: number;
  fifoEnabled: boolean;
  thrInterruptPending: boolean;
  /** Bytes in the receive FIFO, oldest first (0-16). */
  rxFifo: number[];
  /** Input queued with {@link Serial16550.send} that has not reached the FIFO yet, as base64 (up to 1 MiB). */
  inputQueue: string;
}

type SerialRegisters = Omit<SerialState, "rxFifo" | "inputQueue">;

/**
 * A 16550A UART.
 *
 * What the guest transmits goes to `onData` observers as it comes and is
 * kept for {@linkcode Serial16550.output} in a bounded ring: the last
 * `outputLimit` bytes (1 MiB by default), so a guest that floods the port
 * cannot grow the host's memory. Scripts that want everything set
 * `outputLimit = Infinity` (or subscribe with `onData`).
 *
 * @example
 * ```ts
 * import { Serial16550 } from "./serial.ts";
 * const uart = new Serial16550();
 * uart.write(0, 1, 0x68); // the guest transmits "h"
 * uart.output; // "h"
 * ```
 */
export class Serial16550 implements IoDevice {
  #state: SerialRegisters = {
    ier: 0,
    lcr: 0x03,
    mcr: 0,
    lsr: LSR_THRE | LSR_TEMT,
    msr: 0xb0,
    scr: 0,
    dll: 0x0c,
    dlm: 0,
    fifoEnabled: false,
    thrInterruptPending: false,
  };
  #rx: number[] = [];
  #input: Uint8Array[] = [];
  #inputOffset = 0;
  #inputBytes = 0;
  #output: ByteRing;
  /** `output` decoded, until the next byte arrives. */
  #outputText: string | undefined = "";
  #observers = new Set<(bytes: Uint8Array) => void>();
  readonly #reader = new SerialReader(this, () => this.output);
  #interruptLine: ((level: boolean) => void) | undefined;
  #interruptLevel = false;
  #transmitted = 0;

  constructor(options: SerialOptions = {}) {
    this.#output = new ByteRing(DEFAULT_SERIAL_OUTPUT_LIMIT);
    if (options.outputLimit !== undefined) this.#output.limit = options.outputLimit;
  }

  /**
   * Builds a UART in `state` (as {@link Serial16550.state} returns it,
   * possibly through JSON). Throws as {@link Serial16550.restore} does.
   */
  static fromState(state: SerialState, options: SerialOptions = {}): Serial16550 {
    const uart = new Serial16550(options);
    uart.restore(state);
    return uart;
  }

  /**
   * Connects the interrupt line (e.g. IRQ 4 on the in-kernel PIC/IOAPIC); a
   * pending interrupt (say, of a restored UART) raises it at once.
   */
  connectInterrupt(line: (level: boolean) => void): void {
    this.#interruptLine = line;
    this.#interruptLevel = this.#pendingInterrupt() !== IIR_NONE;
    if (this.#interruptLevel) line(true);
  }

  /**
   * What the guest has transmitted, decoded as UTF-8: the last `outputLimit`
   * bytes (all of it unless more than that was sent; see `droppedOutput`).
   * A multi-byte character cut by the limit or still incomplete is left out.
   */
  get output(): string {
    if (this.#outputText === undefined) {
      let bytes = this.#output.toBytes();
      if (this.#output.dropped > 0) {
        // The ring may start inside a character: skip its continuation bytes.
        let skip = 0;
        while (skip < bytes.length && skip < 3 && (bytes[skip]! & 0xc0) === 0x80) skip++;
        bytes = bytes.subarray(skip);
      }
      this.#outputText = new TextDecoder().decode(bytes, { stream: true });
    }
    return this.#outputText;
  }

  /**
   * How many bytes `output` keeps (default 1 MiB, {@linkcode DEFAULT_SERIAL_OUTPUT_LIMIT}).
   * Lowering it drops the oldest bytes; `Infinity` keeps everything, for scripts that want all output.
   */
  get outputLimit(): number {
    return this.#output.limit;
  }

  set outputLimit(limit: number) {
    this.#output.limit = limit;
    this.#outputText = undefined;
  }

  /** Bytes transmitted but no longer in `output` because of `outputLimit` (since the last `clearOutput`). */
  get droppedOutput(): number {
    return this.#output.dropped;
  }

  /** Total bytes the guest has transmitted. */
  get transmitted(): number {
    return this.#transmitted;
  }

  /** Forgets the captured output (what `output` returns). */
  clearOutput(): void {
    this.#output.clear();
    this.#outputText = "";
  }

  /** Calls `observer` with each byte the guest transmits; returns a function that unsubscribes. */
  onData(observer: (bytes: Uint8Array) => void): () => void {
    this.#observers.add(observer);
    return () => this.#observers.delete(observer);
  }

  /**
   * Queues input for the guest to receive (as if typed on the line).
   * Throws a RangeError when the host-side queue (1 MiB) would overflow; nothing is queued then.
   */
  send(data: string | Uint8Array): void {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data.slice();
    if (this.#inputBytes + bytes.length > INPUT_LIMIT) {
      throw new RangeError(
        `Cannot queue ${bytes.length} bytes for the serial port: ${this.#inputBytes} bytes already wait (limit ${INPUT_LIMIT})`,
      );
    }
    if (bytes.length === 0) return;
    this.#input.push(bytes);
    this.#inputBytes += bytes.length;
    this.#refill();
  }

  /** Bytes queued for the guest and not yet read by it. */
  get pendingInput(): number {
    return this.#inputBytes + this.#rx.length;
  }

  /**
   * Resolves once `pattern` matches the whole captured output ({@link output}:
   * everything since boot or {@link clearOutput}, read or not), so a second
   * `waitFor()` of text already there resolves at once; {@link expect} reads
   * from a cursor instead. Rejects after `timeout` ms (default 10 s), or as
   * soon as the VM stops or closes first (see {@link SerialReader}).
   */
  waitFor(pattern: RegExp | string, options: ExpectOptions = {}): Promise<RegExpMatchArray> {
    return this.#reader.waitFor(pattern, options);
  }

  /**
   * Waits for `pattern` in the output after the cursor and moves the cursor
   * past the match: consumed text is never matched again. Rejects after
   * `timeout` ms (default 10 s), or as soon as the VM stops or closes first.
   */
  expect(pattern: RegExp | string, options: ExpectOptions = {}): Promise<RegExpExecArray> {
    return this.#reader.expect(pattern, options);
  }

  /**
   * Runs `command` at a shell on this port: sends it with a newline, waits for
   * its echo and the next prompt (`prompt`; by default a last line ending in `$ `, `# ` or `> `), and resolves
   * with what it printed in between. `transcript` keeps the whole exchange.
   *
   * @example
   * ```ts ignore
   * const version = await vm.serial.exec("uname -r", { prompt: "# ", timeout: 30_000 });
   * ```
   */
  exec(command: string, options: ExecOptions = {}): Promise<string> {
    return this.#reader.exec(command, (text) => this.send(text), options);
  }

  /** Waits for every pattern after the cursor, in any order; the cursor moves past the last match. */
  expectAll(patterns: readonly (RegExp | string)[], options: ExpectOptions = {}): Promise<RegExpExecArray[]> {
    return this.#reader.expectAll(patterns, options);
  }

  /** Waits for the next whole line after the cursor and consumes it (without its line end). */
  readLine(options: ExpectOptions = {}): Promise<string> {
    return this.#reader.readLine(options);
  }

  /** Everything the guest transmitted, as the expect reader keeps it (last 4 MiB; unaffected by {@link clearOutput}). */
  get transcript(): string {
    return this.#reader.transcript;
  }

  /** The output after the expect cursor: what the next {@link expect} searches. */
  get unread(): string {
    return this.#reader.unread;
  }

  /** Makes waits reject when `machine` stops or closes (the VM calls this for its COM1). */
  watchStops(machine: StopSource): void {
    this.#reader.watchStops(machine);
  }

  /** A copy of the device state (plain JSON data). */
  get state(): SerialState {
    const input = new Uint8Array(this.#inputBytes);
    let at = 0;
    this.#input.forEach((chunk, i) => {
      const part = i === 0 ? chunk.subarray(this.#inputOffset) : chunk;
      input.set(part, at);
      at += part.length;
    });
    return { ...this.#state, rxFifo: [...this.#rx], inputQueue: toBase64(input) };
  }

  /**
   * Puts the UART in `state`. The interrupt line is then driven to the
   * state's level: raised when an interrupt is pending (even if this UART
   * had raised it already, so a line a new interrupt controller lost comes
   * back), lowered only when this UART had it raised. Captured output and
   * observers are kept. Throws a TypeError or RangeError naming the bad field
   * and its value, and changes nothing, when `state` is not a valid state.
   */
  restore(state: SerialState): void {
    const r = new StateReader("serial port", state);
    const registers: SerialRegisters = {
      ier: r.integer("ier", 0, IER_RDA | IER_THRE | IER_RLS | IER_MSI, true),
      lcr: r.byte("lcr"),
      mcr: r.integer("mcr", 0, 0x1f, true),
      lsr: r.byte("lsr"),
      msr: r.byte("msr"),
      scr: r.byte("scr"),
      dll: r.byte("dll"),
      dlm: r.byte("dlm"),
      fifoEnabled: r.boolean("fifoEnabled"),
      thrInterruptPending: r.boolean("thrInterruptPending"),
    };
    const rx = r.bytes("rxFifo", 0, RX_FIFO_SIZE);
    const input = r.base64("inputQueue", 0, INPUT_LIMIT);
    this.#state = registers;
    this.#rx = [...rx];
    this.#input = input.length > 0 ? [input] : [];
    this.#inputOffset = 0;
    this.#inputBytes = input.length;
    const wasRaised = this.#interruptLevel;
    this.#interruptLevel = this.#pendingInterrupt() !== IIR_NONE;
    if (this.#interruptLevel || wasRaised) this.#interruptLine?.(this.#interruptLevel);
  }

  /** Port read at `offset` from the base (0-7). */
  read(offset: number, _size: number): number {
    const s = this.#state;
    const dlab = (s.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR: {
        if (dlab) return s.dll;
        const byte = this.#rx.shift() ?? 0;
        this.#refill();
        return byte;
      }
      case IER:
        return dlab ? s.dlm : s.ier;
      case IIR_FCR: {
        const iir = this.#pendingInterrupt();
        if (iir === IIR_THRE) {
          s.thrInterruptPending = false;
          this.#updateInterrupt();
        }
        return iir | (s.fifoEnabled ? IIR_FIFO_ENABLED : 0);
      }
      case LCR:
        return s.lcr;
      case MCR:
        return s.mcr;
      case LSR: {
        const value = s.lsr | (this.#rx.length > 0 ? LSR_DR : 0);
        s.lsr &= ~LSR_OE;
        return value;
      }
      case MSR:
        // Loopback wiring of the 16550: OUT2->DCD, OUT1->RI, DTR->DSR, RTS->CTS.
        return (s.mcr & MCR_LOOP) !== 0 ? ((s.mcr & 0x0c) << 4) | ((s.mcr & 0x02) << 3) | ((s.mcr & 0x01) << 5) : s.msr;
      case SCR:
        return s.scr;
      default:
        return 0xff;
    }
  }

  /** Port write at `offset` from the base (0-7). */
  write(offset: number, _size: number, value: number): void {
    const s = this.#state;
    const byte = value & 0xff;
    const dlab = (s.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR:
        if (dlab) {
          s.dll = byte;
        } else if ((s.mcr & MCR_LOOP) !== 0) {
          this.#rx.push(byte);
          if (this.#rx.length > RX_FIFO_SIZE) this.#rx.shift();
          s.thrInterruptPending = true;
        } else {
          this.#transmit(byte);
          s.thrInterruptPending = true;
        }
        break;
      case IER:
        if (dlab) {
          s.dlm = byte;
        } else {
          const enablingThre = (byte & IER_THRE) !== 0 && (s.ier & IER_THRE) === 0;
          s.ier = byte & (IER_RDA | IER_THRE | IER_RLS | IER_MSI);
          if (enablingThre) s.thrInterruptPending = true;
        }
        break;
      case IIR_FCR:
        s.fifoEnabled = (byte & 0x01) !== 0;
        if ((byte & 0x02) !== 0) this.#rx.length = 0;
        this.#refill();
        break;
      case LCR:
        s.lcr = byte;
        break;
      case MCR:
        s.mcr = byte & 0x1f;
        break;
      case SCR:
        s.scr = byte;
        break;
      default:
        break; // LSR and MSR are read-only
    }
    this.#updateInterrupt();
  }

  #transmit(byte: number): void {
    this.#transmitted++;
    this.#output.push(byte);
    this.#outputText = undefined;
    if (this.#observers.size > 0) {
      const bytes = Uint8Array.of(byte);
      for (const observer of this.#observers) observer(bytes);
    }
  }

  #refill(): void {
    while (this.#rx.length < RX_FIFO_SIZE && this.#input.length > 0) {
      const chunk = this.#input[0]!;
      this.#rx.push(chunk[this.#inputOffset++]!);
      this.#inputBytes--;
      if (this.#inputOffset >= chunk.length) {
        this.#input.shift();
        this.#inputOffset = 0;
      }
      if (!this.#state.fifoEnabled) break; // a 16450-style one-byte holding register
    }
    this.#updateInterrupt();
  }

  #pendingInterrupt(): number {
    const s = this.#state;
    if ((s.ier & IER_RDA) !== 0 && this.#rx.length > 0) return IIR_RDA;
    if ((s.ier & IER_THRE) !== 0 && s.thrInterruptPending) return IIR_THRE;
    return IIR_NONE;
  }

  #updateInterrupt(): void {
    // Like QEMU, OUT2 (MCR bit 3) does not gate the line.
    const level = this.#pendingInterrupt() !== IIR_NONE;
    if (level === this.#interruptLevel) return;
    this.#interruptLevel = level;
    this.#interruptLine?.(level);
  }
}
