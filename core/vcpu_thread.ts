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

import { KvmError, VcpuFd } from "./kvm/kvm.ts";
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
  /** 0 when the exit is in kvm_run; -1 when KVM_RUN failed (errno in {@link Mailbox.errno}). */
  failed: 4,
  /** errno of a failed KVM_RUN. */
  errno: 5,
  size: 8,
} as const;

/** Commands of the mailbox. */
export const Command = { run: 0, park: 1, quit: 2 } as const;
/** States of the mailbox. */
export const State = { running: 0, parked: 1, exit: 2, gone: 3 } as const;

/** The message that starts an application processor's thread. */
export interface ApStart {
  /** The AP's vCPU fd and id; the thread borrows it (the main thread owns and closes it). */
  fd: number;
  id: number;
  mmapSize: number;
  mainTid: number;
  /** The main thread's vCPU fd, to set its immediate_exit; undefined without KVM_CAP_IMMEDIATE_EXIT. */
  mainFd: number | undefined;
  mailbox: SharedArrayBuffer;
  /** One Int32 shared by every AP: set when any exit waits, so the main thread notices without the kick. */
  pending: SharedArrayBuffer;
  /** KVM_CAP_IMMEDIATE_EXIT: an exit serviced while parking is completed first (see below). */
  canCompleteExits: boolean;
}

function serve(start: ApStart): void {
  const box = new Int32Array(start.mailbox);
  const pending = new Int32Array(start.pending);
  const vcpu = VcpuFd.borrow(start.fd, start.id, start.mmapSize);
  // Set before the kick, the main vCPU's immediate_exit makes a KVM_RUN the main thread is about to
  // enter return at once, so a kick that lands just before it is not lost.
  const mainVcpu = start.mainFd === undefined ? undefined : VcpuFd.borrow(start.mainFd, 0, start.mmapSize);
  // The kick's handler is process-wide: the main thread installed it before starting this worker.
  Atomics.store(box, Mailbox.tid, currentThreadId());
  Atomics.notify(box, Mailbox.tid);
  try {
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
      try {
        if (vcpu.run().kind === "interrupted") continue;
        Atomics.store(box, Mailbox.failed, 0); // the main thread decodes the exit from kvm_run
      } catch (error) {
        Atomics.store(box, Mailbox.errno, error instanceof KvmError ? error.errno : 0);
        Atomics.store(box, Mailbox.failed, -1);
      }
      Atomics.store(box, Mailbox.serviced, 0);
      Atomics.store(box, Mailbox.state, State.exit);
      // The main thread may be waiting for this vCPU alone (a step): wake it without the kick.
      Atomics.notify(box, Mailbox.state);
      // The flag covers a kick that lands while the main thread is in JavaScript (the kick is then lost).
      Atomics.store(pending, 0, 1);
      Atomics.notify(pending, 0);
      mainVcpu?.requestImmediateExit();
      kickThread(start.mainTid);
      while (Atomics.load(box, Mailbox.serviced) === 0 && Atomics.load(box, Mailbox.command) !== Command.quit) {
        Atomics.wait(box, Mailbox.serviced, 0, 50);
      }
      if (start.canCompleteExits && Atomics.load(box, Mailbox.command) === Command.park) {
        // Serviced as the VM stops: complete the exit now (an IN's value reaches rax, rip moves on),
        // so the registers front ends read while the VM is stopped are the instruction's result.
        try {
          vcpu.completePendingExit();
        } catch {
          // the exit stays pending; the next KVM_RUN completes it
        }
      }
      Atomics.store(box, Mailbox.state, State.running);
      Atomics.notify(box, Mailbox.state);
    }
  } finally {
    vcpu.close();
    mainVcpu?.close();
    Atomics.store(box, Mailbox.state, State.gone);
    Atomics.notify(box, Mailbox.state);
  }
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<ApStart>) => void) | null;
  close(): void;
}
const scope = globalThis as unknown as WorkerScope & { WorkerGlobalScope?: unknown };
if (scope.WorkerGlobalScope !== undefined) {
  scope.onmessage = (event) => {
    serve(event.data);
    scope.close();
  };
}
