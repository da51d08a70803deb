/**
 * Exit handling as plain functions, in the style of Firecracker's
 * `run_arch_emulation(exit) -> Result<VcpuEmulation>`: given a decoded exit
 * ({@link VcpuExit}) and the machine's handlers for port and MMIO accesses,
 * each returns `"handled"` (the guest goes on) or the stop the exit causes.
 * They touch no KVM state beyond answering the exit, so unit tests call them
 * with made-up exits (core/exits_test.ts).
 *
 * @module
 */

import type { IoInExit, IoOutExit, MmioReadExit, MmioWriteExit, VcpuExit } from "./kvm/exit.ts";
import { KVM_INTERNAL_ERROR, KVM_SYSTEM_EVENT, MMIO_MASKS } from "./kvm/exit.ts";
import type { PendingStop } from "./stop.ts";

/**
 * How a machine answers the accesses that exit to user space (Cloud
 * Hypervisor's `VmOps`): the machine layer knows only this interface, the
 * buses and hooks behind it live above (core/bus_dispatch.ts).
 */
export interface ExitHandlers {
  /** Answers a port read, or undefined when nothing claims the port. */
  portRead(port: number, size: number): number | undefined;
  /** Delivers a port write; false when nothing claims the port. */
  portWrite(port: number, size: number, value: number): boolean;
  /** Answers an MMIO read, or undefined when nothing claims the address. */
  mmioRead(address: bigint, size: number): bigint | undefined;
  /**
   * Delivers an MMIO write; false when nothing claims the address. `data` is
   * called only by a claimant, so dropped writes build no BigInt.
   */
  mmioWrite(address: bigint, size: number, data: () => bigint): boolean;
}

/** What an unclaimed port or MMIO access does: reads see all-ones either way. */
export type UnhandledPolicy = "ignore" | "stop";

/** What an exit leads to: the guest goes on, or the run stops. */
export type Emulation = "handled" | PendingStop;

const IO_ALL_ONES = [0, 0xff, 0xffff, 0, 0xffffffff];

/** Completes a port-I/O exit (every value of string I/O) through `handlers`. */
export function emulatePortIo(
  exit: IoInExit | IoOutExit,
  handlers: ExitHandlers,
  unhandled: UnhandledPolicy,
): Emulation {
  const { port, size, count } = exit;
  let stop: PendingStop | undefined;
  for (let i = 0; i < count; i++) {
    if (exit.kind === "io-out") {
      const value = exit.value(i);
      if (!handlers.portWrite(port, size, value) && unhandled === "stop") {
        stop ??= { reason: "unhandled-io", port, size, direction: "out", data: value };
      }
    } else {
      let value = handlers.portRead(port, size);
      if (value === undefined) {
        if (unhandled === "stop") stop ??= { reason: "unhandled-io", port, size, direction: "in" };
        value = IO_ALL_ONES[size] ?? 0xffffffff;
      }
      exit.reply(value, i);
    }
  }
  return stop ?? "handled";
}

/** Completes an MMIO exit through `handlers`; an unclaimed read sees all-ones. */
export function emulateMmio(
  exit: MmioReadExit | MmioWriteExit,
  handlers: ExitHandlers,
  unhandled: UnhandledPolicy,
): Emulation {
  const { address, size } = exit;
  const mask = MMIO_MASKS[size] ?? MMIO_MASKS[8]!;
  if (exit.kind === "mmio-write") {
    if (handlers.mmioWrite(address, size, () => exit.data) || unhandled !== "stop") return "handled";
    return { reason: "unhandled-mmio", address, size, direction: "write", data: exit.data };
  }
  const value = handlers.mmioRead(address, size);
  exit.reply(value === undefined ? mask : value & mask);
  if (value !== undefined || unhandled !== "stop") return "handled";
  return { reason: "unhandled-mmio", address, size, direction: "read" };
}

const INTERNAL_SUBERRORS: Record<number, string> = {
  [KVM_INTERNAL_ERROR.EMULATION]: "emulation failure",
  [KVM_INTERNAL_ERROR.SIMUL_EX]: "simultaneous exceptions",
  [KVM_INTERNAL_ERROR.DELIVERY_EV]: "failed event delivery",
  [KVM_INTERNAL_ERROR.UNEXPECTED_EXIT_REASON]: "unexpected exit reason",
};

const SYSTEM_EVENTS: Record<number, string> = {
  [KVM_SYSTEM_EVENT.SHUTDOWN]: "shutdown",
  [KVM_SYSTEM_EVENT.RESET]: "reset",
  [KVM_SYSTEM_EVENT.CRASH]: "crash",
};

/**
 * The stop an exit that user space does not emulate causes (halt, triple
 * fault, internal error, failed entry, system event, an unknown reason).
 * `instructionBytes` supplies the bytes at rip for an internal error's
 * diagnosis.
 */
export function stopForExit(exit: VcpuExit, instructionBytes?: () => Uint8Array | undefined): PendingStop {
  switch (exit.kind) {
    case "hlt":
      // Without an in-kernel irqchip nothing can interrupt the guest, so HLT is final.
      return { reason: "halt" };
    case "shutdown":
      return { reason: "shutdown", cause: "triple-fault", detail: "triple fault (KVM_EXIT_SHUTDOWN)" };
    case "system-event": {
      const name = SYSTEM_EVENTS[exit.type] ?? `type ${exit.type}`;
      return {
        reason: "shutdown",
        cause: exit.type === KVM_SYSTEM_EVENT.RESET ? "reset" : "system-event",
        detail: `system event: ${name}`,
      };
    }
    case "internal-error": {
      const name = INTERNAL_SUBERRORS[exit.suberror] ?? "unknown";
      const stop: PendingStop = {
        reason: "internal-error",
        suberror: exit.suberror,
        detail: `KVM internal error: ${name} (suberror ${exit.suberror})`,
      };
      const bytes = instructionBytes?.();
      return bytes === undefined ? stop : { ...stop, bytes };
    }
    case "fail-entry":
      return {
        reason: "internal-error",
        suberror: Number(exit.hardwareReason & 0xffffn),
        detail: `VM entry failed: hardware reason 0x${exit.hardwareReason.toString(16)} (invalid guest state)`,
      };
    case "unknown":
      return { reason: "internal-error", suberror: 0, detail: `unexpected KVM exit reason ${exit.reason}` };
    case "debug":
      // A debug exit nobody asked for (no debugger attached): the guest cannot go on safely.
      return {
        reason: "internal-error",
        suberror: 0,
        detail: `unexpected debug exit (exception ${exit.exception}) with no debugger attached`,
      };
    default:
      return {
        reason: "internal-error",
        suberror: 0,
        detail: `the ${exit.kind} exit cannot stop a run`,
      };
  }
}

/**
 * Emulates any exit: port I/O and MMIO go to `handlers`; an interrupted run
 * is `"handled"` (the caller decides whether to yield); every other exit is
 * a stop.
 */
export function emulateExit(
  exit: VcpuExit,
  handlers: ExitHandlers,
  unhandled: UnhandledPolicy,
  instructionBytes?: () => Uint8Array | undefined,
): Emulation {
  switch (exit.kind) {
    case "io-out":
    case "io-in":
      return emulatePortIo(exit, handlers, unhandled);
    case "mmio-read":
    case "mmio-write":
      return emulateMmio(exit, handlers, unhandled);
    case "interrupted":
      return "handled";
    default:
      return stopForExit(exit, instructionBytes);
  }
}
