/**
 * Running a recorded guest backwards (the debugger's reverseStep,
 * reverseContinue, reverseNext and reverseFinish) over a {@link History}:
 * every trip back restores the checkpoint before the target and replays
 * forward with the debugger's quiet runs (nobody is told of their stops, the
 * user's breakpoints are passed over), at full speed to the target's last
 * access and by single steps after it.
 *
 * A moment reached by a free run (a breakpoint hit, a pause) has no exact
 * position until one is needed: the stretch since the last exact position is
 * then single-stepped until the guest is there again (the same arrival at
 * the breakpoint's address, or the same registers).
 *
 * @module
 */

import type { Machine, RunOptions } from "../machine.ts";
import type { Vcpu } from "../vcpu.ts";
import type { Registers } from "../kvm/structs.ts";
import { describeStop, type PendingStop, type StopEvent } from "../stop.ts";
import { hex } from "../hex.ts";
import type { DecodedInstruction } from "./disasm.ts";
import type { BreakCondition, Breakpoint, Watchpoint } from "./types.ts";
import { comparePositions, formatPosition, type History, type Position, ReplayDivergenceError } from "./history.ts";

/** At most this many instructions are single-stepped to find a moment again (tens of seconds here). */
const MAX_REPLAY_STEPS = 2_000_000;
/** A replay run that takes longer than this has diverged (checkpoints are milliseconds of running apart). */
export const REPLAY_TIMEOUT_MS = 60_000;

/** What going backwards needs from the debugger: its quiet runs and its view of the guest. */
export interface ReplayHost<M extends Machine = Machine> {
  readonly machine: M;
  /** A run nobody is told of; breakpoints and watchpoints are passed over unless `silenced` is false. */
  quietRun(options: RunOptions, silenced?: boolean): Promise<StopEvent>;
  /** Single-steps vCPU 0 quietly, at most `count` instructions or until `until` holds after one; true when it did. */
  quietStep(count: number, until?: (cpu: Vcpu) => boolean): Promise<boolean>;
  ripLinear(cpu: Vcpu): bigint;
  instructionAt(cpu: Vcpu, address: bigint): DecodedInstruction | undefined;
  currentReturn(cpu: Vcpu): { returnAddress: bigint; frameRsp: bigint };
  evaluate(condition: BreakCondition<M>, cpu: Vcpu, what: string): boolean;
  breakpoints(): Breakpoint<M>[];
  watchpoints(): Watchpoint<M>[];
  /** Forgets where vCPU `cpu` last stopped (its state was replaced). */
  forgetStop(cpu: number): void;
}

/** The reverse commands over one recording. */
export class Rewinder<M extends Machine = Machine> {
  readonly #host: ReplayHost<M>;
  readonly #machine: M;
  readonly #history: History;

  constructor(host: ReplayHost<M>, history: History) {
    this.#host = host;
    this.#machine = host.machine;
    this.#history = history;
  }

  /** {@link Debugger.reverseStep}: `count` instructions back. */
  async step(count: number): Promise<PendingStop> {
    for (let i = 0; i < count; i++) {
      const at = await this.#leaveLiveEnd();
      const back = await this.#instructionBefore(at);
      if (back === undefined) return { reason: "history", edge: "begin" };
      await this.#goTo(back);
    }
    return { reason: "step", address: this.#host.ripLinear(this.#machine.cpu(0)) };
  }

  /** {@link Debugger.reverseContinue}: back to the last breakpoint hit or watched write. */
  continue(): Promise<PendingStop> {
    return this.#reverseSearch(undefined);
  }

  /** {@link Debugger.reverseNext}: one instruction back, over a call. */
  async next(): Promise<PendingStop> {
    const cpu = this.#machine.cpu(0);
    const at = await this.#leaveLiveEnd();
    const returnAddress = this.#host.ripLinear(cpu);
    const rspAfter = cpu.regs.rsp;
    const back = await this.#instructionBefore(at);
    if (back === undefined) return { reason: "history", edge: "begin" };
    await this.#goTo(back);
    const insn = this.#host.instructionAt(cpu, this.#host.ripLinear(cpu));
    if (insn?.isReturn !== true) return { reason: "step", address: this.#host.ripLinear(cpu) };
    const callSite = this.#callBefore(cpu, returnAddress);
    return await this.#reverseSearch(
      (c) => c.regs.rsp === rspAfter && (callSite === undefined || this.#host.ripLinear(c) === callSite),
    );
  }

  /** {@link Debugger.reverseFinish}: back to the call of the current function. */
  async finish(): Promise<PendingStop> {
    const cpu = this.#machine.cpu(0);
    await this.#leaveLiveEnd();
    const { returnAddress, frameRsp } = this.#host.currentReturn(cpu);
    const callSite = this.#callBefore(cpu, returnAddress);
    if (callSite === undefined) {
      throw new Error(`Cannot find the call before the return address ${hex(returnAddress)}`);
    }
    const rspAtCall = frameRsp + 8n;
    return await this.#reverseSearch((c) => this.#host.ripLinear(c) === callSite && c.regs.rsp === rspAtCall);
  }

  /**
   * The exact position; first, at the end of the log, a checkpoint of this
   * moment (going forward again, or a divergence, comes back to it).
   */
  async #leaveLiveEnd(): Promise<Position> {
    const exact = this.#history.position;
    if (this.#history.replaying) return exact ?? await this.#resolvePosition();
    const last = this.#history.checkpointPosition(this.#history.checkpointCount - 1);
    if (exact !== undefined && comparePositions(last, exact) === 0) return exact;
    const index = this.#history.checkpointHere(exact);
    if (exact !== undefined) return exact;
    const found = await this.#resolvePosition();
    this.#history.placeCheckpoint(index, found);
    return found;
  }

  /**
   * Finds the exact position after a free run: replays from the last exact
   * position and single-steps until the guest is where it is now (the same
   * arrival at a breakpoint address, or the same registers).
   */
  async #resolvePosition(): Promise<Position> {
    const cpu = this.#machine.cpu(0);
    const { base, hits } = this.#history.unresolved();
    const rip = this.#host.ripLinear(cpu);
    const regs = { ...cpu.regs };
    const arrivals = hits.get(rip);
    const sameRegisters = (c: Vcpu) => {
      const now = c.regs;
      for (const name of Object.keys(regs) as (keyof Registers)[]) if (now[name] !== regs[name]) return false;
      return true;
    };
    await this.#goTo(base);
    if (arrivals === undefined && sameRegisters(cpu)) return base;
    let seen = 0;
    const found = await this.#host.quietStep(
      MAX_REPLAY_STEPS,
      arrivals !== undefined ? (c) => this.#host.ripLinear(c) === rip && ++seen === arrivals : sameRegisters,
    );
    const position = this.#history.position;
    if (!found || position === undefined) {
      throw new ReplayDivergenceError(
        `replay did not come back to rip ${hex(rip)} within ${MAX_REPLAY_STEPS} instructions of ${
          formatPosition(base)
        }: the guest's run is not deterministic here`,
      );
    }
    return position;
  }

  /** The position one instruction before `at`, or undefined at the start of the this.#history. */
  async #instructionBefore(at: Position): Promise<Position | undefined> {
    if (at.steps > 0) return { events: at.events, steps: at.steps - 1 };
    if (at.events === 0) return undefined;
    // `at` is just after an exit: the instruction before made it; count the stretch that led to it.
    const first = this.#history.exitStart(at.events);
    await this.#goTo({ events: first, steps: 0 });
    let taken = 0;
    const found = await this.#host.quietStep(MAX_REPLAY_STEPS, () => (++taken, this.#history.events > first));
    if (!found) throw new ReplayDivergenceError(`replay did not reach access #${first} again`);
    return { events: first, steps: taken - 1 };
  }

  /** Puts the guest at `target`: the checkpoint before it, then a silent replay. */
  async #goTo(target: Position): Promise<void> {
    const index = this.#history.checkpointAtOrBefore(target);
    this.#history.restore(index);
    this.#host.forgetStop(0);
    const from = this.#history.checkpointPosition(index);
    if (target.events > from.events) {
      this.#history.stopAfter(target.events);
      let stop: StopEvent;
      try {
        stop = await this.#host.quietRun({ timeout: REPLAY_TIMEOUT_MS });
      } finally {
        this.#history.stopAfter(undefined);
      }
      if (this.#history.events !== target.events || this.#history.position?.steps !== 0) {
        throw new ReplayDivergenceError(
          `replay stopped at access #${this.#history.events} (${describeStop(stop)}), not #${target.events}`,
        );
      }
    }
    const steps = target.steps - (target.events === from.events ? from.steps : 0);
    if (steps > 0 && !(await this.#host.quietStep(steps))) {
      throw new ReplayDivergenceError(`replay could not step ${steps} instructions on to ${formatPosition(target)}`);
    }
    const now = this.#history.position;
    if (now === undefined || comparePositions(now, target) !== 0) {
      throw new ReplayDivergenceError(
        `replay reached ${now === undefined ? "an unknown position" : formatPosition(now)}, not ${
          formatPosition(target)
        }`,
      );
    }
  }

  /**
   * The last moment before the current one where a breakpoint (enabled,
   * condition true) would stop, a write watchpoint's memory changed (the
   * moment before the instruction that wrote it), or `extra` holds: searched
   * one checkpoint's stretch at a time, backwards, single-stepping.
   */
  async #reverseSearch(extra: ((cpu: Vcpu) => boolean) | undefined): Promise<PendingStop> {
    const cpu = this.#machine.cpu(0);
    const end = await this.#leaveLiveEnd();
    const unwatchable = this.#host.watchpoints().find((wp) => wp.enabled && wp.access !== "write");
    if (unwatchable !== undefined) {
      throw new Error(
        `Cannot run backwards to watchpoint ${unwatchable.id} (${unwatchable.access}): reverse execution finds ` +
          "writes only (disable it, or use a write watchpoint)",
      );
    }
    const breakpoints = this.#host.breakpoints().filter((bp) => bp.enabled);
    const watchpoints = this.#host.watchpoints().filter((wp) => wp.enabled);
    const memory = this.#machine.memory;
    let segmentEnd = end;
    for (let index = this.#history.checkpointAtOrBefore(end); index >= 0; index--) {
      const start = this.#history.checkpointPosition(index);
      if (comparePositions(start, segmentEnd) >= 0) continue;
      await this.#goTo(start);
      let found = undefined as { position: Position; stop: PendingStop } | undefined;
      let values = watchpoints.map((wp) => memory.read(wp.physical, wp.length));
      let previous: Position = start;
      let previousRip = this.#host.ripLinear(cpu);
      const check = (c: Vcpu): boolean => {
        const position = this.#history.position!;
        if (comparePositions(position, segmentEnd) >= 0) return true;
        const rip = this.#host.ripLinear(c);
        if (extra?.(c)) found = { position, stop: { reason: "step", address: rip } };
        for (const bp of breakpoints) {
          if (bp.address !== rip) continue;
          if (bp.condition !== undefined && !this.#host.evaluate(bp.condition, c, `breakpoint ${bp.id}`)) continue;
          found = { position, stop: { reason: "breakpoint", id: bp.id, address: rip, kind: bp.kind } };
          break;
        }
        return false;
      };
      const afterStep = (c: Vcpu): boolean => {
        if (watchpoints.length > 0) {
          const now = watchpoints.map((wp) => memory.read(wp.physical, wp.length));
          watchpoints.forEach((wp, i) => {
            const before = values[i]!;
            const after = now[i]!;
            if (before.every((b, j) => b === after[j])) return;
            const toValue = (bytes: Uint8Array) =>
              bytes.subarray(0, 8).reduceRight((v, b) => (v << 8n) | BigInt(b), 0n);
            found = {
              position: previous,
              stop: {
                reason: "watchpoint",
                id: wp.id,
                address: wp.address,
                access: "write",
                dataAddress: BigInt(wp.physical),
                size: wp.length,
                oldValue: toValue(before),
                newValue: toValue(after),
                pc: previousRip,
              } as PendingStop,
            };
          });
          values = now;
        }
        const done = check(c);
        previous = this.#history.position!;
        previousRip = this.#host.ripLinear(c);
        return done;
      };
      // The checkpoint's own moment counts; the end of the stretch does not.
      check(cpu);
      // Breakpoints alone: replay at full speed with them planted up to the stretch of the end, noting
      // each hit as the how-many-th arrival at its address since an exact moment; single-step the rest.
      let arrival: { base: Position; address: bigint; arrivals: number; stop: PendingStop } | undefined;
      if (extra === undefined && watchpoints.length === 0 && segmentEnd.events > start.events) {
        this.#history.stopAfter(segmentEnd.events);
        try {
          for (;;) {
            const stop = await this.#host.quietRun({ timeout: REPLAY_TIMEOUT_MS }, false);
            if (stop.reason !== "breakpoint") break;
            const { base, hits } = this.#history.unresolved();
            const address = this.#host.ripLinear(cpu);
            const { cpu: _, rip: _rip, mode: _mode, symbol: _symbol, ...pending } = stop;
            arrival = { base, address, arrivals: hits.get(address) ?? 1, stop: pending as PendingStop };
            found = undefined;
          }
        } finally {
          this.#history.stopAfter(undefined);
        }
        const at = this.#history.position;
        if (at === undefined || at.events !== segmentEnd.events || at.steps !== 0) {
          throw new ReplayDivergenceError(`replay did not reach access #${segmentEnd.events}`);
        }
        previous = at;
        previousRip = this.#host.ripLinear(cpu);
        check(cpu);
      }
      if (comparePositions(this.#history.position!, segmentEnd) < 0) {
        const reached = await this.#host.quietStep(MAX_REPLAY_STEPS, afterStep);
        if (!reached) throw new ReplayDivergenceError(`replay did not reach ${formatPosition(segmentEnd)}`);
      }
      if (found === undefined && arrival !== undefined) {
        // The last hit came in the fast replay: find its exact moment by single steps from its base.
        const { base, address, arrivals, stop } = arrival;
        await this.#goTo(base);
        let seen = 0;
        const reached = await this.#host.quietStep(
          MAX_REPLAY_STEPS,
          (c) => this.#host.ripLinear(c) === address && ++seen === arrivals,
        );
        const position = this.#history.position;
        if (!reached || position === undefined) {
          throw new ReplayDivergenceError(`replay did not come back to ${hex(address)} after ${formatPosition(base)}`);
        }
        found = { position, stop };
      }
      if (found !== undefined) {
        await this.#goTo(found.position);
        const stop = found.stop;
        if (stop.reason === "breakpoint" && stop.id !== undefined) {
          const bp = this.#host.breakpoints().find((b) => b.id === stop.id);
          if (bp !== undefined) bp.hits++;
        }
        return stop;
      }
      segmentEnd = start;
    }
    await this.#goTo({ events: 0, steps: 0 });
    return { reason: "history", edge: "begin" };
  }

  /** The call instruction that ends at `returnAddress` (the bytes before it decoded as each possible call length). */
  #callBefore(cpu: Vcpu, returnAddress: bigint): bigint | undefined {
    for (const length of [5, 6, 2, 3, 7, 4]) {
      const insn = this.#host.instructionAt(cpu, returnAddress - BigInt(length));
      if (insn?.isCall && insn.length === length) return returnAddress - BigInt(length);
    }
    return undefined;
  }
}
