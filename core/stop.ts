/**
 * Stop events: why `vm.run()` returned. Every event names the vCPU, its rip
 * and mode, so any front end can show context without asking again.
 *
 * @module
 */

import type { CpuMode } from "./vcpu.ts";

/** Fields every stop event carries. */
export interface StopContext {
  /** vCPU index that stopped. */
  cpu: number;
  /** Instruction pointer after the stop (for an I/O exit: past the instruction). */
  rip: bigint;
  /** CPU mode at the stop. */
  mode: CpuMode;
  /** `symbol` or `symbol+offset` of rip, when the VM has symbols for it. */
  symbol?: string;
}

/** The guest wrote V to the debug-exit port. */
export interface ExitStop extends StopContext {
  reason: "exit";
  /** The value V the guest wrote. */
  value: number;
  /** The process exit status QEMU's isa-debug-exit gives: (V << 1) | 1. */
  code: number;
}

/** The guest executed HLT and nothing can wake it. */
export interface HaltStop extends StopContext {
  reason: "halt";
}

/** Triple fault or another shutdown (KVM_EXIT_SHUTDOWN). */
export interface ShutdownStop extends StopContext {
  reason: "shutdown";
  /** What happened, e.g. "triple fault". */
  detail: string;
  /**
   * `"triple-fault"` (a crash), `"reset"` (the guest asked: i8042, port 0xcf9),
   * `"power-off"` (ACPI S5, or S3 with nothing to wake it) or `"system-event"`.
   */
  cause: "triple-fault" | "reset" | "power-off" | "system-event";
}

/** KVM could not run the guest (emulation failure, failed VM entry, unknown exit). */
export interface InternalErrorStop extends StopContext {
  reason: "internal-error";
  /** KVM's suberror (1 = emulation failure) or the hardware entry failure reason. */
  suberror: number;
  /** One-line explanation. */
  detail: string;
  /** Up to 15 instruction bytes at rip, when they could be read. */
  bytes?: Uint8Array;
}

/** `vm.pause()` (or a front end) stopped the guest. */
export interface PausedStop extends StopContext {
  reason: "paused";
  /** Who paused it, when it was said (`"gdb"`, `"repl"`): the other front ends show it. */
  by?: string;
}

/** `run({ timeout })` ran out. */
export interface TimeoutStop extends StopContext {
  reason: "timeout";
}

/**
 * Reverse execution reached the start of the recorded history (gdb's "No
 * more reverse-execution history"): the guest is where recording began.
 */
export interface HistoryStop extends StopContext {
  reason: "history";
  edge: "begin";
}

/** A port access nobody claimed, when the VM stops on those. */
export interface UnhandledIoStop extends StopContext {
  reason: "unhandled-io";
  port: number;
  size: number;
  direction: "in" | "out";
  /** The value written (out only). */
  data?: number;
}

/** An MMIO access nobody claimed, when the VM stops on those. */
export interface UnhandledMmioStop extends StopContext {
  reason: "unhandled-mmio";
  address: bigint;
  size: number;
  direction: "read" | "write";
  /** The value written (write only). */
  data?: bigint;
}

/** A stop raised by the debugger (breakpoint, watchpoint, step). */
export interface DebugStop extends StopContext {
  reason: "breakpoint" | "watchpoint" | "step";
  /** The address the stop concerns (the breakpoint's, rip after a step, the watched data address). */
  address: bigint;
  /** Breakpoint or watchpoint id. */
  id?: number;
  /** Watchpoints: the access. */
  access?: "read" | "write";
  /** Watchpoints: the watched address that was accessed. */
  dataAddress?: bigint;
  /** Watchpoints: size of the access. */
  size?: number;
  /** Watchpoints: value before the access. */
  oldValue?: bigint;
  /** Watchpoints: value after the access. */
  newValue?: bigint;
  /** Watchpoints: the address of the instruction that made the access. */
  pc?: bigint;
  /** Watchpoints: why that instruction is not known, when it is not (no guess is made). */
  pcUnknown?: string;
  /** Breakpoints: software or hardware. */
  kind?: "software" | "hardware";
}

/** Why `vm.run()` returned. */
export type StopEvent =
  | ExitStop
  | HaltStop
  | ShutdownStop
  | InternalErrorStop
  | PausedStop
  | TimeoutStop
  | HistoryStop
  | UnhandledIoStop
  | UnhandledMmioStop
  | DebugStop;

/** The stop reasons. */
export type StopReason = StopEvent["reason"];

type Pending<T> = T extends StopEvent ? Omit<T, keyof StopContext> : never;
/** A stop event before the vCPU context (rip, mode, symbol) is filled in. */
export type PendingStop = Pending<StopEvent>;

/** A one-line description of a stop, as the CLI and REPL print it. */
export function describeStop(stop: StopEvent): string {
  const at = stop.symbol === undefined ? "" : ` <${stop.symbol}>`;
  const where = `rip 0x${stop.rip.toString(16)}${at} (${stop.mode} mode, vCPU ${stop.cpu})`;
  switch (stop.reason) {
    case "exit":
      return `guest exited with value ${stop.value} (status ${stop.code}) at ${where}`;
    case "halt":
      return `guest halted at ${where}`;
    case "shutdown":
      return stop.cause === "reset"
        ? `guest asked for a reset: ${stop.detail} at ${where}`
        : stop.cause === "power-off"
        ? `guest powered off: ${stop.detail} at ${where}`
        : `guest crashed: ${stop.detail} at ${where}`;
    case "internal-error": {
      const bytes = stop.bytes === undefined
        ? ""
        : `; bytes at rip: ${[...stop.bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ")}`;
      return `guest crashed: ${stop.detail} at ${where}${bytes}`;
    }
    case "paused":
      return `paused${stop.by === undefined ? "" : ` by ${stop.by}`} at ${where}`;
    case "timeout":
      return `timed out at ${where}`;
    case "history":
      return `reached the start of the recorded history at ${where}`;
    case "unhandled-io":
      return `unhandled port ${stop.direction} 0x${stop.port.toString(16)} (${stop.size} bytes${
        stop.data === undefined ? "" : `, data 0x${stop.data.toString(16)}`
      }) at ${where}`;
    case "unhandled-mmio":
      return `unhandled MMIO ${stop.direction} at 0x${stop.address.toString(16)} (${stop.size} bytes${
        stop.data === undefined ? "" : `, data 0x${stop.data.toString(16)}`
      }) at ${where}`;
    default: {
      if (stop.reason === "watchpoint") {
        const pc = stop.pc !== undefined
          ? ` by the instruction at 0x${stop.pc.toString(16)}`
          : stop.pcUnknown !== undefined
          ? ` (instruction unknown: ${stop.pcUnknown})`
          : "";
        return `watchpoint ${stop.id ?? ""}: ${stop.access} of ${stop.size} bytes at 0x${stop.address.toString(16)}: ` +
          `0x${(stop.oldValue ?? 0n).toString(16)} -> 0x${(stop.newValue ?? 0n).toString(16)}${pc}, ${where}`;
      }
      const id = stop.id === undefined ? "" : ` ${stop.id}`;
      return `${stop.reason}${id} at ${where}`;
    }
  }
}
