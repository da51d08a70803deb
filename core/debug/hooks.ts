/**
 * Frida-style function hooks that never stop the guest:
 * `vm.debug.hook("bump", { onEnter(ctx) {...}, onLeave(ctx) {...} })`.
 *
 * Built only on the debugger's public breakpoints: the hook is a breakpoint
 * at the function's entry whose condition runs `onEnter` and answers
 * "don't stop", so the debugger steps over the instruction and the guest
 * runs on. With `onLeave`, the entry also reads the return address the
 * `call` pushed and puts a return breakpoint there (one per return address,
 * shared by nested and recursive calls); it runs `onLeave` when the stack
 * pointer shows that the hooked call's frame is gone, so a recursive call
 * returning to the same address is not taken for the outer one.
 *
 * Costs: each hit is a VM exit, a breakpoint step-over and the callback
 * (tens of µs here); the guest's own timing changes accordingly. The entry
 * breakpoint (and the return breakpoints) appear in `.info breakpoints`
 * with the condition text `hook onEnter <name>` / `hook onLeave <name>`.
 * A function left without returning (longjmp, a task switch) leaves its
 * return breakpoint armed until the hook is detached.
 *
 * @example
 * ```ts ignore
 * const calls: bigint[] = [];
 * const hook = vm.debug.hook("bump", {
 *   onEnter(ctx) { calls.push(ctx.arg(0)); },      // first argument (rdi)
 *   onLeave(ctx) { ctx.data.result = ctx.returnValue; }, // rax
 * });
 * await vm.run();          // the guest runs to its end; nothing stopped it
 * hook.calls;              // how many times bump was entered
 * hook.detach();
 * ```
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import type { Vcpu } from "../vcpu.ts";
import type { Registers } from "../kvm/structs.ts";
import type { Breakpoint, BreakpointOptions } from "./types.ts";

/** What hooks need of the debugger (the Debugger itself, named structurally so hooks.ts does not import it back). */
export interface HookDebugger<M extends Machine = Machine> {
  resolve(location: bigint | number | string): bigint;
  symbolize(address: bigint): string | undefined;
  readVirtual(address: bigint | number | string, length: number, cpu?: Vcpu): Uint8Array;
  break(location: bigint | number | string, options?: BreakpointOptions<M>): Breakpoint<M>;
  delete(id: number): void;
}

/** What a hook callback sees. */
export interface HookContext {
  /** The VM (a `Vm` when the hook came from `vm.debug.hook`). */
  readonly vm: Machine;
  readonly cpu: Vcpu;
  /** The vCPU's registers; assigning one (`ctx.regs.rax = 0n` in onLeave) changes it in the guest. */
  readonly regs: Registers;
  /** The hooked function's address. */
  readonly address: bigint;
  /** Where the call returns to. */
  readonly returnAddress: bigint;
  /** The stack pointer at the entry (pointing at the return address). */
  readonly entryStackPointer: bigint;
  /**
   * Argument `index` by the calling convention of the vCPU's mode: System V
   * in long mode (rdi, rsi, rdx, rcx, r8, r9, then the stack), cdecl
   * (the stack) in 32-bit code. Meaningful in onEnter.
   */
  arg(index: number): bigint;
  /** The return value (rax) in onLeave; undefined in onEnter. */
  readonly returnValue: bigint | undefined;
  /** An object of this call, passed from onEnter to its onLeave. */
  readonly data: Record<string, unknown>;
}

/** Callbacks of {@link hookFunction}; both optional. */
export interface HookCallbacks {
  onEnter?(context: HookContext): void;
  onLeave?(context: HookContext): void;
}

/** An installed hook. */
export interface Hook {
  readonly address: bigint;
  /** `symbol+offset` of the address. */
  readonly symbol: string | undefined;
  /** Calls entered so far. */
  readonly calls: number;
  /** The entry breakpoint's id (listed by `.info breakpoints`). */
  readonly breakpointId: number;
  /** Removes the entry breakpoint and every armed return breakpoint. */
  detach(): void;
}

const SYSV_ARGUMENTS = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"] as const;

interface PendingCall {
  entryStackPointer: bigint;
  data: Record<string, unknown>;
}

/**
 * Hooks the function at `location` (an address, symbol or expression) with
 * `onEnter` / `onLeave` callbacks that run while the guest keeps running.
 * A callback that throws stops the run with its message.
 */
export function hookFunction<M extends Machine>(
  debug: HookDebugger<M>,
  vm: M,
  location: bigint | number | string,
  callbacks: HookCallbacks,
): Hook {
  if (callbacks.onEnter === undefined && callbacks.onLeave === undefined) {
    throw new TypeError("Cannot hook: give onEnter, onLeave or both");
  }
  const address = debug.resolve(location);
  const name = debug.symbolize(address) ?? `0x${address.toString(16)}`;
  /** Return address -> its breakpoint and the calls (innermost last) that will return there. */
  const returns = new Map<bigint, { bp: Breakpoint<M>; pending: PendingCall[] }>();
  let calls = 0;

  const readWord = (cpu: Vcpu, at: bigint): bigint => {
    const width = cpu.bitness === 64 ? 8 : cpu.bitness === 32 ? 4 : 2;
    return debug.readVirtual(at, width, cpu).reduceRight((v, b) => (v << 8n) | BigInt(b), 0n);
  };
  const context = (
    cpu: Vcpu,
    returnAddress: bigint,
    entryStackPointer: bigint,
    data: Record<string, unknown>,
    leaving: boolean,
  ): HookContext => {
    const regs = cpu.regs;
    return {
      vm,
      cpu,
      regs,
      address,
      returnAddress,
      entryStackPointer,
      data,
      returnValue: leaving ? regs.rax : undefined,
      arg(index: number): bigint {
        if (!Number.isInteger(index) || index < 0) throw new RangeError(`Invalid argument index ${index}`);
        if (cpu.bitness === 64) {
          const register = SYSV_ARGUMENTS[index];
          return register !== undefined ? regs[register] : readWord(cpu, entryStackPointer + BigInt(8 * (index - 5)));
        }
        const width = BigInt(cpu.bitness / 8);
        return readWord(cpu, entryStackPointer + width * BigInt(index + 1));
      },
    };
  };
  const run = (what: "onEnter" | "onLeave", fn: (c: HookContext) => void, c: HookContext) => {
    try {
      fn(c);
    } catch (error) {
      throw new Error(`The ${what} hook of ${name} threw: ${(error as Error).message}`, { cause: error });
    }
  };

  const armReturn = (returnAddress: bigint, call: PendingCall) => {
    const armed = returns.get(returnAddress);
    if (armed !== undefined) {
      armed.pending.push(call);
      return;
    }
    const entry = { bp: undefined as unknown as Breakpoint<M>, pending: [call] };
    entry.bp = debug.break(returnAddress, {
      conditionText: `hook onLeave ${name}`,
      condition: (exitCpu) => {
        const sp = exitCpu.regs.rsp;
        // The hooked call has returned once the stack pointer is above its entry value (the return address popped).
        while (entry.pending.length > 0 && sp > entry.pending.at(-1)!.entryStackPointer) {
          const done = entry.pending.pop()!;
          run("onLeave", callbacks.onLeave!, context(exitCpu, returnAddress, done.entryStackPointer, done.data, true));
        }
        if (entry.pending.length === 0) {
          returns.delete(returnAddress);
          debug.delete(entry.bp.id);
        }
        return false;
      },
    });
    returns.set(returnAddress, entry);
  };

  const entry = debug.break(address, {
    conditionText: `hook onEnter ${name}`,
    condition: (cpu) => {
      calls++;
      const sp = cpu.regs.rsp;
      const returnAddress = readWord(cpu, sp);
      const call: PendingCall = { entryStackPointer: sp, data: {} };
      if (callbacks.onEnter !== undefined) {
        run("onEnter", callbacks.onEnter, context(cpu, returnAddress, sp, call.data, false));
      }
      if (callbacks.onLeave !== undefined) armReturn(returnAddress, call);
      return false; // never stop: the debugger steps over the entry and the guest runs on
    },
  });

  let detached = false;
  return {
    address,
    symbol: debug.symbolize(address),
    get calls() {
      return calls;
    },
    breakpointId: entry.id,
    detach() {
      if (detached) return;
      detached = true;
      debug.delete(entry.id);
      for (const { bp } of returns.values()) debug.delete(bp.id);
      returns.clear();
    },
  };
}
