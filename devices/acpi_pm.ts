/**
 * The ACPI fixed-hardware registers a PC's power-management block holds
 * (PIIX4-style, at the FADT's PM base): PM1 event status/enable, PM1
 * control (the sleep request) and the 3.579545 MHz PM timer. The machine
 * decides what a sleep does through an injected callback.
 *
 * Layout from the PM base: +0 PM1a_STS (u16, write 1 to clear), +2 PM1a_EN
 * (u16), +4 PM1a_CNT (u16: SCI_EN bit 0, SLP_TYP bits 10-12, SLP_EN bit 13),
 * +8 PM_TMR (u32, 24 bits valid). The SCI and the timer's overflow status
 * (TMR_STS) are not modelled.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader } from "./_state.ts";

/** PM1 status bits the machine sets. */
export const PM1_STATUS = {
  timer: 1 << 0,
  powerButton: 1 << 8,
  rtc: 1 << 10,
  wake: 1 << 15,
} as const;

const SLP_EN = 1 << 13;
const PM_TIMER_HZ = 3_579_545;
const PM_TIMER_MASK = 0xff_ffff;

/** Options of {@link AcpiPm}. */
export interface AcpiPmOptions {
  /** Called when the guest writes SLP_EN with sleep type `type` (QEMU's DSDT: 0 = S5 off, 1 = S3). */
  onSleep(type: number): void;
  /** Milliseconds clock for the PM timer (injectable for tests). */
  now?: () => number;
}

/** Snapshot of the PM block (plain JSON data). */
export interface AcpiPmState {
  /** PM1a_STS. */
  status: number;
  /** PM1a_EN. */
  enable: number;
  /** PM1a_CNT without SLP_EN (a sleep request is an event, not state). */
  control: number;
  /**
   * The PM timer's 24-bit count when the state was taken. A restored timer
   * counts on from it by its own clock, so the state survives a move to a
   * process whose clock reads differently.
   */
  timer: number;
}

/**
 * The PM1 block and PM timer (12 ports).
 *
 * @example
 * ```ts
 * import { AcpiPm } from "./acpi_pm.ts";
 * let slept = -1;
 * const pm = new AcpiPm({ onSleep: (type) => slept = type });
 * pm.write(4, 2, 0x2400); // SLP_EN with SLP_TYP 1
 * slept; // 1
 * ```
 */
export class AcpiPm implements IoDevice {
  #status = 0;
  #enable = 0;
  #control = 0;
  /** Added to the ticks of the clock to give the timer's count (modulo 2^24). */
  #timerOffset = 0;
  readonly #onSleep: (type: number) => void;
  readonly #now: () => number;

  constructor(options: AcpiPmOptions) {
    this.#onSleep = options.onSleep;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Builds a PM block from `options` in `state`; throws as {@link AcpiPm.restore} does. */
  static fromState(state: AcpiPmState, options: AcpiPmOptions): AcpiPm {
    const pm = new AcpiPm(options);
    pm.restore(state);
    return pm;
  }

  /** A copy of the state (plain JSON data). */
  get state(): AcpiPmState {
    return { status: this.#status, enable: this.#enable, control: this.#control, timer: this.#timer() };
  }

  /**
   * Puts the block in `state`; the timer counts on from the state's count.
   * Throws a TypeError or RangeError naming the bad field and its value, and
   * changes nothing, when `state` is not a valid state.
   */
  restore(state: AcpiPmState): void {
    const r = new StateReader("ACPI PM", state);
    const status = r.integer("status", 0, 0xffff, true);
    const enable = r.integer("enable", 0, 0xffff, true);
    const control = r.integer("control", 0, 0xffff, true);
    if ((control & SLP_EN) !== 0) r.rangeError("control", control, "a value without SLP_EN (bit 13)");
    const timer = r.integer("timer", 0, PM_TIMER_MASK, true);
    this.#status = status;
    this.#enable = enable;
    this.#control = control;
    this.#timerOffset = (timer - this.#ticks()) & PM_TIMER_MASK;
  }

  /** Sets status bits (e.g. WAK_STS and RTC_STS after a wake by the RTC alarm). */
  raise(bits: number): void {
    this.#status |= bits;
  }

  /** Reads a register (any size within it). */
  read(offset: number, size: number): number {
    const registers = new DataView(new ArrayBuffer(12));
    registers.setUint16(0, this.#status, true);
    registers.setUint16(2, this.#enable, true);
    registers.setUint16(4, this.#control & ~SLP_EN, true);
    registers.setUint32(8, this.#timer(), true);
    if (offset + size > 12) return size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return size === 1
      ? registers.getUint8(offset)
      : size === 2
      ? registers.getUint16(offset, true)
      : registers.getUint32(offset, true);
  }

  /** The clock in timer ticks, modulo 2^24. */
  #ticks(): number {
    return Math.floor((this.#now() / 1000) * PM_TIMER_HZ) & PM_TIMER_MASK;
  }

  #timer(): number {
    return (this.#ticks() + this.#timerOffset) & PM_TIMER_MASK;
  }

  /** Writes a register: status bits are cleared by writing 1; SLP_EN requests a sleep. */
  write(offset: number, size: number, value: number): void {
    if (offset === 0 && size >= 2) {
      this.#status &= ~(value & 0xffff);
      if (size === 4) this.#enable = (value >>> 16) & 0xffff;
    } else if (offset === 2 && size >= 2) {
      this.#enable = value & 0xffff;
    } else if (offset === 4 && size >= 2) {
      this.#control = value & 0xffff & ~SLP_EN;
      if ((value & SLP_EN) !== 0) this.#onSleep((value >> 10) & 7);
    }
  }
}
