/**
 * Getting a thread out of KVM_RUN when the guest makes no exits.
 *
 * The kick is SIGUSR2 sent to one thread (tgkill, or a POSIX timer aimed at
 * the main thread with SIGEV_THREAD_ID). A do-nothing handler is installed
 * for it (through Deno.addSignalListener, which does not keep the process
 * alive), so the signal is delivered at once: KVM_RUN returns EINTR
 * (KVM_EXIT_INTR) and nothing stays pending.
 *
 * Measured (scripts/bench.ts, PIO exits against C): the alternative of
 * blocking the signal and unblocking it only inside KVM_RUN with
 * KVM_SET_SIGNAL_MASK costs ~1.5 % per exit, because KVM switches the signal
 * mask on every KVM_RUN, plus a sigtimedwait per kick. SIGUSR1 is not used:
 * Deno treats it as the inspector's trigger. The path is the same on hardware
 * and nested KVM.
 *
 * @module
 */

import { CLOCK_MONOTONIC, lastErrno, SIGEV_THREAD_ID, sys } from "./_ffi.ts";
import { KvmError } from "./kvm.ts";

/** The kick signal: SIGUSR2. */
export const KICK_SIGNAL = 12;

let prepared = false;

/** Installs the do-nothing handler for the kick signal, once per process. */
export function prepareKickSignal(): void {
  if (prepared) return;
  Deno.addSignalListener("SIGUSR2", () => {});
  prepared = true;
}

/** The kernel thread id of the calling thread. */
export function currentThreadId(): number {
  return sys.gettid();
}

/**
 * Sends the kick signal to one thread of this process. Its KVM_RUN, if any,
 * returns EINTR.
 */
export function kickThread(tid: number): void {
  if (sys.tgkill(sys.getpid(), tid, KICK_SIGNAL) !== 0) throw new KvmError("tgkill", lastErrno(), `thread ${tid}`);
}

/**
 * A periodic kick aimed at the main thread. Reference counted: armed while
 * at least one run loop is active, so idle VMs cost nothing.
 */
export class KickTimer {
  // glibc's timer_t for SIGEV_THREAD_ID is the kernel timer id, which may be 0 (a null pointer).
  #timer: Deno.PointerValue = null;
  #created = false;
  #users = 0;
  readonly #intervalNs: number;

  constructor(intervalMs: number) {
    this.#intervalNs = Math.round(intervalMs * 1e6);
  }

  /** Arms the timer for its first user. */
  acquire(): void {
    if (this.#users++ > 0) return;
    if (!this.#created) this.#create();
    this.#set(this.#intervalNs);
  }

  /** Disarms the timer when its last user leaves. */
  release(): void {
    if (this.#users === 0) return;
    if (--this.#users > 0) return;
    this.#set(0);
  }

  #create(): void {
    prepareKickSignal();
    const event = new Uint8Array(64);
    const view = new DataView(event.buffer);
    view.setInt32(8, KICK_SIGNAL, true);
    view.setInt32(12, SIGEV_THREAD_ID, true);
    view.setInt32(16, sys.gettid(), true);
    const timerId = new Uint8Array(8);
    if (sys.timer_create(CLOCK_MONOTONIC, event, timerId) !== 0) {
      throw new KvmError("timer_create", lastErrno());
    }
    this.#timer = Deno.UnsafePointer.create(new DataView(timerId.buffer).getBigUint64(0, true));
    this.#created = true;
  }

  /** The two itimerspecs this timer is ever set to, built once: every run arms and disarms it. */
  #specs = new Map<number, Uint8Array>();

  #set(intervalNs: number): void {
    let spec = this.#specs.get(intervalNs);
    if (spec === undefined) {
      spec = new Uint8Array(32);
      const view = new DataView(spec.buffer);
      const seconds = BigInt(Math.floor(intervalNs / 1e9));
      const nanos = BigInt(intervalNs % 1e9);
      view.setBigInt64(0, seconds, true);
      view.setBigInt64(8, nanos, true);
      view.setBigInt64(16, seconds, true);
      view.setBigInt64(24, nanos, true);
      this.#specs.set(intervalNs, spec);
    }
    if (sys.timer_settime(this.#timer, 0, spec, null) !== 0) {
      throw new KvmError("timer_settime", lastErrno());
    }
  }
}

/**
 * The process-wide kick timer for run loops on the main thread. 10 ms: each
 * kick costs 30-60 µs outside the guest here (measured by scripts/bench.ts:
 * 5 ms cost 1-2 % of exit throughput), and 10 ms keeps pause well inside 50 ms.
 */
export const mainThreadKick: KickTimer = new KickTimer(10); // core/vm.ts's TICK_MS
