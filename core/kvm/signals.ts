/**
 * Getting the main thread out of KVM_RUN when the guest makes no exits.
 *
 * The main thread blocks SIGUSR1 for itself, while each vCPU's KVM signal
 * mask unblocks it, so the signal is only ever "delivered" as an EINTR exit
 * from KVM_RUN and never runs a handler (an unblocked SIGUSR1 would end the
 * whole process: Deno installs no handler for it). A POSIX timer aimed at
 * this thread alone (SIGEV_THREAD_ID) sends it periodically while a guest
 * runs, which lets the run loop yield to the event loop. The pending signal
 * is drained with a zero-timeout sigtimedwait after every interrupted run.
 * This path is the same on hardware KVM and on nested/emulated KVM.
 *
 * @module
 */

import { CLOCK_MONOTONIC, lastErrno, SIG_BLOCK, SIGEV_THREAD_ID, SIGUSR1, sys } from "./_ffi.ts";
import { KvmError } from "./kvm.ts";

const SIGSET_BYTES = 128;
const KICK_BIT = 1n << BigInt(SIGUSR1 - 1);

function kickSet(): Uint8Array<ArrayBuffer> {
  const set = new Uint8Array(SIGSET_BYTES);
  new DataView(set.buffer).setBigUint64(0, KICK_BIT, true);
  return set;
}

let blockedMask: bigint | undefined;

/**
 * Blocks the kick signal on the calling (main) thread, once, and returns the
 * 64-bit signal mask vCPUs should run with: the thread's mask without it.
 */
export function prepareKickSignal(): bigint {
  if (blockedMask !== undefined) return blockedMask;
  const old = new Uint8Array(SIGSET_BYTES);
  if (sys.pthread_sigmask(SIG_BLOCK, kickSet(), old) !== 0) {
    throw new KvmError("pthread_sigmask", lastErrno());
  }
  blockedMask = new DataView(old.buffer).getBigUint64(0, true) & ~KICK_BIT;
  return blockedMask;
}

const zeroTimeout = new Uint8Array(16);
const kickSetBuffer = kickSet();

/** Consumes a pending kick, if any, so the next KVM_RUN is not interrupted by a stale one. */
export function drainKick(): void {
  while (sys.sigtimedwait(kickSetBuffer, null, zeroTimeout) === SIGUSR1) {
    // drained one
  }
}

/** The kernel thread id of the calling thread. */
export function currentThreadId(): number {
  return sys.gettid();
}

/**
 * Sends the kick signal to one thread of this process (never process-wide:
 * an unblocked SIGUSR1 would end the process). Its KVM_RUN, if any, returns EINTR.
 */
export function kickThread(tid: number): void {
  if (sys.tgkill(sys.getpid(), tid, SIGUSR1) !== 0) throw new KvmError("tgkill", lastErrno(), `thread ${tid}`);
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
    view.setInt32(8, SIGUSR1, true);
    view.setInt32(12, SIGEV_THREAD_ID, true);
    view.setInt32(16, sys.gettid(), true);
    const timerId = new Uint8Array(8);
    if (sys.timer_create(CLOCK_MONOTONIC, event, timerId) !== 0) {
      throw new KvmError("timer_create", lastErrno());
    }
    this.#timer = Deno.UnsafePointer.create(new DataView(timerId.buffer).getBigUint64(0, true));
    this.#created = true;
  }

  #set(intervalNs: number): void {
    const spec = new Uint8Array(32);
    const view = new DataView(spec.buffer);
    const seconds = BigInt(Math.floor(intervalNs / 1e9));
    const nanos = BigInt(intervalNs % 1e9);
    view.setBigInt64(0, seconds, true);
    view.setBigInt64(8, nanos, true);
    view.setBigInt64(16, seconds, true);
    view.setBigInt64(24, nanos, true);
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
export const mainThreadKick: KickTimer = new KickTimer(10);
