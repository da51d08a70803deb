/**
 * The PC's CMOS RAM and real-time clock (an MC146818 as QEMU's `mc146818rtc`
 * presents it): an index port and a data port, 128 bytes of which the first
 * 14 are the clock and its status registers. The time comes from the host
 * clock (UTC) plus whatever offset the guest sets; the memory-size bytes are
 * filled in as SeaBIOS and QEMU's `pc_cmos_init` leave them, so a guest
 * booted without firmware still finds them.
 *
 * Ports (offsets from 0x70): 0 = index (write; bit 7 disables NMI, bits 0-6
 * select the byte), 1 = data. Interrupts (periodic, alarm, update-ended) are
 * not modelled: register C always reads 0.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader } from "./_state.ts";

/** CMOS byte indices with a meaning to the clock or to firmware. */
export const CMOS_INDEX = {
  seconds: 0x00,
  secondsAlarm: 0x01,
  minutes: 0x02,
  minutesAlarm: 0x03,
  hours: 0x04,
  hoursAlarm: 0x05,
  dayOfWeek: 0x06,
  dayOfMonth: 0x07,
  month: 0x08,
  year: 0x09,
  statusA: 0x0a,
  statusB: 0x0b,
  statusC: 0x0c,
  statusD: 0x0d,
  /** Base memory in KiB, 2 bytes (640). */
  baseMemory: 0x15,
  /** Extended memory above 1 MiB in KiB, 2 bytes, capped at 0xffff. */
  extendedMemory: 0x17,
  /** The same again, as the POST leaves it. */
  extendedMemoryPost: 0x30,
  /** The century. */
  century: 0x32,
  /** Memory above 16 MiB (and below 4 GiB) in 64 KiB blocks, 2 bytes, capped at 0xffff. */
  memoryAbove16M: 0x34,
  /** Memory above 4 GiB in 64 KiB blocks, 3 bytes. */
  memoryAbove4G: 0x5b,
  /** Number of CPUs minus one (QEMU and SeaBIOS only). */
  cpuCountMinusOne: 0x5f,
} as const;

const STATUS_A_UIP = 0x80;
const STATUS_B_SET = 0x80;
const STATUS_B_24H = 0x02;
const STATUS_B_BINARY = 0x04;
const STATUS_D_VRT = 0x80;
const STATUS_B_AIE = 0x20;
const STATUS_C_IRQF = 0x80;
const STATUS_C_AF = 0x20;
/** An alarm byte with its two top bits set matches any value ("don't care"). */
const ALARM_DONT_CARE = 0xc0;
/** How long before each second's update UIP reads as set (the chip's is 244 µs; guests poll slower here). */
const UIP_WINDOW_MS = 2;

const KIB = 1024;
const MIB = 1024 * KIB;
const BLOCK_64K = 64 * KIB;

/** Where RAM stops below 4 GiB when it is larger: the PC's PCI hole starts here. */
const DEFAULT_LOW_RAM_LIMIT = 0xc000_0000;

/** The date and time as the RTC registers hold them (binary, 24-hour, full year). */
export interface RtcTime {
  year: number;
  /** 1-12. */
  month: number;
  /** 1-31. */
  day: number;
  hours: number;
  minutes: number;
  seconds: number;
}

/** Options for {@link Cmos}. */
export interface CmosOptions {
  /** Guest RAM in bytes; fills the memory-size bytes. Default 0. */
  ramSize?: number;
  /** RAM at and above this address is placed above 4 GiB (default 0xc0000000, the PCI hole). */
  lowRamLimit?: number;
  /** When given, byte 0x5f holds `cpus - 1`, as QEMU sets it for SeaBIOS. */
  cpus?: number;
  /** The host clock (default `() => new Date()`); the RTC reads it as UTC. */
  now?: () => Date;
}

/**
 * Snapshot of the CMOS: its bytes and the clock's offset from the host
 * clock (plain JSON data). The guest time is kept as an offset from the
 * host's wall clock, so it moves on with that clock in another process; an
 * armed alarm is its registers (0x01, 0x03, 0x05) and register B's AIE bit.
 */
export interface CmosState {
  /** The selected index (0-127). */
  index: number;
  /** Whether the last index write set bit 7 (NMI disabled). */
  nmiDisabled: boolean;
  /** All 128 bytes; the clock registers 0x00-0x09 and 0x32 read from the clock instead. */
  ram: number[];
  /** Guest time minus host time, in milliseconds. */
  offsetMs: number;
  /** The time held while register B's SET bit stops the clock, or null. */
  held: RtcTime | null;
  /** Whether status C will read the alarm flags (IRQF|AF) once: the alarm fired and the guest has not read them. */
  alarmFired: boolean;
}

function toBcd(value: number): number {
  return ((Math.floor(value / 10) % 10) << 4) | (value % 10);
}

function fromBcd(value: number): number {
  return (value >> 4) * 10 + (value & 0x0f);
}

function fieldsOf(ms: number): RtcTime {
  const date = new Date(ms);
  return {
    year: date.getUTCFullYear(),
    month: date.getUTCMonth() + 1,
    day: date.getUTCDate(),
    hours: date.getUTCHours(),
    minutes: date.getUTCMinutes(),
    seconds: date.getUTCSeconds(),
  };
}

function msOf(time: RtcTime): number {
  return Date.UTC(time.year, time.month - 1, time.day, time.hours, time.minutes, time.seconds);
}

function setBytes(ram: Uint8Array, index: number, count: number, value: number): void {
  for (let i = 0; i < count; i++) ram[index + i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
}

/**
 * CMOS RAM and RTC, placed at ports 0x70-0x71.
 *
 * @example
 * ```ts
 * import { Cmos } from "./cmos.ts";
 * import assert from "node:assert/strict";
 * const cmos = new Cmos({ ramSize: 64 << 20, now: () => new Date("2024-05-06T07:08:09Z") });
 * cmos.write(0, 1, 0x04); // select the hours
 * assert.equal(cmos.read(1, 1), 0x07); // BCD, 24-hour: the defaults
 * cmos.write(0, 1, 0x30); // extended memory (KiB above 1 MiB), low byte
 * const low = cmos.read(1, 1);
 * cmos.write(0, 1, 0x31); // high byte
 * assert.equal(low | (cmos.read(1, 1) << 8), (64 << 10) - 1024);
 * ```
 */
export class Cmos implements IoDevice {
  readonly #ram = new Uint8Array(128);
  readonly #now: () => Date;
  #index = 0;
  #nmiDisabled = false;
  #offsetMs = 0;
  #held: RtcTime | null = null;
  #alarmFired = false;

  constructor(options: CmosOptions = {}) {
    const ramSize = options.ramSize ?? 0;
    const lowRamLimit = options.lowRamLimit ?? DEFAULT_LOW_RAM_LIMIT;
    if (!Number.isSafeInteger(ramSize) || ramSize < 0) {
      throw new RangeError(`Cannot build the CMOS: RAM size ${ramSize} is not a non-negative integer`);
    }
    if (options.cpus !== undefined && (!Number.isInteger(options.cpus) || options.cpus < 1 || options.cpus > 256)) {
      throw new RangeError(`Cannot build the CMOS: CPU count ${options.cpus} is not in 1-256`);
    }
    this.#now = options.now ?? (() => new Date());
    const ram = this.#ram;
    ram[CMOS_INDEX.statusA] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
    ram[CMOS_INDEX.statusB] = STATUS_B_24H; // BCD, 24-hour, no interrupts
    const below4g = Math.min(ramSize, lowRamLimit);
    const above4g = ramSize - below4g;
    setBytes(ram, CMOS_INDEX.baseMemory, 2, 640);
    const extendedKib = Math.min(Math.max(Math.floor(below4g / KIB) - 1024, 0), 0xffff);
    setBytes(ram, CMOS_INDEX.extendedMemory, 2, extendedKib);
    setBytes(ram, CMOS_INDEX.extendedMemoryPost, 2, extendedKib);
    const blocksAbove16M = below4g > 16 * MIB ? Math.min(Math.floor((below4g - 16 * MIB) / BLOCK_64K), 0xffff) : 0;
    setBytes(ram, CMOS_INDEX.memoryAbove16M, 2, blocksAbove16M);
    setBytes(ram, CMOS_INDEX.memoryAbove4G, 3, Math.min(Math.floor(above4g / BLOCK_64K), 0xffffff));
    if (options.cpus !== undefined) ram[CMOS_INDEX.cpuCountMinusOne] = options.cpus - 1;
  }

  /** Whether the guest last wrote the index port with bit 7 set (NMI disabled). */
  get nmiDisabled(): boolean {
    return this.#nmiDisabled;
  }

  /** The guest's current date and time (UTC, binary). */
  get time(): RtcTime {
    return this.#held !== null ? { ...this.#held } : fieldsOf(this.#guestMs());
  }

  /**
   * Builds a CMOS from `options` (its clock) in `state`; throws as
   * {@link Cmos.restore} does. The memory-size options are not needed: the
   * bytes come from the state.
   */
  static fromState(state: CmosState, options: CmosOptions = {}): Cmos {
    const cmos = new Cmos(options);
    cmos.restore(state);
    return cmos;
  }

  /** A copy of the CMOS state (plain JSON data). */
  get state(): CmosState {
    return {
      index: this.#index,
      nmiDisabled: this.#nmiDisabled,
      ram: [...this.#ram],
      offsetMs: this.#offsetMs,
      held: this.#held === null ? null : { ...this.#held },
      alarmFired: this.#alarmFired,
    };
  }

  /**
   * Puts the CMOS in `state`: its bytes, selected index, clock offset and
   * alarm flag. Throws a TypeError or RangeError naming the bad field and its
   * value, and changes nothing, when `state` is not a valid state.
   */
  restore(state: CmosState): void {
    const r = new StateReader("CMOS", state);
    const index = r.integer("index", 0, 0x7f, true);
    const nmiDisabled = r.boolean("nmiDisabled");
    const ram = r.bytes("ram", 128, 128);
    const offsetMs = r.finite("offsetMs");
    let held: RtcTime | null = null;
    if (r.raw("held") !== null) {
      const h = r.object("held");
      // While SET holds the clock a guest may write any byte to a field, so only the type is checked.
      held = {
        year: h.integer("year", -(2 ** 31), 2 ** 31),
        month: h.byte("month"),
        day: h.byte("day"),
        hours: h.byte("hours"),
        minutes: h.byte("minutes"),
        seconds: h.byte("seconds"),
      };
    }
    const alarmFired = r.boolean("alarmFired");
    this.#index = index;
    this.#nmiDisabled = nmiDisabled;
    this.#ram.set(ram);
    this.#offsetMs = offsetMs;
    this.#held = held;
    this.#alarmFired = alarmFired;
  }

  /** Offset 0 (index) reads 0xff, as the write-only port does on QEMU; offset 1 reads the selected byte. */
  read(offset: number, _size: number): number {
    if (offset !== 1) return 0xff;
    return this.#readRegister(this.#index);
  }

  /** Offset 0 selects a byte (bit 7: NMI disable); offset 1 writes the selected byte. */
  write(offset: number, _size: number, value: number): void {
    const byte = value & 0xff;
    if (offset === 0) {
      this.#index = byte & 0x7f;
      this.#nmiDisabled = (byte & 0x80) !== 0;
    } else if (offset === 1) {
      this.#writeRegister(this.#index, byte);
    }
  }

  /**
   * Milliseconds until the alarm (registers 1, 3, 5, each "don't care" when
   * 0xc0-0xff) next matches the RTC, or undefined when the alarm interrupt
   * (register B bit 5) is off. Used to wake a sleeping (S3) machine.
   */
  alarmDelay(): number | undefined {
    if ((this.#ram[CMOS_INDEX.statusB]! & STATUS_B_AIE) === 0) return undefined;
    const now = this.#guestMs();
    const want = [CMOS_INDEX.secondsAlarm, CMOS_INDEX.minutesAlarm, CMOS_INDEX.hoursAlarm].map((i) => {
      const byte = this.#ram[i]!;
      return byte >= ALARM_DONT_CARE ? undefined : this.#decode(byte);
    });
    for (let second = 1; second <= 86_400; second++) {
      const at = Math.floor(now / 1000) * 1000 + second * 1000;
      const t = fieldsOf(at);
      if ([t.seconds, t.minutes, t.hours].every((value, i) => want[i] === undefined || want[i] === value)) {
        return at - now;
      }
    }
    return undefined;
  }

  /** Marks the alarm as fired (status C reads IRQF|AF once), as a wake by the alarm does. */
  fireAlarm(): void {
    this.#alarmFired = true;
  }

  #guestMs(): number {
    return this.#now().getTime() + this.#offsetMs;
  }

  #encode(value: number): number {
    return (this.#ram[CMOS_INDEX.statusB]! & STATUS_B_BINARY) !== 0 ? value & 0xff : toBcd(value);
  }

  #decode(value: number): number {
    return (this.#ram[CMOS_INDEX.statusB]! & STATUS_B_BINARY) !== 0 ? value : fromBcd(value);
  }

  #readRegister(index: number): number {
    const time = this.time;
    const is24h = (this.#ram[CMOS_INDEX.statusB]! & STATUS_B_24H) !== 0;
    switch (index) {
      case CMOS_INDEX.seconds:
        return this.#encode(time.seconds);
      case CMOS_INDEX.minutes:
        return this.#encode(time.minutes);
      case CMOS_INDEX.hours: {
        if (is24h) return this.#encode(time.hours);
        const hour12 = time.hours % 12 === 0 ? 12 : time.hours % 12;
        return this.#encode(hour12) | (time.hours >= 12 ? 0x80 : 0);
      }
      case CMOS_INDEX.dayOfWeek:
        return this.#encode(new Date(msOf(time)).getUTCDay() + 1); // Sunday = 1
      case CMOS_INDEX.dayOfMonth:
        return this.#encode(time.day);
      case CMOS_INDEX.month:
        return this.#encode(time.month);
      case CMOS_INDEX.year:
        return this.#encode(((time.year % 100) + 100) % 100);
      case CMOS_INDEX.century:
        return this.#encode(Math.floor(time.year / 100));
      case CMOS_INDEX.statusA: {
        // UIP rises just before each second's update, so guests that wait for an update edge see one.
        const inSecond = ((this.#guestMs() % 1000) + 1000) % 1000;
        return (this.#ram[index]! & ~STATUS_A_UIP) | (inSecond >= 1000 - UIP_WINDOW_MS ? STATUS_A_UIP : 0);
      }
      case CMOS_INDEX.statusC: {
        // Only the alarm flag is modelled (set by a wake from sleep); reading clears it.
        const flags = this.#alarmFired ? STATUS_C_IRQF | STATUS_C_AF : 0;
        this.#alarmFired = false;
        return flags;
      }
      case CMOS_INDEX.statusD:
        return STATUS_D_VRT;
      default:
        return this.#ram[index]!;
    }
  }

  #writeRegister(index: number, byte: number): void {
    switch (index) {
      case CMOS_INDEX.seconds:
        return this.#setTime((t) => t.seconds = this.#decode(byte & 0x7f));
      case CMOS_INDEX.minutes:
        return this.#setTime((t) => t.minutes = this.#decode(byte & 0x7f));
      case CMOS_INDEX.hours: {
        const is24h = (this.#ram[CMOS_INDEX.statusB]! & STATUS_B_24H) !== 0;
        const hours = is24h
          ? this.#decode(byte & 0x3f)
          : (this.#decode(byte & 0x7f) % 12) + ((byte & 0x80) !== 0 ? 12 : 0);
        return this.#setTime((t) => t.hours = hours);
      }
      case CMOS_INDEX.dayOfWeek:
        return; // derived from the date
      case CMOS_INDEX.dayOfMonth:
        return this.#setTime((t) => t.day = this.#decode(byte));
      case CMOS_INDEX.month:
        return this.#setTime((t) => t.month = this.#decode(byte));
      case CMOS_INDEX.year:
        return this.#setTime((t) => t.year = Math.floor(t.year / 100) * 100 + this.#decode(byte));
      case CMOS_INDEX.century:
        return this.#setTime((t) => t.year = this.#decode(byte) * 100 + (((t.year % 100) + 100) % 100));
      case CMOS_INDEX.statusA:
        this.#ram[index] = byte & ~STATUS_A_UIP;
        return;
      case CMOS_INDEX.statusB: {
        const wasSet = (this.#ram[index]! & STATUS_B_SET) !== 0;
        const isSet = (byte & STATUS_B_SET) !== 0;
        if (!wasSet && isSet) this.#held = fieldsOf(this.#guestMs());
        this.#ram[index] = byte;
        if (wasSet && !isSet && this.#held !== null) {
          this.#offsetMs = msOf(this.#held) - this.#now().getTime();
          this.#held = null;
        }
        return;
      }
      case CMOS_INDEX.statusC:
      case CMOS_INDEX.statusD:
        return; // read-only
      default:
        this.#ram[index] = byte;
    }
  }

  /**
   * Changes one field of the guest's time. While SET holds the clock, fields
   * are kept as written (so a guest may pass through an invalid date such as
   * 31 February on its way to a valid one) and take effect when SET clears.
   */
  #setTime(edit: (time: RtcTime) => void): void {
    if (this.#held !== null) {
      edit(this.#held);
      return;
    }
    const time = fieldsOf(this.#guestMs());
    edit(time);
    this.#offsetMs = msOf(time) - this.#now().getTime();
  }
}
