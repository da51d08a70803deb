/**
 * The main thread's side of the application-processor protocol (the
 * worker's side is core/vcpu_thread.ts): start one Worker per AP, let them
 * run or park them, and collect the exits they hand over. An AP's exit is
 * decoded here from its kvm_run (both threads map it) and answered before
 * the AP is released.
 *
 * @module
 */

import type { VcpuExit } from "./kvm/exit.ts";
import { currentThreadId, kickThread } from "./kvm/signals.ts";
import type { Vcpu } from "./vcpu.ts";
import { type ApStart, Command, Mailbox, State } from "./vcpu_thread.ts";

/** An exit an application processor handed over: its decoded exit, or the errno of a failed KVM_RUN. */
export type ApExit = { cpu: Vcpu; exit: VcpuExit; errno?: undefined } | { cpu: Vcpu; exit?: undefined; errno: number };

interface ApThread {
  cpu: Vcpu;
  worker: Worker;
  mailbox: Int32Array;
}

/** Which application processors may be in KVM_RUN: every one, none, or a single one (it runs alone). */
export type Runnable = "all" | "none" | Vcpu;

/** The application processors of a machine, each on its own thread. */
export class ApplicationProcessors {
  readonly #threads: ApThread[] = [];
  /** Set by an AP thread when an exit waits for the main thread (see core/vcpu_thread.ts). */
  readonly #pending = new Int32Array(new SharedArrayBuffer(4));
  readonly #mainCpu: Vcpu;
  #runnable: Runnable = "none";
  /** APs whose last exit stopped the VM: kept out of KVM_RUN, never serviced twice, released by the next run. */
  readonly #held = new Set<ApThread>();

  /** @param mainCpu The vCPU the main thread runs; its immediate_exit is set by APs when `canCompleteExits`. */
  constructor(mainCpu: Vcpu, readonly canCompleteExits: boolean) {
    this.#mainCpu = mainCpu;
  }

  /** How many APs there are. */
  get count(): number {
    return this.#threads.length;
  }

  /** True when an AP has posted an exit the main thread has not serviced. */
  get pending(): boolean {
    return this.#pending[0] !== 0;
  }

  /** Starts a parked thread for each AP; resolves when every one is parked. */
  async start(cpus: readonly Vcpu[]): Promise<void> {
    const mainTid = currentThreadId();
    for (const cpu of cpus) {
      const mailbox = new Int32Array(new SharedArrayBuffer(Mailbox.size * 4));
      // Parked until the first run(): the worker must not enter KVM_RUN before the BSP is set up.
      mailbox[Mailbox.command] = Command.park;
      const worker = new Worker(new URL("./vcpu_thread.ts", import.meta.url), { type: "module" });
      const start: ApStart = {
        fd: cpu.fd.fd,
        id: cpu.index,
        mmapSize: cpu.fd.mmapSize,
        mainTid,
        mainFd: this.canCompleteExits ? this.#mainCpu.fd.fd : undefined,
        mailbox: mailbox.buffer as SharedArrayBuffer,
        pending: this.#pending.buffer as SharedArrayBuffer,
        canCompleteExits: this.canCompleteExits,
      };
      worker.postMessage(start);
      this.#threads.push({ cpu, worker, mailbox });
    }
    for (const { cpu, mailbox } of this.#threads) {
      // A Worker's start is module loading: seconds on a host loaded many times over, so the limit is generous.
      const deadline = performance.now() + 30_000;
      while (Atomics.load(mailbox, Mailbox.state) !== State.parked) {
        if (performance.now() > deadline) throw new Error(`vCPU ${cpu.index}'s thread did not start within 30 s`);
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    }
  }

  /**
   * Says which APs may run, and makes it so: they are let run, the others
   * are stopped (out of KVM_RUN) and waited for. `"none"` is how the machine
   * stops them all before it reports a stop.
   */
  setRunnable(runnable: Runnable): void {
    this.#runnable = runnable;
    this.resume();
  }

  /** Lets the APs {@link setRunnable} allows run again after a {@link park}; stops and waits for the others. */
  resume(): void {
    const stopping: ApThread[] = [];
    for (const thread of this.#threads) {
      if (this.#runnable === "all" || this.#runnable === thread.cpu) {
        // What this thread cached of its registers goes stale as it runs (its generation does not count its runs).
        thread.cpu.invalidate();
        Atomics.store(thread.mailbox, Mailbox.command, Command.run);
        Atomics.notify(thread.mailbox, Mailbox.command);
      } else if (Atomics.load(thread.mailbox, Mailbox.command) !== Command.park) {
        stopping.push(thread);
      }
    }
    this.#stop(stopping);
  }

  /** Stops every AP (out of KVM_RUN) and waits until each is parked; {@link resume} lets them go on. */
  park(): void {
    this.#stop(this.#threads);
  }

  #stop(threads: readonly ApThread[]): void {
    for (const { mailbox } of threads) {
      Atomics.store(mailbox, Mailbox.command, Command.park);
      const tid = Atomics.load(mailbox, Mailbox.tid);
      if (tid !== 0 && Atomics.load(mailbox, Mailbox.state) === State.running) kickThread(tid);
    }
    for (const { cpu, mailbox } of threads) {
      const deadline = performance.now() + 2_000;
      for (;;) {
        const state = Atomics.load(mailbox, Mailbox.state);
        if (state === State.parked || state === State.exit || state === State.gone) break;
        if (performance.now() > deadline) throw new Error(`vCPU ${cpu.index} did not stop within 2 s`);
        Atomics.wait(mailbox, Mailbox.state, state, 5);
        const tid = Atomics.load(mailbox, Mailbox.tid);
        if (Atomics.load(mailbox, Mailbox.state) === State.running && tid !== 0) kickThread(tid);
      }
      cpu.invalidate();
    }
  }

  /**
   * Lets the APs whose exits stopped the last run go on from them (each
   * re-enters KVM_RUN when it is next let run). A run calls it first.
   */
  releaseHeld(): void {
    const released = [...this.#held];
    this.#held.clear();
    for (const { mailbox } of released) {
      Atomics.store(mailbox, Mailbox.serviced, 1);
      Atomics.notify(mailbox, Mailbox.serviced);
    }
    // Each completes its exit and parks (see vcpu_thread.ts) before anyone reads its registers.
    for (const { cpu, mailbox } of released) {
      const deadline = performance.now() + 2_000;
      for (;;) {
        const state = Atomics.load(mailbox, Mailbox.state);
        if (state === State.parked || state === State.gone) break;
        if (performance.now() > deadline) throw new Error(`vCPU ${cpu.index} did not park within 2 s`);
        Atomics.wait(mailbox, Mailbox.state, state, 5);
      }
      cpu.invalidate();
    }
  }

  /**
   * True when `cpu` (an AP) is in KVM_RUN or may enter it without this
   * thread's say: neither parked nor waiting with an exit for the main thread.
   */
  isRunning(cpu: Vcpu): boolean {
    const thread = this.#threads.find((t) => t.cpu === cpu);
    if (thread === undefined) return false;
    const { mailbox } = thread;
    const state = Atomics.load(mailbox, Mailbox.state);
    if (state === State.gone) return false;
    if (state === State.parked) return Atomics.load(mailbox, Mailbox.command) !== Command.park;
    if (state === State.exit) return Atomics.load(mailbox, Mailbox.serviced) !== 0;
    return true;
  }

  /**
   * Waits up to `ms` for `cpu` (an AP) to post an exit; returns at once when
   * one waits. The main thread blocks here while that AP runs alone.
   */
  waitForExit(cpu: Vcpu, ms: number): void {
    const thread = this.#threads.find((t) => t.cpu === cpu);
    if (thread === undefined || ms <= 0) return;
    const state = Atomics.load(thread.mailbox, Mailbox.state);
    if (state === State.exit && !this.#held.has(thread)) return;
    Atomics.wait(thread.mailbox, Mailbox.state, state, ms);
  }

  /**
   * Hands each exit an AP posted to `service` (only `only`'s, when given:
   * the others wait for a later call). When it returns true the exit is
   * complete and the AP runs on; false holds the AP out of KVM_RUN until the
   * next run releases it (a stop of that vCPU).
   */
  service(service: (exit: ApExit) => boolean, only?: Vcpu): void {
    // Cleared before the mailboxes are read: an AP that posts after this sets them again (see vcpu_thread.ts).
    if (this.canCompleteExits) this.#mainCpu.fd.requestImmediateExit(false);
    Atomics.store(this.#pending, 0, 0);
    let skipped = false;
    for (const thread of this.#threads) {
      const { cpu, mailbox } = thread;
      if (Atomics.load(mailbox, Mailbox.state) !== State.exit || Atomics.load(mailbox, Mailbox.serviced) === 1) {
        continue;
      }
      if (this.#held.has(thread)) continue;
      if (only !== undefined && cpu !== only) {
        skipped = true;
        continue;
      }
      const failed = Atomics.load(mailbox, Mailbox.failed) === -1;
      const done = failed
        ? service({ cpu, errno: Atomics.load(mailbox, Mailbox.errno) })
        : service({ cpu, exit: cpu.fd.lastExit() });
      if (!done) {
        this.#held.add(thread);
        cpu.invalidate();
        continue;
      }
      Atomics.store(mailbox, Mailbox.serviced, 1);
      Atomics.notify(mailbox, Mailbox.serviced);
    }
    // Exits left for later keep the flag up, so the run loop comes back for them.
    if (skipped) Atomics.store(this.#pending, 0, 1);
  }

  /**
   * Services and completes every port or MMIO exit a parked AP posted that
   * nobody serviced (the run stopped first): KVM has already moved the AP's
   * rip past the instruction, so until the access is emulated and the exit
   * completed (KVM_RUN with immediate_exit, made from this thread) the
   * vCPU's state is half an instruction. Snapshots call it before reading
   * the state. `service` emulates an exit and returns false for one it
   * leaves for the next run (a stop).
   */
  settle(service: (exit: ApExit) => boolean): void {
    for (const { cpu, mailbox } of this.#threads) {
      if (Atomics.load(mailbox, Mailbox.state) !== State.exit || Atomics.load(mailbox, Mailbox.serviced) === 1) {
        continue;
      }
      if (Atomics.load(mailbox, Mailbox.failed) === -1) continue;
      if (!service({ cpu, exit: cpu.fd.lastExit() })) continue;
      if (this.canCompleteExits) cpu.fd.completePendingExit();
      cpu.invalidate();
      Atomics.store(mailbox, Mailbox.serviced, 1);
      Atomics.notify(mailbox, Mailbox.serviced);
    }
  }

  /** Ends every AP thread (each leaves KVM_RUN and its Worker is terminated). */
  close(): void {
    for (const { mailbox, worker } of this.#threads) {
      Atomics.store(mailbox, Mailbox.command, Command.quit);
      Atomics.notify(mailbox, Mailbox.command);
      Atomics.notify(mailbox, Mailbox.serviced);
      const tid = Atomics.load(mailbox, Mailbox.tid);
      const deadline = performance.now() + 2_000;
      while (Atomics.load(mailbox, Mailbox.state) !== State.gone && performance.now() < deadline) {
        if (tid !== 0) kickThread(tid);
        Atomics.wait(mailbox, Mailbox.state, Atomics.load(mailbox, Mailbox.state), 5);
      }
      worker.terminate();
    }
    this.#threads.length = 0;
    this.#held.clear();
  }
}
