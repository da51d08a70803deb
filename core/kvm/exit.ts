/**
 * `struct kvm_run` and the exits it describes. This is the one module that
 * knows kvm_run's byte layout (x86-64, from the kernel's
 * include/uapi/linux/kvm.h): {@link KvmRunArea} wraps a vCPU's mapped
 * kvm_run and decodes its exit into a {@link VcpuExit}, a discriminated
 * union in the style of kvm-ioctls' `VcpuExit`. Above core/kvm nobody reads
 * a kvm_run offset.
 *
 * An exit borrows kvm_run, as kvm-ioctls' `VcpuExit<'a>` does: it is valid
 * until the vCPU runs again. The decoder reuses one object per exit kind, so
 * the exit path allocates nothing for port I/O (measured: the exit bench's
 * ratios did not move, see the README).
 *
 * @module
 */

import { KVM_EXIT } from "./ioctls.ts";

/** kvm_run offsets (x86-64). */
const RUN = {
  requestInterruptWindow: 0,
  immediateExit: 1,
  exitReason: 8,
  /** The exit's union starts here. */
  union: 32,
  /** kvm_sync_regs: `kvm_valid_regs` and `kvm_dirty_regs`, then `s.regs` and `s.sregs`. */
  validRegs: 288,
  syncedRegs: 304,
  syncedSregs: 448,
} as const;

/** kvm_run.io: direction u8, size u8, port u16, count u32, data_offset u64. */
const IO = { direction: 32, size: 33, port: 34, count: 36, dataOffset: 40 } as const;
/** kvm_run.mmio: phys_addr u64, data[8], len u32, is_write u8. */
const MMIO = { address: 32, data: 40, length: 48, isWrite: 52 } as const;
/** kvm_run.debug.arch (x86): exception u32, pad u32, pc u64, dr6 u64, dr7 u64. */
const DEBUG = { exception: 32, pc: 40, dr6: 48, dr7: 56 } as const;
/** kvm_run.internal: suberror u32, ndata u32, data[16] u64. */
const INTERNAL = { suberror: 32, ndata: 36, data: 40 } as const;
/** kvm_run.fail_entry: hardware_entry_failure_reason u64, cpu u32. */
const FAIL_ENTRY = { reason: 32, cpu: 40 } as const;
/** kvm_run.system_event: type u32, ndata u32, data[16] u64. */
const SYSTEM_EVENT = { type: 32, ndata: 36, data: 40 } as const;

/** KVM_INTERNAL_ERROR_* suberrors. */
export const KVM_INTERNAL_ERROR = {
  EMULATION: 1,
  SIMUL_EX: 2,
  DELIVERY_EV: 3,
  UNEXPECTED_EXIT_REASON: 4,
} as const;

/** KVM_SYSTEM_EVENT_* types. */
export const KVM_SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;

/** An access size of port I/O. */
export type IoSize = 1 | 2 | 4;

/** Corresponds to KVM_EXIT_IO with KVM_EXIT_IO_OUT: the guest wrote `count` values of `size` bytes to `port`. */
export interface IoOutExit {
  readonly kind: "io-out";
  readonly port: number;
  readonly size: IoSize;
  /** More than 1 for string I/O (`rep outsb`). */
  readonly count: number;
  /** Value `index` (default 0) of the write. */
  value(index?: number): number;
}

/** Corresponds to KVM_EXIT_IO with KVM_EXIT_IO_IN: the guest reads `count` values; answer each with {@link reply}. */
export interface IoInExit {
  readonly kind: "io-in";
  readonly port: number;
  readonly size: IoSize;
  readonly count: number;
  /** Answers read `index` (default 0); the guest sees it when the vCPU next runs. */
  reply(value: number, index?: number): void;
}

/** Corresponds to KVM_EXIT_MMIO for a read: answer with {@link reply} before the vCPU runs again. */
export interface MmioReadExit {
  readonly kind: "mmio-read";
  readonly address: bigint;
  /** 1 to 8 bytes. */
  readonly size: number;
  /** Answers the read; the guest takes the low `size` bytes. */
  reply(value: bigint): void;
}

/** Corresponds to KVM_EXIT_MMIO for a write. */
export interface MmioWriteExit {
  readonly kind: "mmio-write";
  readonly address: bigint;
  readonly size: number;
  /** The value written (the low `size` bytes of kvm_run's data). */
  readonly data: bigint;
  /** The written bytes themselves. */
  readonly bytes: Uint8Array;
}

/**
 * Corresponds to KVM_EXIT_DEBUG: a single step (#DB with DR6.BS), a hardware
 * breakpoint (#DB with DR6.B0-B3) or a software breakpoint (#BP, exception 3).
 */
export interface DebugExit {
  readonly kind: "debug";
  readonly exception: number;
  /** The linear address of the next instruction. */
  readonly pc: bigint;
  readonly dr6: bigint;
  readonly dr7: bigint;
}

/** Corresponds to KVM_EXIT_HLT (only without an in-kernel irqchip). */
export interface HltExit {
  readonly kind: "hlt";
}

/** Corresponds to KVM_EXIT_SHUTDOWN: a triple fault. */
export interface ShutdownExit {
  readonly kind: "shutdown";
}

/** Corresponds to KVM_EXIT_INTR, or a KVM_RUN that returned EINTR/EAGAIN: a signal (hvsh's kick) interrupted the run. */
export interface InterruptedExit {
  readonly kind: "interrupted";
}

/** Corresponds to KVM_EXIT_INTERNAL_ERROR (suberror 1: an instruction KVM cannot emulate). */
export interface InternalErrorExit {
  readonly kind: "internal-error";
  readonly suberror: number;
  /** KVM's extra words (`ndata` of them). */
  readonly data: readonly bigint[];
}

/** Corresponds to KVM_EXIT_FAIL_ENTRY: VM entry failed (invalid guest state). */
export interface FailEntryExit {
  readonly kind: "fail-entry";
  readonly hardwareReason: bigint;
}

/** Corresponds to KVM_EXIT_SYSTEM_EVENT (shutdown, reset or crash requested through PSCI/KVM). */
export interface SystemEventExit {
  readonly kind: "system-event";
  /** KVM_SYSTEM_EVENT_*: 1 shutdown, 2 reset, 3 crash. */
  readonly type: number;
}

/** An exit reason hvsh does not decode. */
export interface UnknownExit {
  readonly kind: "unknown";
  readonly reason: number;
}

/** A decoded KVM exit. Valid until the vCPU runs again. */
export type VcpuExit =
  | IoOutExit
  | IoInExit
  | MmioReadExit
  | MmioWriteExit
  | DebugExit
  | HltExit
  | ShutdownExit
  | InterruptedExit
  | InternalErrorExit
  | FailEntryExit
  | SystemEventExit
  | UnknownExit;

/** The kind names of {@link VcpuExit}. */
export type VcpuExitKind = VcpuExit["kind"];

class IoOut implements IoOutExit {
  readonly kind = "io-out";
  port = 0;
  size: IoSize = 1;
  count = 0;
  offset = 0;
  constructor(readonly run: KvmRunArea) {}
  value(index = 0): number {
    return this.run.readData(this.offset + index * this.size, this.size);
  }
}

class IoIn implements IoInExit {
  readonly kind = "io-in";
  port = 0;
  size: IoSize = 1;
  count = 0;
  offset = 0;
  constructor(readonly run: KvmRunArea) {}
  reply(value: number, index = 0): void {
    this.run.writeData(this.offset + index * this.size, this.size, value);
  }
}

class MmioRead implements MmioReadExit {
  readonly kind = "mmio-read";
  address = 0n;
  size = 0;
  constructor(readonly run: KvmRunArea) {}
  reply(value: bigint): void {
    this.run.view.setBigUint64(MMIO.data, BigInt.asUintN(64, value), true);
  }
}

/** Value masks by access size, so the MMIO path does no BigInt shifting per exit. */
export const MMIO_MASKS: readonly bigint[] = [
  0n,
  0xffn,
  0xffffn,
  0xff_ffffn,
  0xffff_ffffn,
  0xff_ffff_ffffn,
  0xffff_ffff_ffffn,
  0xff_ffff_ffff_ffffn,
  0xffff_ffff_ffff_ffffn,
];

class MmioWrite implements MmioWriteExit {
  readonly kind = "mmio-write";
  address = 0n;
  size = 0;
  constructor(readonly run: KvmRunArea) {}
  get data(): bigint {
    return this.run.view.getBigUint64(MMIO.data, true) & (MMIO_MASKS[this.size] ?? MMIO_MASKS[8]!);
  }
  get bytes(): Uint8Array {
    return this.run.bytes.subarray(MMIO.data, MMIO.data + Math.min(this.size, 8));
  }
}

const HLT: HltExit = Object.freeze({ kind: "hlt" });
const SHUTDOWN: ShutdownExit = Object.freeze({ kind: "shutdown" });
/** The exit of an interrupted KVM_RUN (shared: it carries no data). */
export const INTERRUPTED: InterruptedExit = Object.freeze({ kind: "interrupted" });

/**
 * A vCPU's mapped `struct kvm_run`: decodes exits and sets the few fields
 * user space writes (immediate_exit, sync-regs flags, replies to reads).
 */
export class KvmRunArea {
  /** kvm_run as bytes. */
  readonly bytes: Uint8Array;
  /** kvm_run as a DataView. */
  readonly view: DataView;
  readonly #words: Uint32Array;
  readonly #ioOut = new IoOut(this);
  readonly #ioIn = new IoIn(this);
  readonly #mmioRead = new MmioRead(this);
  readonly #mmioWrite = new MmioWrite(this);

  /** Wraps kvm_run's bytes (a vCPU's mapping, or any buffer of the same layout in tests). */
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  }

  /** kvm_run.exit_reason. */
  get exitReason(): number {
    return this.#words[RUN.exitReason >>> 2]!;
  }

  /** kvm_run.immediate_exit: while set, KVM_RUN returns at once (completing a pending I/O exit first). */
  get immediateExit(): boolean {
    return this.bytes[RUN.immediateExit] !== 0;
  }
  set immediateExit(on: boolean) {
    this.bytes[RUN.immediateExit] = on ? 1 : 0;
  }

  /** kvm_run.kvm_valid_regs: which register sets KVM copies into kvm_run on every exit. */
  set validRegs(mask: bigint) {
    this.view.setBigUint64(RUN.validRegs, mask, true);
  }

  /** kvm_run.s.regs (struct kvm_regs), valid after an exit with KVM_SYNC_X86_REGS set. */
  syncedRegsBytes(size: number): Uint8Array {
    return this.bytes.subarray(RUN.syncedRegs, RUN.syncedRegs + size);
  }

  /** kvm_run.s.sregs (struct kvm_sregs), valid after an exit with KVM_SYNC_X86_SREGS set. */
  syncedSregsBytes(size: number): Uint8Array {
    return this.bytes.subarray(RUN.syncedSregs, RUN.syncedSregs + size);
  }

  /** Decodes the exit KVM left in kvm_run. */
  decode(): VcpuExit {
    const view = this.view;
    const bytes = this.bytes;
    switch (this.exitReason) {
      case KVM_EXIT.IO: {
        const exit = bytes[IO.direction] === 1 ? this.#ioOut : this.#ioIn;
        exit.size = bytes[IO.size] as IoSize;
        exit.port = bytes[IO.port]! | (bytes[IO.port + 1]! << 8);
        exit.count = this.#words[IO.count >>> 2]!;
        exit.offset = this.#words[IO.dataOffset >>> 2]!;
        return exit;
      }
      case KVM_EXIT.MMIO: {
        const exit = bytes[MMIO.isWrite] !== 0 ? this.#mmioWrite : this.#mmioRead;
        exit.address = view.getBigUint64(MMIO.address, true);
        exit.size = this.#words[MMIO.length >>> 2]!;
        return exit;
      }
      case KVM_EXIT.INTR:
        return INTERRUPTED;
      case KVM_EXIT.HLT:
        return HLT;
      case KVM_EXIT.SHUTDOWN:
        return SHUTDOWN;
      case KVM_EXIT.DEBUG:
        return {
          kind: "debug",
          exception: view.getUint32(DEBUG.exception, true),
          pc: view.getBigUint64(DEBUG.pc, true),
          dr6: view.getBigUint64(DEBUG.dr6, true),
          dr7: view.getBigUint64(DEBUG.dr7, true),
        };
      case KVM_EXIT.INTERNAL_ERROR: {
        const count = Math.min(view.getUint32(INTERNAL.ndata, true), 16);
        const data: bigint[] = [];
        for (let i = 0; i < count; i++) data.push(view.getBigUint64(INTERNAL.data + i * 8, true));
        return { kind: "internal-error", suberror: view.getUint32(INTERNAL.suberror, true), data };
      }
      case KVM_EXIT.FAIL_ENTRY:
        return { kind: "fail-entry", hardwareReason: view.getBigUint64(FAIL_ENTRY.reason, true) };
      case KVM_EXIT.SYSTEM_EVENT:
        return { kind: "system-event", type: view.getUint32(SYSTEM_EVENT.type, true) };
      default:
        return { kind: "unknown", reason: this.exitReason };
    }
  }

  /** @internal A value of port I/O data at `offset` in kvm_run. */
  readData(offset: number, size: number): number {
    return size === 1
      ? this.bytes[offset]!
      : size === 2
      ? this.view.getUint16(offset, true)
      : this.view.getUint32(offset, true);
  }

  /** @internal Writes an answer to port input at `offset` in kvm_run. */
  writeData(offset: number, size: number, value: number): void {
    if (size === 1) this.bytes[offset] = value;
    else if (size === 2) this.view.setUint16(offset, value, true);
    else this.view.setUint32(offset, value >>> 0, true);
  }
}

/** Byte offsets of kvm_run, for tests that build a kvm_run by hand (made-up exits) and for the layout test. */
export const KVM_RUN_LAYOUT = { RUN, IO, MMIO, DEBUG, INTERNAL, FAIL_ENTRY, SYSTEM_EVENT } as const;
