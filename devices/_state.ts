/**
 * Checks shared by the devices' `restore()` methods. A device state usually
 * arrives from `JSON.parse` of a snapshot, so each field is checked for its
 * type and range before the device changes anything; the errors name the
 * device, the field and the value found.
 *
 * The conventions for the state objects themselves: numbers, strings,
 * booleans, arrays, plain objects and null only. Short byte arrays (FIFOs,
 * CMOS RAM, PCI config space) are `number[]`; long ones (pc-testdev's 64 KiB,
 * the serial port's host-side input) are base64 strings, a third of the size
 * of a JSON number array.
 *
 * @module
 */

/** A field value as an error message shows it. */
function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "bigint") return `${value}n`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (value === null) return "null";
  if (typeof value === "object") return "an object";
  return String(value);
}

function span(min: number, max: number): string {
  return min === max ? String(min) : `${min}-${max}`;
}

/**
 * Reads the fields of one device's state, throwing TypeError (wrong type)
 * or RangeError (out of range) with messages such as
 * `Cannot restore the CMOS state: index is 200, not an integer in 0-127`.
 */
export class StateReader {
  readonly #device: string;
  readonly #state: Record<string, unknown>;
  readonly #prefix: string;

  constructor(device: string, state: unknown, prefix = "") {
    this.#device = device;
    this.#prefix = prefix;
    if (typeof state !== "object" || state === null || Array.isArray(state)) {
      throw new TypeError(`Cannot restore the ${device} state: ${prefix || "it"} is ${show(state)}, not an object`);
    }
    this.#state = state as Record<string, unknown>;
  }

  /** The value of `field`, unchecked. */
  raw(field: string): unknown {
    return this.#field(field);
  }

  /** A reader for the object in `field`. */
  object(field: string): StateReader {
    return new StateReader(this.#device, this.#field(field), this.#name(field));
  }

  /** The object's own field names. */
  keys(): string[] {
    return Object.keys(this.#state);
  }

  /** A reader for the object at `field[index]` (after {@link StateReader.array} checked `field`). */
  element(field: string, index: number): StateReader {
    const value = this.#field(field);
    return new StateReader(this.#device, Array.isArray(value) ? value[index] : value, `${this.#name(field)}[${index}]`);
  }

  /** An integer in `min`-`max` (limits shown in hex when `hex`). */
  integer(field: string, min: number, max: number, hex = false): number {
    const value = this.#field(field);
    const limit = (n: number) => (hex ? `0x${n.toString(16)}` : String(n));
    const range = `${limit(min)}-${limit(max)}`;
    if (typeof value !== "number") this.typeError(field, value, `an integer in ${range}`);
    if (!Number.isInteger(value) || value < min || value > max) {
      const shown = hex && Number.isInteger(value) && value >= 0 ? `0x${value.toString(16)}` : show(value);
      this.#fail(RangeError, `${this.#name(field)} is ${shown}, not an integer in ${range}`);
    }
    return value;
  }

  /** A byte (0-255). */
  byte(field: string): number {
    return this.integer(field, 0, 0xff, true);
  }

  /** A finite number. */
  finite(field: string): number {
    const value = this.#field(field);
    if (typeof value !== "number") this.typeError(field, value, "a finite number");
    if (!Number.isFinite(value)) this.rangeError(field, value, "a finite number");
    return value;
  }

  /** A boolean. */
  boolean(field: string): boolean {
    const value = this.#field(field);
    if (typeof value !== "boolean") this.typeError(field, value, "a boolean");
    return value;
  }

  /** A string. */
  string(field: string): string {
    const value = this.#field(field);
    if (typeof value !== "string") this.typeError(field, value, "a string");
    return value;
  }

  /** An array of `min`-`max` elements (each element is checked by the caller). */
  array(field: string, min: number, max: number): unknown[] {
    const value = this.#field(field);
    if (!Array.isArray(value)) this.typeError(field, value, "an array");
    if (value.length < min || value.length > max) {
      this.#fail(RangeError, `${this.#name(field)} has ${value.length} elements, not ${span(min, max)}`);
    }
    return value;
  }

  /** An array of `min`-`max` bytes. */
  bytes(field: string, min: number, max: number): number[] {
    const values = this.array(field, min, max);
    values.forEach((value, i) => {
      if (typeof value !== "number") this.typeError(`${field}[${i}]`, value, "a byte (0-255)");
      if (!Number.isInteger(value) || value < 0 || value > 0xff) {
        this.rangeError(`${field}[${i}]`, value, "a byte (0-255)");
      }
    });
    return values as number[];
  }

  /** Base64 text of `min`-`max` bytes, decoded. */
  base64(field: string, min: number, max: number): Uint8Array {
    const text = this.string(field);
    if (text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
      this.rangeError(field, text, "base64 text");
    }
    let bytes: Uint8Array;
    try {
      bytes = Uint8Array.fromBase64(text);
    } catch {
      this.rangeError(field, text, "base64 text");
    }
    if (bytes.length < min || bytes.length > max) {
      this.#fail(RangeError, `${this.#name(field)} holds ${bytes.length} bytes, not ${span(min, max)}`);
    }
    return bytes;
  }

  /** Throws a TypeError: `field` holds `value`, which is not `want`. */
  typeError(field: string, value: unknown, want: string): never {
    this.#fail(TypeError, `${this.#name(field)} is ${show(value)}, not ${want}`);
  }

  /** Throws a RangeError: `field` holds `value`, which is not `want`. */
  rangeError(field: string, value: unknown, want: string): never {
    this.#fail(RangeError, `${this.#name(field)} is ${show(value)}, not ${want}`);
  }

  /** Throws a RangeError: `what` (which should name the field) is wrong with the state. */
  refuse(what: string): never {
    this.#fail(RangeError, what);
  }

  #fail(kind: typeof TypeError | typeof RangeError, what: string): never {
    throw new kind(`Cannot restore the ${this.#device} state: ${what}`);
  }

  #field(field: string): unknown {
    return this.#state[field];
  }

  #name(field: string): string {
    return this.#prefix === "" ? field : `${this.#prefix}.${field}`;
  }
}

/** Base64 text of `bytes`, for large byte arrays in a state object. */
export function toBase64(bytes: Uint8Array): string {
  // Uint8Array's own base64 (not node:buffer): the first node: module a process imports costs it ~6 ms and 6 MiB.
  return bytes.toBase64();
}
