/**
 * virtio-console (virtio 1.2, section 5.3) with multiport: port 0 is the
 * console (Linux's hvc0) unless asked otherwise, further ports are named
 * (Linux's /dev/vportNpM, with the name in sysfs). Each port is a pair of
 * host-side streams: `port.readable` carries what the guest writes,
 * `port.writable` feeds the guest's input.
 *
 * @module
 */

import { readConfigSpace, VIRTIO_ID, type VirtioContext, type VirtioDevice } from "./device.ts";
import type { SplitQueue } from "./queue.ts";
import { StateReader, toBase64 } from "../_state.ts";

/** Feature bits (5.3.3). */
export const VIRTIO_CONSOLE_F = { size: 1n << 0n, multiport: 1n << 1n } as const;
/** Control message events (5.3.6.2). */
export const VIRTIO_CONSOLE = {
  deviceReady: 0,
  deviceAdd: 1,
  deviceRemove: 2,
  portReady: 3,
  consolePort: 4,
  resize: 5,
  portOpen: 6,
  portName: 7,
} as const;

const QUEUE_SIZE = 128;
/** Input held for a port whose guest side gives no buffers: beyond it, writers wait. */
const INPUT_LIMIT = 1 << 20;

/** One port: streams on the host side. */
export class ConsolePort {
  readonly id: number;
  readonly name: string | undefined;
  /** Everything the guest has written (also kept as `output` text, for tests and scripts). */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes written here reach the guest's input, as fast as it takes them. */
  readonly writable: WritableStream<Uint8Array>;
  /** True once the guest opened the port (PORT_OPEN from the driver). */
  guestOpen = false;
  #controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  #output = "";
  readonly #decoder = new TextDecoder();
  #input: Uint8Array[] = [];
  #inputBytes = 0;
  readonly #wake: () => void;
  #drained: (() => void) | undefined;
  readonly #listeners = new Set<(bytes: Uint8Array) => void>();

  constructor(id: number, name: string | undefined, wake: () => void) {
    this.id = id;
    this.name = name;
    this.#wake = wake;
    this.readable = new ReadableStream({ start: (controller) => void (this.#controller = controller) });
    this.writable = new WritableStream({
      write: async (chunk) => {
        this.send(chunk);
        while (this.#inputBytes > INPUT_LIMIT) await new Promise<void>((resolve) => (this.#drained = resolve));
      },
    });
  }

  /** The guest's output so far, as text. */
  get output(): string {
    return this.#output;
  }

  /** Calls `listener` with each chunk the guest writes. Returns a function that unsubscribes. */
  onData(listener: (bytes: Uint8Array) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /** Queues input for the guest (without waiting). */
  send(bytes: Uint8Array | string): void {
    const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes.slice();
    if (data.length === 0) return;
    this.#input.push(data);
    this.#inputBytes += data.length;
    this.#wake();
  }

  /** Bytes queued for the guest and not yet taken. */
  get pendingInput(): number {
    return this.#inputBytes;
  }

  /** @internal the device hands over guest output. */
  deliver(bytes: Uint8Array): void {
    this.#output += this.#decoder.decode(bytes, { stream: true });
    try {
      this.#controller?.enqueue(bytes);
    } catch {
      // nobody reads the stream any more
    }
    for (const listener of this.#listeners) listener(bytes);
  }

  /** @internal the device takes up to `max` input bytes. */
  take(max: number): Uint8Array | undefined {
    const first = this.#input[0];
    if (first === undefined) return undefined;
    const part = first.subarray(0, max);
    if (part.length === first.length) this.#input.shift();
    else this.#input[0] = first.subarray(part.length);
    this.#inputBytes -= part.length;
    if (this.#inputBytes <= INPUT_LIMIT && this.#drained !== undefined) {
      const drained = this.#drained;
      this.#drained = undefined;
      drained();
    }
    return part;
  }

  /** @internal input for a snapshot. */
  get queuedInput(): Uint8Array {
    const out = new Uint8Array(this.#inputBytes);
    let at = 0;
    for (const chunk of this.#input) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  }

  /** @internal */
  close(): void {
    try {
      this.#controller?.close();
    } catch {
      // already closed
    }
  }
}

/** Options of {@link virtioConsole}. */
export interface VirtioConsoleOptions {
  /** A named port (not a console): `virtioConsole({ name: "ctl" })`. */
  name?: string;
  /** Further named ports. */
  ports?: string[];
  /** Whether port 0 is a console (hvc0). Default: true when no `name` is given. */
  console?: boolean;
  /** The console size announced (columns, rows). */
  size?: { cols: number; rows: number };
}

/**
 * A multiport virtio console.
 *
 * @example
 * ```ts ignore
 * const hvc = virtioConsole();
 * vm.add(hvc);
 * hvc.port(0).onData((bytes) => Deno.stdout.writeSync(bytes));
 * ```
 */
export class VirtioConsole implements VirtioDevice {
  readonly deviceId = VIRTIO_ID.console;
  readonly kind = "console";
  readonly features = VIRTIO_CONSOLE_F.multiport | VIRTIO_CONSOLE_F.size;
  readonly queueSizes: number[];
  readonly configSize = 12;
  readonly ports: ConsolePort[];
  readonly consolePort: boolean;
  readonly #size: { cols: number; rows: number };
  #context: VirtioContext | undefined;
  #multiport = false;
  #control: Uint8Array[] = [];

  constructor(options: VirtioConsoleOptions = {}) {
    this.consolePort = options.console ?? options.name === undefined;
    const names = [options.name, ...(options.ports ?? [])];
    if (names.length > 31) throw new RangeError(`Invalid virtio-console: ${names.length} ports, at most 31`);
    this.ports = names.map((name, id) => new ConsolePort(id, name, () => this.#pump()));
    // rx/tx of port 0, the control pair, then rx/tx of each further port (5.3.2).
    this.queueSizes = Array.from({ length: 2 * (this.ports.length + 1) }, () => QUEUE_SIZE);
    this.#size = options.size ?? { cols: 80, rows: 25 };
  }

  /** Port `id`. */
  port(id = 0): ConsolePort {
    const port = this.ports[id];
    if (port === undefined) throw new RangeError(`No console port ${id}: this device has ${this.ports.length}`);
    return port;
  }

  readConfig(offset: number, size: number): number {
    const config = new Uint8Array(12);
    const view = new DataView(config.buffer);
    view.setUint16(0, this.#size.cols, true);
    view.setUint16(2, this.#size.rows, true);
    view.setUint32(4, this.ports.length, true);
    return readConfigSpace(config, offset, size);
  }

  /** emerg_wr: a byte written there is console output even before the queues work. */
  writeConfig(offset: number, _size: number, value: number): void {
    if (offset === 8) this.ports[0]?.deliver(new Uint8Array([value & 0xff]));
  }

  activate(context: VirtioContext): void {
    this.#context = context;
    this.#multiport = (context.features & VIRTIO_CONSOLE_F.multiport) !== 0n;
    this.#control = [];
    if (!this.#multiport) this.ports[0]!.guestOpen = true;
    this.#pump();
  }

  reset(): void {
    this.#context = undefined;
    this.#control = [];
    for (const port of this.ports) port.guestOpen = false;
  }

  #queues(id: number): { rx: number; tx: number } {
    return id === 0 ? { rx: 0, tx: 1 } : { rx: 2 * (id + 1), tx: 2 * (id + 1) + 1 };
  }

  notify(queue: number): void {
    const context = this.#context;
    if (context === undefined) return;
    if (queue === 3 && this.#multiport) {
      this.#controlIn(context.queues[3]!);
      context.usedBuffers(3);
    } else if (queue % 2 === 1 && queue !== 3) {
      const id = queue === 1 ? 0 : (queue - 1) / 2 - 1;
      const port = this.ports[id];
      const q = context.queues[queue]!;
      q.drain((chain) => {
        port?.deliver(q.readAll(chain));
        return 0;
      });
      context.usedBuffers(queue);
    }
    this.#pump();
  }

  /** Control messages from the driver. */
  #controlIn(queue: SplitQueue): void {
    do {
      for (let chain = queue.pop(); chain !== undefined; chain = queue.pop()) {
        const message = queue.readAll(chain, 8);
        queue.push(chain.head, 0);
        if (message.length < 8) continue;
        const view = new DataView(message.buffer);
        const id = view.getUint32(0, true);
        const event = view.getUint16(4, true);
        const value = view.getUint16(6, true);
        if (event === VIRTIO_CONSOLE.deviceReady && value === 1) {
          for (const port of this.ports) this.#sendControl(port.id, VIRTIO_CONSOLE.deviceAdd, 1);
        } else if (event === VIRTIO_CONSOLE.portReady && value === 1) {
          const port = this.ports[id];
          if (port === undefined) continue;
          if (id === 0 && this.consolePort) this.#sendControl(id, VIRTIO_CONSOLE.consolePort, 1);
          if (port.name !== undefined) this.#sendControl(id, VIRTIO_CONSOLE.portName, 1, port.name);
          this.#sendControl(id, VIRTIO_CONSOLE.portOpen, 1);
        } else if (event === VIRTIO_CONSOLE.portOpen) {
          const port = this.ports[id];
          if (port !== undefined) port.guestOpen = value === 1;
        }
      }
    } while (queue.hasMore());
  }

  #sendControl(id: number, event: number, value: number, name?: string): void {
    const text = name === undefined ? new Uint8Array(0) : new TextEncoder().encode(name);
    const message = new Uint8Array(8 + text.length);
    const view = new DataView(message.buffer);
    view.setUint32(0, id, true);
    view.setUint16(4, event, true);
    view.setUint16(6, value, true);
    message.set(text, 8);
    this.#control.push(message);
  }

  /** Moves pending control messages and port input into the guest's receive buffers. */
  #pump(): void {
    const context = this.#context;
    if (context === undefined) return;
    try {
      if (this.#multiport && this.#control.length > 0) {
        const queue = context.queues[2]!;
        if (queue.active) {
          while (this.#control.length > 0) {
            const chain = queue.pop();
            if (chain === undefined) break;
            const message = this.#control.shift()!;
            queue.push(chain.head, queue.writeAt(chain, 0, message));
          }
          context.usedBuffers(2);
        }
      }
      for (const port of this.ports) {
        if (!port.guestOpen || port.pendingInput === 0) continue;
        const index = this.#queues(port.id).rx;
        const queue = context.queues[index]!;
        if (!queue.active) continue;
        let pushed = false;
        while (port.pendingInput > 0) {
          const chain = queue.pop();
          if (chain === undefined) break;
          let written = 0;
          for (let part = port.take(chain.writableLength - written); part !== undefined;) {
            written += queue.writeAt(chain, written, part);
            if (written >= chain.writableLength) break;
            part = port.take(chain.writableLength - written);
          }
          queue.push(chain.head, written);
          pushed = true;
        }
        if (pushed) context.usedBuffers(index);
      }
    } catch (error) {
      context.fail((error as Error).message);
    }
  }

  describe(): string {
    return this.ports.map((port) =>
      `port ${port.id}${port.id === 0 && this.consolePort ? " (console)" : ""}${
        port.name === undefined ? "" : ` "${port.name}"`
      }${port.guestOpen ? " open" : ""}`
    ).join(", ");
  }

  get state(): Record<string, unknown> {
    return {
      ports: this.ports.map((port) => ({ guestOpen: port.guestOpen, input: toBase64(port.queuedInput) })),
      control: this.#control.map((message) => toBase64(message)),
    };
  }

  restore(state: Record<string, unknown>): void {
    const r = new StateReader("virtio-console", state);
    const ports = r.array("ports", this.ports.length, this.ports.length);
    const parsed = ports.map((_, i) => {
      const port = r.element("ports", i);
      return { guestOpen: port.boolean("guestOpen"), input: port.base64("input", 0, INPUT_LIMIT * 4) };
    });
    const control = r.array("control", 0, 1024).map((_, i) => {
      const text = (state.control as unknown[])[i];
      if (typeof text !== "string") r.typeError(`control[${i}]`, text, "base64 text");
      return new StateReader("virtio-console", { message: text }).base64("message", 8, 8 + 256);
    });
    parsed.forEach((port, i) => {
      const target = this.ports[i]!;
      target.guestOpen = port.guestOpen;
      while (target.take(1 << 30) !== undefined) { /* drop what was queued */ }
      target.send(port.input);
    });
    this.#control = control;
  }

  close(): void {
    for (const port of this.ports) port.close();
  }
}

/** A virtio console for `vm.add()`. */
export function virtioConsole(options: VirtioConsoleOptions = {}): VirtioConsole {
  return new VirtioConsole(options);
}
