// Test-only: a few x86 instruction encodings, enough for generated guests
// (fuzz cases and regression tests that need code at run-time-chosen addresses).
// Each method appends one instruction; the encodings are valid in 32-bit
// protected mode and 64-bit long mode unless the name says otherwise.

/** Builds guest code one instruction at a time. */
export class Code {
  readonly #bytes: number[] = [];
  readonly bits: 32 | 64;

  constructor(bits: 32 | 64) {
    this.bits = bits;
  }

  /** Bytes so far. */
  get length(): number {
    return this.#bytes.length;
  }

  /** The code as bytes. */
  bytes(): Uint8Array {
    return new Uint8Array(this.#bytes);
  }

  #u8(...values: number[]): this {
    for (const value of values) this.#bytes.push(value & 0xff);
    return this;
  }

  #u32(value: number): this {
    return this.#u8(value, value >>> 8, value >>> 16, value >>> 24);
  }

  #u64(value: bigint): this {
    const low = Number(value & 0xffff_ffffn);
    return this.#u32(low).#u32(Number((value >> 32n) & 0xffff_ffffn));
  }

  /** `mov edx, value` (the port for the `dx` forms). */
  movEdx(value: number): this {
    return this.#u8(0xba).#u32(value);
  }

  /** `mov eax, value`. */
  movEax(value: number): this {
    return this.#u8(0xb8).#u32(value);
  }

  /** `mov ecx, value`. */
  movEcx(value: number): this {
    return this.#u8(0xb9).#u32(value);
  }

  /** `out dx, al|ax|eax`. */
  outDx(size: 1 | 2 | 4): this {
    return size === 1 ? this.#u8(0xee) : size === 2 ? this.#u8(0x66, 0xef) : this.#u8(0xef);
  }

  /** `in al|ax|eax, dx`. */
  inDx(size: 1 | 2 | 4): this {
    return size === 1 ? this.#u8(0xec) : size === 2 ? this.#u8(0x66, 0xed) : this.#u8(0xed);
  }

  /** `out port, al` (port below 0x100). */
  outImm(port: number): this {
    return this.#u8(0xe6, port);
  }

  /** `mov eax, [address]` with a 32-bit absolute address. */
  loadEax(address: number): this {
    return this.bits === 64 ? this.#u8(0x8b, 0x04, 0x25).#u32(address) : this.#u8(0x8b, 0x05).#u32(address);
  }

  /** `cmp eax, value`. */
  cmpEax(value: number): this {
    return this.#u8(0x3d).#u32(value);
  }

  /** `jne` forward over `skip` bytes. */
  jneForward(skip: number): this {
    return this.#u8(0x75, skip);
  }

  /** A `jne` whose target is set later with {@linkcode Code.patchJump}; returns its position. */
  jnePlaceholder(): number {
    this.#u8(0x75, 0);
    return this.#bytes.length - 2;
  }

  /** Points the short jump at `at` to `target` (an offset in this code, at most 127 bytes ahead). */
  patchJump(at: number, target: number): this {
    const distance = target - (at + 2);
    if (distance < -128 || distance > 127) throw new RangeError(`Jump at ${at} cannot reach ${target}`);
    this.#bytes[at + 1] = distance & 0xff;
    return this;
  }

  /** `mov ebx, value` (32-bit) or `mov rbx, value` (64-bit): an address for the `[rbx]` forms. */
  movRbx(value: bigint): this {
    return this.bits === 64 ? this.#u8(0x48, 0xbb).#u64(value) : this.#u8(0xbb).#u32(Number(value & 0xffff_ffffn));
  }

  /** `mov [rbx], al|ax|eax`. */
  storeAtRbx(size: 1 | 2 | 4): this {
    return size === 1 ? this.#u8(0x88, 0x03) : size === 2 ? this.#u8(0x66, 0x89, 0x03) : this.#u8(0x89, 0x03);
  }

  /** `mov al|ax|eax, [rbx]`. */
  loadFromRbx(size: 1 | 2 | 4): this {
    return size === 1 ? this.#u8(0x8a, 0x03) : size === 2 ? this.#u8(0x66, 0x8b, 0x03) : this.#u8(0x8b, 0x03);
  }

  /**
   * Long mode only: maps the 2 MiB page around `address` (below 512 GiB) through the spare page
   * directory `directory` hung in the PDPT at `pdpt` (the boot page tables' second page), then reloads
   * CR3. The first GiB is left alone (the boot tables map it). 2 MiB pages, not 1 GiB ones: hvsh's CPUID
   * does not offer pdpe1gb. Clobbers rax and rbx.
   */
  mapPage(pdpt: number, directory: number, address: bigint): this {
    const index = Number(address >> 30n);
    if (this.bits !== 64 || index >= 512) throw new RangeError(`Cannot map 0x${address.toString(16)}`);
    if (index === 0) return this;
    const slot = Number((address >> 21n) & 511n);
    this.movRbx(BigInt(directory + slot * 8)).#u8(0x48, 0xb8).#u64((address & ~((1n << 21n) - 1n)) | 0x83n);
    this.#u8(0x48, 0x89, 0x03);
    this.movRbx(BigInt(pdpt + index * 8)).#u8(0x48, 0xb8).#u64(BigInt(directory) | 0x3n);
    return this.#u8(0x48, 0x89, 0x03, 0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8);
  }

  /** `jmp rbx` (`jmp ebx` in 32-bit code). */
  jmpRbx(): this {
    return this.#u8(0xff, 0xe3);
  }

  /** `out dx, al` `ecx` times: `l: out dx, al; dec ecx; jnz l` (set ecx and dx first). */
  outDxLoop(): this {
    return this.#u8(0xee, 0xff, 0xc9, 0x75, 0xfb);
  }

  /** `jmp $`: runs forever without exits (only a kick or a pause stops it). */
  spin(): this {
    return this.#u8(0xeb, 0xfe);
  }

  /** `cli; hlt` forever: `l: hlt; jmp l`. */
  haltForever(): this {
    return this.#u8(0xfa, 0xf4, 0xeb, 0xfd);
  }

  /** Writes `value` (a byte) to the debug-exit port 0xf4: the run stops with reason "exit" and code `value`. */
  exit(value: number): this {
    return this.movEax(value).outImm(0xf4);
  }
}
