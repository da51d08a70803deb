/**
 * virtio-rng, the entropy device (virtio 1.2, section 5.4): one queue whose
 * device-writable buffers are filled from the host's `getrandom(2)`.
 *
 * @module
 */

import { getRandom } from "../../core/kvm/host_io.ts";
import { VIRTIO_ID, type VirtioContext, type VirtioDevice } from "./device.ts";
import { StateReader } from "../_state.ts";

/** The most bytes given per request: Linux asks for at most a page at a time, and it bounds one notify's work. */
const MAX_REQUEST = 64 * 1024;

/**
 * The entropy device.
 *
 * @example
 * ```ts ignore
 * vm.add(virtioRng());
 * ```
 */
export class VirtioRng implements VirtioDevice {
  readonly deviceId = VIRTIO_ID.entropy;
  readonly kind = "rng";
  readonly features = 0n;
  readonly queueSizes = [64];
  readonly configSize = 0;
  /** Bytes handed to the guest so far. */
  bytesGiven = 0;
  #context: VirtioContext | undefined;

  readConfig(): number {
    return 0;
  }
  writeConfig(): void {}

  activate(context: VirtioContext): void {
    this.#context = context;
  }

  reset(): void {
    this.#context = undefined;
  }

  notify(): void {
    const context = this.#context;
    if (context === undefined) return;
    const queue = context.queues[0]!;
    queue.drain((chain) => {
      let left = Math.min(chain.writableLength, MAX_REQUEST);
      let given = 0;
      for (const view of queue.views(chain.writable)) {
        if (left === 0) break;
        const part = view.subarray(0, Math.min(view.length, left));
        getRandom(part);
        left -= part.length;
        given += part.length;
      }
      this.bytesGiven += given;
      return given;
    });
    context.usedBuffers(0);
  }

  describe(): string {
    return `host getrandom, ${this.bytesGiven} bytes given`;
  }

  get state(): Record<string, unknown> {
    return { bytesGiven: this.bytesGiven };
  }

  restore(state: Record<string, unknown>): void {
    this.bytesGiven = new StateReader("virtio-rng", state).integer("bytesGiven", 0, Number.MAX_SAFE_INTEGER);
  }

  close(): void {}
}

/** An entropy device for `vm.add()`. */
export function virtioRng(): VirtioRng {
  return new VirtioRng();
}
