/**
 * The PC's 8042 keyboard controller, as much of it as kernels use without a
 * keyboard: the status register, the command byte, the self-tests, the
 * output port and the reset line (command 0xfe, the classic way to reboot a
 * PC). No keyboard or mouse is attached: bytes sent to them are dropped.
 *
 * The controller has two ports that are not adjacent (0x60 data, 0x64
 * status/command, with port 0x61 between them), so the model exposes two
 * bus adapters, {@link I8042.dataPort} and {@link I8042.commandPort}.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader } from "./_state.ts";

/** Status register bits (port 0x64 reads). */
export const I8042_STATUS = {
  /** Output buffer full: port 0x60 has a byte. */
  outputFull: 0x01,
  /** Input buffer full: never set, the model consumes writes at once. */
  inputFull: 0x02,
  /** System flag: set once the self-test passed (firmware did it, or the guest's 0xaa). */
  system: 0x04,
  /** The last write went to the command port. */
  command: 0x08,
  /** Keyboard not inhibited. */
  unlocked: 0x10,
  /** The byte in the output buffer came from the mouse. */
  mouseOutputFull: 0x20,
} as const;

/** Command-byte bits (read with 0x20, written with 0x60). */
export const I8042_MODE = {
  keyboardInterrupt: 0x01,
  mouseInterrupt: 0x02,
  system: 0x04,
  keyboardDisabled: 0x10,
  mouseDisabled: 0x20,
  translate: 0x40,
} as const;

/** Output-port bits (read with 0xd0, written with 0xd1). */
export const I8042_OUTPUT = {
  /** Clear = the CPU is held in reset. */
  reset: 0x01,
  /** The A20 gate. */
  a20: 0x02,
} as const;

const IRQ_KEYBOARD = 1;
const IRQ_MOUSE = 12;
const QUEUE_LIMIT = 16;

/** Options for {@link I8042}. */
export interface I8042Options {
  /**
   * Called when the guest pulses the reset line (command 0xfe, any 0xf0-0xff
   * command with bit 0 clear, or an output-port write with bit 0 clear).
   * The VM decides whether that resets or stops it.
   */
  onReset: () => void;
  /** Drives ISA IRQ 1 (keyboard byte) and 12 (mouse byte) while a byte waits and the command byte enables it. */
  setIrq?: (irq: number, level: boolean) => void;
  /** Called when the guest changes the A20 gate (output port bit 1). */
  onA20?: (enabled: boolean) => void;
}

/** Commands that wait for a data byte on port 0x60. */
const DATA_COMMANDS: readonly number[] = [0x60, 0xd1, 0xd2, 0xd3, 0xd4];

/**
 * Snapshot of the controller (plain JSON data). The IRQ 1 and 12 levels
 * follow from the queue's head and the command byte.
 */
export interface I8042State {
  /** The status register; its output-full bits follow the queue. */
  status: number;
  /** The command byte ("mode"). */
  mode: number;
  outputPort: number;
  /** A command waiting for its data byte, or 0. */
  pendingCommand: number;
  /** Bytes waiting to be read from port 0x60; `mouse` marks those from the aux port. */
  queue: { byte: number; mouse: boolean }[];
  /** The byte port 0x60 returns when the queue is empty. */
  lastByte: number;
}

/**
 * An 8042 keyboard controller without devices behind it; place
 * {@link I8042.dataPort} at 0x60 and {@link I8042.commandPort} at 0x64.
 *
 * @example
 * ```ts
 * import { I8042 } from "./i8042.ts";
 * import assert from "node:assert/strict";
 * let resets = 0;
 * const kbc = new I8042({ onReset: () => resets++ });
 * kbc.commandPort.write(0, 1, 0xaa); // self-test
 * assert.equal(kbc.dataPort.read(0, 1), 0x55);
 * kbc.commandPort.write(0, 1, 0xfe); // pulse the reset line
 * assert.equal(resets, 1);
 * ```
 */
export class I8042 {
  readonly #options: I8042Options;
  #status = I8042_STATUS.system | I8042_STATUS.command | I8042_STATUS.unlocked;
  #mode = I8042_MODE.keyboardInterrupt | I8042_MODE.mouseInterrupt | I8042_MODE.system | I8042_MODE.translate;
  #outputPort = I8042_OUTPUT.reset | I8042_OUTPUT.a20;
  #pendingCommand = 0;
  #queue: { byte: number; mouse: boolean }[] = [];
  #lastByte = 0;
  #irq = { keyboard: false, mouse: false };

  /** The data port (0x60): offset 0, byte accesses. */
  readonly dataPort: IoDevice;
  /** The status (read) and command (write) port (0x64): offset 0, byte accesses. */
  readonly commandPort: IoDevice;

  constructor(options: I8042Options) {
    this.#options = options;
    this.dataPort = {
      read: () => this.readData(),
      write: (_offset, _size, value) => this.writeData(value & 0xff),
    };
    this.commandPort = {
      read: () => this.readStatus(),
      write: (_offset, _size, value) => this.writeCommand(value & 0xff),
    };
  }

  /** Builds a controller from `options` in `state`; throws as {@link I8042.restore} does. */
  static fromState(state: I8042State, options: I8042Options): I8042 {
    const controller = new I8042(options);
    controller.restore(state);
    return controller;
  }

  /** A copy of the controller state (plain JSON data). */
  get state(): I8042State {
    return {
      status: this.readStatus(),
      mode: this.#mode,
      outputPort: this.#outputPort,
      pendingCommand: this.#pendingCommand,
      queue: this.#queue.map((entry) => ({ ...entry })),
      lastByte: this.#lastByte,
    };
  }

  /**
   * Puts the controller in `state`. IRQ 1 and 12 are then driven to the
   * state's levels: raised when a byte waits with its interrupt enabled
   * (even if already raised here, so a line a new interrupt controller lost
   * comes back), lowered only when this controller had it raised. The A20
   * and reset lines are not driven: they belong to the machine's own state.
   * Throws a TypeError or RangeError naming the bad field and its value, and
   * changes nothing, when `state` is not a valid state.
   */
  restore(state: I8042State): void {
    const r = new StateReader("i8042", state);
    const status = r.byte("status");
    const mode = r.byte("mode");
    const outputPort = r.byte("outputPort");
    const pendingCommand = r.byte("pendingCommand");
    if (pendingCommand !== 0 && !DATA_COMMANDS.includes(pendingCommand)) {
      r.rangeError("pendingCommand", pendingCommand, "0 or a command that takes data (0x60, 0xd1-0xd4)");
    }
    const queue = r.array("queue", 0, QUEUE_LIMIT).map((_, i) => {
      const entry = r.element("queue", i);
      return { byte: entry.byte("byte"), mouse: entry.boolean("mouse") };
    });
    const lastByte = r.byte("lastByte");
    this.#status = status & ~(I8042_STATUS.outputFull | I8042_STATUS.mouseOutputFull);
    this.#mode = mode;
    this.#outputPort = outputPort;
    this.#pendingCommand = pendingCommand;
    this.#queue = queue;
    this.#lastByte = lastByte;
    const wasRaised = { ...this.#irq };
    this.#irq = { keyboard: false, mouse: false };
    this.#updateIrq();
    if (wasRaised.keyboard && !this.#irq.keyboard) this.#options.setIrq?.(IRQ_KEYBOARD, false);
    if (wasRaised.mouse && !this.#irq.mouse) this.#options.setIrq?.(IRQ_MOUSE, false);
  }

  /** The status register. */
  readStatus(): number {
    const head = this.#queue[0];
    let status = this.#status & ~(I8042_STATUS.outputFull | I8042_STATUS.mouseOutputFull);
    if (head !== undefined) status |= I8042_STATUS.outputFull | (head.mouse ? I8042_STATUS.mouseOutputFull : 0);
    return status;
  }

  /** Takes the next output byte; with none waiting, returns the last one again (0 at first). */
  readData(): number {
    const head = this.#queue.shift();
    if (head !== undefined) this.#lastByte = head.byte;
    this.#updateIrq();
    return this.#lastByte;
  }

  /** A byte written to port 0x60: the data of a pending command, or a byte for the (absent) keyboard. */
  writeData(byte: number): void {
    this.#status &= ~I8042_STATUS.command;
    const command = this.#pendingCommand;
    this.#pendingCommand = 0;
    switch (command) {
      case 0x60: // write command byte
        this.#mode = byte;
        this.#status = (this.#status & ~I8042_STATUS.system) | (byte & I8042_MODE.system);
        this.#updateIrq();
        break;
      case 0xd1: // write output port
        this.#setOutputPort(byte);
        break;
      case 0xd2: // write keyboard output buffer
        this.#push(byte, false);
        break;
      case 0xd3: // write mouse output buffer
        this.#push(byte, true);
        break;
      default:
        break; // 0xd4 (to the mouse) or a byte for the keyboard: nothing is attached
    }
  }

  /** A controller command written to port 0x64. */
  writeCommand(command: number): void {
    this.#status |= I8042_STATUS.command;
    this.#pendingCommand = 0;
    switch (command) {
      case 0x20: // read command byte
        this.#push(this.#mode, false);
        break;
      case 0x60:
      case 0xd1:
      case 0xd2:
      case 0xd3:
      case 0xd4:
        this.#pendingCommand = command;
        break;
      case 0xa7:
        this.#mode |= I8042_MODE.mouseDisabled;
        break;
      case 0xa8:
        this.#mode &= ~I8042_MODE.mouseDisabled;
        break;
      case 0xa9: // test the mouse port: 0 = no fault
      case 0xab: // test the keyboard port: 0 = no fault
        this.#push(0x00, false);
        break;
      case 0xaa: // controller self-test
        this.#status |= I8042_STATUS.system;
        this.#push(0x55, false);
        break;
      case 0xad:
        this.#mode |= I8042_MODE.keyboardDisabled;
        break;
      case 0xae:
        this.#mode &= ~I8042_MODE.keyboardDisabled;
        break;
      case 0xc0: // read input port
        this.#push(0x00, false);
        break;
      case 0xd0: // read output port
        this.#push(this.#outputPort, false);
        break;
      case 0xdd:
        this.#setOutputPort(this.#outputPort & ~I8042_OUTPUT.a20);
        break;
      case 0xdf:
        this.#setOutputPort(this.#outputPort | I8042_OUTPUT.a20);
        break;
      default:
        // 0xf0-0xff pulse output-port lines low for a moment: bit 0 clear pulses the reset line.
        if (command >= 0xf0 && (command & 0x01) === 0) this.#options.onReset();
        break;
    }
  }

  #setOutputPort(value: number): void {
    const a20Changed = ((value ^ this.#outputPort) & I8042_OUTPUT.a20) !== 0;
    this.#outputPort = value;
    if (a20Changed) this.#options.onA20?.((value & I8042_OUTPUT.a20) !== 0);
    if ((value & I8042_OUTPUT.reset) === 0) {
      this.#outputPort |= I8042_OUTPUT.reset; // the line comes back up after the pulse
      this.#options.onReset();
    }
  }

  #push(byte: number, mouse: boolean): void {
    if (this.#queue.length >= QUEUE_LIMIT) this.#queue.shift();
    this.#queue.push({ byte: byte & 0xff, mouse });
    this.#updateIrq();
  }

  #updateIrq(): void {
    const head = this.#queue[0];
    const keyboard = head !== undefined && !head.mouse && (this.#mode & I8042_MODE.keyboardInterrupt) !== 0;
    const mouse = head !== undefined && head.mouse && (this.#mode & I8042_MODE.mouseInterrupt) !== 0;
    if (keyboard !== this.#irq.keyboard) {
      this.#irq.keyboard = keyboard;
      this.#options.setIrq?.(IRQ_KEYBOARD, keyboard);
    }
    if (mouse !== this.#irq.mouse) {
      this.#irq.mouse = mouse;
      this.#options.setIrq?.(IRQ_MOUSE, mouse);
    }
  }
}
