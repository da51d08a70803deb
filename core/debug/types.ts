/**
 * The debugger's public types: breakpoints, watchpoints and their
 * conditions. Kept apart from debugger.ts so the modules the debugger uses
 * (hooks.ts) can name them without importing the debugger back.
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import type { Vcpu } from "../vcpu.ts";

/**
 * A breakpoint condition: a closure, or (from the REPL) an expression
 * compiled by the caller. `vm` is the machine the debugger is attached to
 * (`M`: a `Vm` when it came from `vm.debug`).
 */
export type BreakCondition<M extends Machine = Machine> = (cpu: Vcpu, vm: M) => boolean;

/** Options of `Debugger.break`. */
export interface BreakpointOptions<M extends Machine = Machine> {
  /** Stop only when this returns true (evaluated in-process at each hit). */
  condition?: BreakCondition<M>;
  /** Source text of the condition, for listings. */
  conditionText?: string;
  /** Delete after the first stop. */
  once?: boolean;
}

/** A breakpoint as listed by `Debugger.breakpoints`. */
export interface Breakpoint<M extends Machine = Machine> {
  readonly id: number;
  readonly kind: "software" | "hardware";
  /** The (virtual) address. */
  readonly address: bigint;
  /** The physical address planted (software). */
  readonly physical: number | undefined;
  /** `symbol+offset` of the address. */
  readonly symbol: string | undefined;
  enabled: boolean;
  /** Stops so far (hits whose condition held). */
  hits: number;
  readonly once: boolean;
  readonly condition: BreakCondition<M> | undefined;
  readonly conditionText: string | undefined;
  /** Internal breakpoints (next/finish/until) are not listed. */
  readonly internal: boolean;
}

/** Access kinds of a watchpoint. */
export type WatchAccess = "read" | "write" | "access";

/** A watchpoint as listed by `Debugger.watchpoints`. */
export interface Watchpoint<M extends Machine = Machine> {
  readonly id: number;
  /** The (virtual) address watched. */
  readonly address: bigint;
  /** Its physical address. */
  readonly physical: number;
  readonly length: number;
  readonly access: WatchAccess;
  readonly symbol: string | undefined;
  enabled: boolean;
  hits: number;
  readonly condition: BreakCondition<M> | undefined;
}
