/**
 * The machine's {@link ExitHandlers} built from its two buses and the
 * user's hooks (`vm.onIo`, `vm.onMmio`): a hook sees every access in its
 * range and may answer reads; a device on the bus answers the rest.
 *
 * @module
 */

import type { ExitHandlers } from "./exits.ts";
import { IoBus, MmioBus } from "../devices/bus.ts";

/** A port access as hooks see it. */
export interface IoAccess {
  port: number;
  size: number;
  direction: "in" | "out";
  /** The value written (out only). */
  data?: number;
}

/** A port hook: return a number to answer a read; the return value is ignored for writes. */
export type IoHook = (access: IoAccess) => number | void;

/** An MMIO access as hooks see it. */
export interface MmioAccess {
  address: bigint;
  size: number;
  direction: "read" | "write";
  /** The value written (write only). */
  data?: bigint;
}

/** An MMIO hook: return a number or bigint to answer a read. */
export type MmioHook = (access: MmioAccess) => bigint | number | void;

const IO_ALL_ONES = [0, 0xff, 0xffff, 0, 0xffffffff];

/**
 * Buses plus hooks, answering exits.
 *
 * @example
 * ```ts
 * import { BusDispatch } from "./bus_dispatch.ts";
 * const dispatch = new BusDispatch();
 * dispatch.io.insert(0x80, 1, "post", { read: () => 0x42, write: () => {} });
 * const seen: number[] = [];
 * dispatch.onIo(0x80, (access) => void seen.push(access.port));
 * dispatch.portRead(0x80, 1); // 0x42, and seen is [0x80]
 * dispatch.portRead(0x81, 1); // undefined: nothing claims port 0x81
 * ```
 */
export class BusDispatch implements ExitHandlers {
  /** The port-I/O bus. */
  readonly io: IoBus = new IoBus();
  /** The MMIO bus. */
  readonly mmio: MmioBus = new MmioBus();
  /** One byte per port: 1 where a hook watches it, so unhooked ports cost one array read. */
  #ioHooked = new Uint8Array(0x10000);
  #ioHooks: { lo: number; hi: number; hook: IoHook }[] = [];
  #mmioHooks: { lo: bigint; hi: bigint; hook: MmioHook }[] = [];

  /**
   * Watches port accesses: `port` or `[lo, hi]` (inclusive). The hook sees
   * every access and may answer reads. Returns a function that removes it.
   */
  onIo(ports: number | [number, number], hook: IoHook): () => void {
    const [lo, hi] = typeof ports === "number" ? [ports, ports] : ports;
    if (!(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && hi <= 0xffff && lo <= hi)) {
      throw new RangeError(`Invalid port range ${JSON.stringify(ports)}: expected ports within 0-0xffff`);
    }
    const entry = { lo, hi, hook };
    this.#ioHooks.push(entry);
    this.#ioHooked.fill(1, lo, hi + 1);
    return () => {
      this.#ioHooks = this.#ioHooks.filter((e) => e !== entry);
      this.#ioHooked.fill(0, lo, hi + 1);
      for (const e of this.#ioHooks) this.#ioHooked.fill(1, e.lo, e.hi + 1);
    };
  }

  /** Watches MMIO accesses in `[lo, hi]` (inclusive); the hook may answer reads. Returns a remover. */
  onMmio(range: [number | bigint, number | bigint], hook: MmioHook): () => void {
    const lo = BigInt(range[0]);
    const hi = BigInt(range[1]);
    if (lo > hi || lo < 0n) throw new RangeError(`Invalid MMIO range 0x${lo.toString(16)}-0x${hi.toString(16)}`);
    const entry = { lo, hi, hook };
    this.#mmioHooks.push(entry);
    return () => void (this.#mmioHooks = this.#mmioHooks.filter((e) => e !== entry));
  }

  portWrite(port: number, size: number, value: number): boolean {
    const hooked = this.#ioHooked[port] === 1;
    if (hooked) {
      for (const { lo, hi, hook } of this.#ioHooks) {
        if (port >= lo && port <= hi) hook({ port, size, direction: "out", data: value });
      }
    }
    const entry = this.io.find(port);
    if (entry !== undefined) entry.device.write(port - entry.base, size, value);
    return hooked || entry !== undefined;
  }

  portRead(port: number, size: number): number | undefined {
    const hooked = this.#ioHooked[port] === 1;
    if (hooked) {
      let answer: number | undefined;
      for (const { lo, hi, hook } of this.#ioHooks) {
        if (port >= lo && port <= hi) {
          const result = hook({ port, size, direction: "in" });
          if (typeof result === "number" && answer === undefined) answer = result;
        }
      }
      if (answer !== undefined) return answer;
    }
    const entry = this.io.find(port);
    if (entry !== undefined) return entry.device.read(port - entry.base, size);
    return hooked ? IO_ALL_ONES[size] ?? 0xffffffff : undefined;
  }

  mmioWrite(address: bigint, size: number, data: () => bigint): boolean {
    const entry = this.mmio.find(address);
    if (entry === undefined && this.#mmioHooks.length === 0) return false;
    let hooked = false;
    for (const { lo, hi, hook } of this.#mmioHooks) {
      if (address >= lo && address <= hi) {
        hooked = true;
        hook({ address, size, direction: "write", data: data() });
      }
    }
    if (entry !== undefined) entry.device.write(address - entry.base, size, data());
    return hooked || entry !== undefined;
  }

  mmioRead(address: bigint, size: number): bigint | undefined {
    let answer: bigint | undefined;
    let hooked = false;
    for (const { lo, hi, hook } of this.#mmioHooks) {
      if (address >= lo && address <= hi) {
        hooked = true;
        const result = hook({ address, size, direction: "read" });
        if (answer === undefined && (typeof result === "number" || typeof result === "bigint")) answer = BigInt(result);
      }
    }
    if (answer !== undefined) return answer;
    const entry = this.mmio.find(address);
    if (entry !== undefined) return entry.device.read(address - entry.base, size);
    // A hook that watches without answering still claims the address: the read sees all-ones.
    return hooked ? -1n : undefined;
  }
}
