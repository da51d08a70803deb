/**
 * A 16550A UART model (the PC's COM ports), in the style of rust-vmm's
 * vm-superio: a pure register model with an injected interrupt line and
 * observers, placed on the I/O bus by the machine builder.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader, toBase64 } from "./_state.ts";

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
/** How much output {@link Serial16550.output} keeps (oldest text is dropped first). */
const OUTPUT_LIMIT = 16 << 20;

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
  #outputText = "";
  #decoder = new TextDecoder();
  #observers = new Set<(bytes: Uint8Array) => void>();
  #waiters = new Set<() => void>();
  #interruptLine: ((level: boolean) => void) | undefined;
  #interruptLevel = false;
  #transmitted = 0;

  /**
   * Builds a UART in `state` (as {@link Serial16550.state} returns it,
   * possibly through JSON). Throws as {@link Serial16550.restore} does.
   */
  static fromState(state: SerialState): Serial16550 {
    const uart = new Serial16550();
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

  /** Everything the guest has transmitted, decoded as UTF-8 (bounded to the last 16 MiB). */
  get output(): string {
    return this.#outputText;
  }

  /** Total bytes the guest has transmitted. */
  get transmitted(): number {
    return this.#transmitted;
  }

  /** Forgets the captured output (what `output` returns). */
  clearOutput(): void {
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
   * Resolves with the output once it matches `pattern`; rejects after `timeout` ms (default 10 s).
   * Looks at output already captured first.
   */
  waitFor(pattern: RegExp | string, options: { timeout?: number } = {}): Promise<RegExpMatchArray> {
    const regex = typeof pattern === "string" ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")) : pattern;
    const timeout = options.timeout ?? 10_000;
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const match = this.#outputText.match(regex);
        if (match === null) return false;
        cleanup();
        resolve(match);
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `Timed out after ${timeout} ms waiting for ${regex} on the serial port; output so far: ${
              JSON.stringify(this.#outputText.slice(-200))
            }`,
          ),
        );
      }, timeout);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
      };
      const waiter = () => void check();
      if (!check()) this.#waiters.add(waiter);
    });
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
    const bytes = Uint8Array.of(byte);
    this.#outputText += this.#decoder.decode(bytes, { stream: true });
    if (this.#outputText.length > OUTPUT_LIMIT) this.#outputText = this.#outputText.slice(-OUTPUT_LIMIT / 2);
    for (const observer of this.#observers) observer(bytes);
    for (const waiter of [...this.#waiters]) waiter();
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
