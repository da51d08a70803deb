/**
 * virtio-net (virtio 1.2, section 5.1) over a host TAP device, offloads
 * off: no checksum or segmentation features, so every frame crosses whole,
 * behind the 12-byte `virtio_net_hdr` the device strips on transmit and
 * writes (zeroed) on receive. Receive waits for the TAP on Deno's pool
 * thread (bounded polls), so the guest and the event loop run meanwhile.
 *
 * @module
 */

import { TapDevice } from "../../core/kvm/host_io.ts";
import { readConfigSpace, VIRTIO_ID, type VirtioContext, type VirtioDevice } from "./device.ts";
import { StateReader } from "../_state.ts";

/** Feature bits (5.1.3). */
export const VIRTIO_NET_F = { mac: 1n << 5n, status: 1n << 16n } as const;
/** `struct virtio_net_hdr` with VERSION_1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const VIRTIO_NET_HDR_SIZE = 12;
const QUEUE_SIZE = 256;
const MAX_FRAME = 65536;
/** How long one wait for TAP input lasts before the loop looks at its state again. */
const POLL_MS = 50;

/** Options of {@link virtioNet}. */
export interface VirtioNetOptions {
  /** The TAP device to attach to (created when missing and the process may), or "auto" for a new tapN. */
  tap: string;
  /** The MAC address, "52:54:00:12:34:56" style (default a locally administered one). */
  mac?: string;
}

function parseMac(text: string): Uint8Array {
  const parts = text.split(":");
  if (parts.length !== 6 || !parts.every((part) => /^[0-9a-f]{2}$/i.test(part))) {
    throw new SyntaxError(`Invalid MAC address ${JSON.stringify(text)}: expected six hex bytes like 52:54:00:12:34:56`);
  }
  return new Uint8Array(parts.map((part) => parseInt(part, 16)));
}

/**
 * A network card on a TAP device.
 *
 * @example
 * ```ts ignore
 * vm.add(virtioNet({ tap: "tap0" }));
 * ```
 */
export class VirtioNet implements VirtioDevice {
  readonly deviceId = VIRTIO_ID.net;
  readonly kind = "net";
  readonly features = VIRTIO_NET_F.mac | VIRTIO_NET_F.status;
  readonly queueSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly configSize = 8;
  readonly mac: Uint8Array;
  readonly tap: TapDevice;
  readonly counters = { rxFrames: 0, txFrames: 0, rxDropped: 0 };
  #context: VirtioContext | undefined;
  /** A frame read from the TAP that waits for a receive buffer. */
  #pending: Uint8Array | undefined;
  readonly #buffer = new Uint8Array(MAX_FRAME);
  #loop: Promise<void>;
  #closed = false;

  constructor(options: VirtioNetOptions) {
    if (typeof options?.tap !== "string" || options.tap === "") {
      throw new TypeError(`Invalid virtio-net tap ${JSON.stringify(options?.tap)}: expected a TAP name or "auto"`);
    }
    this.mac = parseMac(options.mac ?? "52:54:00:12:34:56");
    this.tap = TapDevice.open(options.tap === "auto" ? "" : options.tap);
    this.#loop = this.#receiveLoop();
  }

  readConfig(offset: number, size: number): number {
    const config = new Uint8Array(8);
    config.set(this.mac);
    config[6] = 1; // VIRTIO_NET_S_LINK_UP
    return readConfigSpace(config, offset, size);
  }

  writeConfig(): void {}

  activate(context: VirtioContext): void {
    this.#context = context;
  }

  reset(): void {
    this.#context = undefined;
    this.#pending = undefined;
  }

  notify(queue: number): void {
    const context = this.#context;
    if (context === undefined) return;
    if (queue === 1) {
      const tx = context.queues[1]!;
      tx.drain((chain) => {
        const packet = tx.readAll(chain, VIRTIO_NET_HDR_SIZE + MAX_FRAME);
        if (packet.length > VIRTIO_NET_HDR_SIZE) {
          this.tap.write(packet.subarray(VIRTIO_NET_HDR_SIZE));
          this.counters.txFrames++;
        }
        return 0;
      });
      context.usedBuffers(1);
    }
    this.#deliver();
  }

  /** Moves TAP frames into receive buffers while both last. */
  #deliver(): void {
    const context = this.#context;
    if (context === undefined) return;
    const rx = context.queues[0]!;
    if (!rx.active) return;
    let pushed = false;
    for (;;) {
      if (this.#pending === undefined) {
        const length = this.tap.read(this.#buffer);
        if (length === 0) break;
        this.#pending = this.#buffer.slice(0, length);
      }
      const chain = rx.pop();
      if (chain === undefined) break;
      const frame = this.#pending;
      this.#pending = undefined;
      if (chain.writableLength < VIRTIO_NET_HDR_SIZE + frame.length) {
        this.counters.rxDropped++; // a buffer too small for the frame: dropped, as a NIC would
        rx.push(chain.head, 0);
        pushed = true;
        continue;
      }
      const header = new Uint8Array(VIRTIO_NET_HDR_SIZE);
      header[10] = 1; // num_buffers
      rx.writeAt(chain, 0, header);
      rx.writeAt(chain, VIRTIO_NET_HDR_SIZE, frame);
      rx.push(chain.head, VIRTIO_NET_HDR_SIZE + frame.length);
      this.counters.rxFrames++;
      pushed = true;
    }
    if (pushed) context.usedBuffers(0);
  }

  async #receiveLoop(): Promise<void> {
    while (!this.#closed) {
      const ready = this.#pending !== undefined || await this.tap.waitReadable(POLL_MS);
      if (this.#closed) return;
      if (!ready) continue;
      if (this.#context === undefined) {
        // No driver yet: frames are dropped, as on a link that is down.
        while (this.tap.read(this.#buffer) > 0) this.counters.rxDropped++;
        this.#pending = undefined;
        continue;
      }
      try {
        this.#deliver();
      } catch (error) {
        this.#context?.fail((error as Error).message);
      }
      // Receive buffers are full: wait for the driver to give more (its notify delivers) instead of spinning.
      if (this.#pending !== undefined) await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  describe(): string {
    const mac = [...this.mac].map((b) => b.toString(16).padStart(2, "0")).join(":");
    return `TAP ${this.tap.name}, MAC ${mac}, ${this.counters.txFrames} frames out, ${this.counters.rxFrames} in`;
  }

  get state(): Record<string, unknown> {
    return { mac: [...this.mac], tap: this.tap.name };
  }

  restore(state: Record<string, unknown>): void {
    const r = new StateReader("virtio-net", state);
    const mac = r.bytes("mac", 6, 6);
    if (mac.some((b, i) => b !== this.mac[i])) r.refuse("mac differs from this device's");
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#loop;
    this.tap.close();
  }
}

/** A network card for `vm.add()`. */
export function virtioNet(options: VirtioNetOptions): VirtioNet {
  return new VirtioNet(options);
}
