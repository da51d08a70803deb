/**
 * The thread of an application processor (vCPU 1..N-1): a Deno Worker that
 * runs KVM_RUN for one vCPU. Exits that need a device (port I/O, MMIO) or
 * that stop the VM are handed to the main thread through a shared mailbox:
 * the worker records the exit, kicks the main thread out of its own KVM_RUN
 * (tgkill), and waits until the main thread has completed the exit on the
 * vCPU's kvm_run (which both threads map). With the in-kernel irqchip such
 * exits are rare, so the ~20-50 µs hand-off does not matter.
 *
 * Mailbox (Int32Array over a SharedArrayBuffer), see {@link Mailbox}.
 *
 * @module
 */

import { KVM } from "./kvm/ioctls.ts";
import { lastErrno, sys, viewAddress } from "./kvm/_ffi.ts";
import { currentThreadId, kickThread } from "./kvm/signals.ts";

/** Indices into the shared mailbox. */
export const Mailbox = {
  /** Main -> worker: 0 run, 1 park, 2 quit. */
  command: 0,
  /** Worker -> main: 0 running, 1 parked, 2 exit waiting for service, 3 gone. */
  state: 1,
  /** Main -> worker: set to 1 when the exit has been serviced. */
  serviced: 2,
  /** Worker's kernel thread id. */
  tid: 3,
  /** Exit reason waiting for service. */
  reason: 4,
  /** errno of a failed KVM_RUN (reported as exit reason -1). */
  errno: 5,
  size: 8,
} as const;

/** Commands of the mailbox. */
export const Command = { run: 0, park: 1, quit: 2 } as const;
/** States of the mailbox. */
export const State = { running: 0, parked: 1, exit: 2, gone: 3 } as const;

const EINTR = 4;
const EAGAIN = 11;

interface Start {
  fd: number;
  mainTid: number;
  mailbox: SharedArrayBuffer;
  /** One Int32 shared by every AP: set when any exit waits, so the main thread notices without the kick. */
  pending: SharedArrayBuffer;
  /** Address of the main thread's vCPU's kvm_run, or undefined without KVM_CAP_IMMEDIATE_EXIT. */
  mainRun: bigint | undefined;
}

function serve(start: Start): void {
  const box = new Int32Array(start.mailbox);
  const pending = new Int32Array(start.pending);
  // kvm_run.immediate_exit (byte 1) of the main thread's vCPU: set before the kick, it makes a KVM_RUN the
  // main thread is about to enter return at once, so a kick that lands just before it is not lost.
  const mainImmediateExit = start.mainRun === undefined ? undefined : viewAddress(start.mainRun, 2);
  // The kick's handler is process-wide: the main thread installed it before starting this worker.
  Atomics.store(box, Mailbox.tid, currentThreadId());
  Atomics.notify(box, Mailbox.tid);
  for (;;) {
    const command = Atomics.load(box, Mailbox.command);
    if (command === Command.quit) break;
    if (command === Command.park) {
      Atomics.store(box, Mailbox.state, State.parked);
      Atomics.notify(box, Mailbox.state);
      Atomics.wait(box, Mailbox.command, Command.park);
      Atomics.store(box, Mailbox.state, State.running);
      continue;
    }
    if (sys.ioctl(start.fd, KVM.RUN, null) < 0) {
      const errno = lastErrno();
      if (errno === EINTR || errno === EAGAIN) continue;
      Atomics.store(box, Mailbox.errno, errno);
      Atomics.store(box, Mailbox.reason, -1);
    } else {
      Atomics.store(box, Mailbox.reason, 0x7fffffff); // the main thread reads exit_reason from kvm_run
    }
    Atomics.store(box, Mailbox.serviced, 0);
    Atomics.store(box, Mailbox.state, State.exit);
    // The flag covers a kick that lands while the main thread is in JavaScript (the kick is then lost).
    Atomics.store(pending, 0, 1);
    if (mainImmediateExit !== undefined) mainImmediateExit[1] = 1;
    kickThread(start.mainTid);
    while (Atomics.load(box, Mailbox.serviced) === 0 && Atomics.load(box, Mailbox.command) !== Command.quit) {
      Atomics.wait(box, Mailbox.serviced, 0, 50);
    }
    Atomics.store(box, Mailbox.state, State.running);
  }
  Atomics.store(box, Mailbox.state, State.gone);
  Atomics.notify(box, Mailbox.state);
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<Start>) => void) | null;
  close(): void;
}
const scope = globalThis as unknown as WorkerScope & { WorkerGlobalScope?: unknown };
if (scope.WorkerGlobalScope !== undefined) {
  scope.onmessage = (event) => {
    serve(event.data);
    scope.close();
  };
}
