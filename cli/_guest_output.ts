// Internal to cli/: copies the guest's COM1 output to stdout without ever
// blocking the event loop (a reader that never reads must not stop --timeout or
// signals from being handled), with a bound on what waits to be written, and
// without throwing when stdout is closed or full.

/** Where the output goes: `Deno.stdout`, or a test's writer. */
export interface OutputWriter {
  write(bytes: Uint8Array): Promise<number>;
}

/** Options of {@linkcode GuestOutput}. */
export interface GuestOutputOptions {
  /** Pending bytes above which `onCongested` is called (the caller pauses the guest). Default 1 MiB. */
  highWaterBytes?: number;
  /** Pending bytes above which output is dropped (counted in `dropped`) instead of queued. Default 16 MiB. */
  maxPendingBytes?: number;
  /** Called once each time the pending output crosses `highWaterBytes`. */
  onCongested?: () => void;
  /** Called once when a write fails (EPIPE, ENOSPC, EIO...); later output is dropped. */
  onFailed?: (error: Error) => void;
}

/** The guest's output on its way to a writer: batched per turn of the event loop, written asynchronously. */
export class GuestOutput {
  readonly #writer: OutputWriter;
  readonly #highWater: number;
  readonly #maxPending: number;
  readonly #onCongested: (() => void) | undefined;
  readonly #onFailed: ((error: Error) => void) | undefined;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #pumping = false;
  #scheduled = false;
  #congested = false;
  #drainWaiters: (() => void)[] = [];
  /** The write error that ended the output, if any. */
  failure: Error | undefined;
  /** Bytes never written: dropped after a failure or above `maxPendingBytes`. */
  dropped = 0;

  constructor(writer: OutputWriter, options: GuestOutputOptions = {}) {
    this.#writer = writer;
    this.#highWater = options.highWaterBytes ?? 1 << 20;
    this.#maxPending = options.maxPendingBytes ?? 16 << 20;
    this.#onCongested = options.onCongested;
    this.#onFailed = options.onFailed;
  }

  /** Bytes waiting to be written (including a write in progress). */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /** True while more than `highWaterBytes` wait: the reader is slower than the guest. */
  get congested(): boolean {
    return this.#congested;
  }

  /** Queues bytes the guest sent. */
  push(bytes: Uint8Array): void {
    if (this.failure !== undefined || this.#pendingBytes + bytes.length > this.#maxPending) {
      this.dropped += bytes.length;
      return;
    }
    this.#pending.push(bytes);
    this.#pendingBytes += bytes.length;
    if (!this.#congested && this.#pendingBytes > this.#highWater) {
      this.#congested = true;
      this.#onCongested?.();
    }
    if (!this.#pumping && !this.#scheduled) {
      // One write per stretch of synchronous guest run, not one syscall per byte: the run loop runs the guest
      // synchronously between awaits (each ~10 ms tick, each stop), and a microtask waits for the next one. Not
      // setTimeout(0): the first touch of Deno's timers costs a cold `hvsh boot` ~6 ms and 3.6 MiB, which a guest
      // that ends before the run loop's first tick never needs otherwise.
      this.#scheduled = true;
      queueMicrotask(() => {
        this.#scheduled = false;
        void this.#pump();
      });
    }
  }

  async #pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#pending.length > 0 && this.failure === undefined) {
        const batch = concat(this.#pending);
        this.#pending = [];
        let written = 0;
        try {
          while (written < batch.length) written += await this.#writer.write(batch.subarray(written));
        } catch (error) {
          this.failure = error instanceof Error ? error : new Error(String(error));
          this.dropped += this.#pendingBytes - written;
          this.#pending = [];
          this.#pendingBytes = 0;
          this.#onFailed?.(this.failure);
          break;
        }
        this.#pendingBytes -= batch.length;
        if (this.#congested && this.#pendingBytes <= this.#highWater / 2) this.#congested = false;
      }
    } finally {
      this.#pumping = false;
    }
    if (this.#pendingBytes === 0) {
      this.#congested = false;
      for (const resolve of this.#drainWaiters.splice(0)) resolve();
    }
  }

  /**
   * Resolves true once everything queued is written (or a write failed),
   * false if `deadline` (performance.now() ms) or `signal` comes first.
   */
  drained(deadline = Infinity, signal?: AbortSignal): Promise<boolean> {
    if (this.#pendingBytes === 0 || this.failure !== undefined) return Promise.resolve(true);
    if (!this.#pumping && !this.#scheduled) void this.#pump();
    return new Promise((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const finish = (value: boolean) => {
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve(value);
      };
      const onAbort = () => finish(false);
      this.#drainWaiters.push(() => finish(true));
      if (deadline !== Infinity) timer = setTimeout(() => finish(false), Math.max(0, deadline - performance.now()));
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}

function concat(chunks: Uint8Array[]): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(chunks.reduce((n, chunk) => n + chunk.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}
