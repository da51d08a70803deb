/**
 * Little helpers shared by the firmware-table builders: an append-only
 * little-endian byte writer and the 8-bit checksum both ACPI and the MP
 * specification use.
 *
 * @module
 */

/** The byte that makes `bytes[start, end)` sum to 0 modulo 256 when stored in that range. */
export function checksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum += bytes[i]!;
  return (256 - (sum & 0xff)) & 0xff;
}

/** Appends little-endian fields to a growing buffer. */
export class ByteWriter {
  #bytes = new Uint8Array(256);
  #view = new DataView(this.#bytes.buffer);
  #length = 0;

  /** Bytes written so far. */
  get length(): number {
    return this.#length;
  }

  #reserve(count: number): number {
    const at = this.#length;
    if (at + count > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(this.#bytes.length * 2, at + count));
      grown.set(this.#bytes);
      this.#bytes = grown;
      this.#view = new DataView(grown.buffer);
    }
    this.#length += count;
    return at;
  }

  u8(value: number): this {
    const at = this.#reserve(1);
    this.#view.setUint8(at, value);
    return this;
  }

  u16(value: number): this {
    const at = this.#reserve(2);
    this.#view.setUint16(at, value, true);
    return this;
  }

  u32(value: number): this {
    const at = this.#reserve(4);
    this.#view.setUint32(at, value >>> 0, true);
    return this;
  }

  u64(value: number | bigint): this {
    const at = this.#reserve(8);
    this.#view.setBigUint64(at, BigInt(value), true);
    return this;
  }

  /** ASCII text, padded with `pad` (or cut) to `width` bytes when given. */
  ascii(text: string, width = text.length, pad = " "): this {
    const padded = text.padEnd(width, pad).slice(0, width);
    const at = this.#reserve(width);
    for (let i = 0; i < width; i++) this.#bytes[at + i] = padded.charCodeAt(i) & 0xff;
    return this;
  }

  bytes(data: Uint8Array): this {
    const at = this.#reserve(data.length); // first: it may replace the buffer
    this.#bytes.set(data, at);
    return this;
  }

  zeros(count: number): this {
    this.#reserve(count); // the buffer is zero-filled and never reused
    return this;
  }

  /** Pads with zeros until the length is a multiple of `alignment`. */
  align(alignment: number): this {
    return this.zeros((alignment - (this.#length % alignment)) % alignment);
  }

  /** A copy of the bytes written. */
  finish(): Uint8Array {
    return this.#bytes.slice(0, this.#length);
  }
}
