/**
 * An expect-style reader over a serial port's output, as a test or a
 * provisioning script wants it: `expect(pattern)` waits for the pattern in
 * the text not read yet and moves a cursor past the match, so text already
 * consumed is never matched again; every wait rejects as soon as the machine
 * stops (naming the stop) instead of running into its timeout.
 *
 * The reader sees the port's bytes through its `onData` subscription and
 * keeps its own transcript; it never reads the device's internals.
 *
 * @module
 */

import { describeStop, type StopEvent } from "../core/stop.ts";

/** How much text {@link SerialReader.transcript} keeps (text before the cursor goes first). */
const TRANSCRIPT_LIMIT = 4 << 20;
/** Default timeout of a wait, in milliseconds. */
const DEFAULT_TIMEOUT_MS = 10_000;
/** Characters of output a failed wait quotes. */
const QUOTED_OUTPUT = 400;

/** Options of a wait. */
export interface ExpectOptions {
  /** Milliseconds before the wait rejects. Default 10 000. */
  timeout?: number;
}

/** Options of {@link SerialReader.exec}. */
export interface ExecOptions extends ExpectOptions {
  /**
   * The shell's prompt, which ends the command's output: a RegExp, or a
   * string matched literally. Default: a last line that ends in `$ `, `# `
   * or `> ` with nothing after it yet (`/(?:^|\n)[^\n]*[$#>] $/`).
   */
  prompt?: RegExp | string;
}

const DEFAULT_PROMPT = /(?:^|\n)[^\n]*[$#>] $/;

/** What the reader listens to: the port's bytes. */
export interface SerialSource {
  /** Calls `observer` with each chunk of bytes the guest transmits; returns an unsubscribe function. */
  onData(observer: (bytes: Uint8Array) => void): () => void;
}

/** The machine the port belongs to, as far as waits care: whether it runs, and its stops. `Vm` is one. */
export interface StopSource {
  /** True while the guest runs. */
  readonly running: boolean;
  /** Calls `observer` on every stop; returns an unsubscribe function. */
  onStop(observer: (stop: StopEvent) => void): () => void;
  /** Calls `closer` when the machine closes. */
  onClose?(closer: () => void): () => void;
}

/**
 * Why a wait on the serial port failed: `"timeout"`, `"stopped"` (the guest
 * stopped first; {@link stop} says how) or `"closed"` (the VM was closed).
 */
export class SerialWaitError extends Error {
  /** What ended the wait. */
  readonly reason: "timeout" | "stopped" | "closed";
  /** The stop that ended the wait (reason "stopped"). */
  readonly stop: StopEvent | undefined;
  /** The text received since the cursor (the tail of it, when long). */
  readonly unread: string;

  constructor(message: string, reason: "timeout" | "stopped" | "closed", unread: string, stop?: StopEvent) {
    super(message);
    this.name = "SerialWaitError";
    this.reason = reason;
    this.unread = unread;
    this.stop = stop;
  }
}

interface Waiter {
  /** Tries to complete the wait on the current text; true when it did. */
  attempt(): boolean;
  fail(reason: "stopped" | "closed", why: string, stop?: StopEvent): void;
}

function toRegExp(pattern: RegExp | string): RegExp {
  if (typeof pattern === "string") return new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  // g and y make exec() stateful (lastIndex): matching here always starts at the cursor instead.
  return pattern.global || pattern.sticky ? new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, "")) : pattern;
}

function quote(text: string): string {
  return JSON.stringify(text.length > QUOTED_OUTPUT ? "…" + text.slice(-QUOTED_OUTPUT) : text);
}

/**
 * The reader behind `vm.serial.expect()`, `expectAll()`, `readLine()`,
 * `transcript` and `waitFor()`.
 *
 * @example
 * ```ts
 * import { Serial16550 } from "./serial.ts";
 * const uart = new Serial16550();
 * for (const byte of new TextEncoder().encode("boot ok\n$ ")) uart.write(0, 1, byte);
 * await uart.expect("boot ok"); // consumed: a second expect("boot ok") would wait for new text
 * await uart.expect("$ ");
 * uart.transcript; // "boot ok\n$ "
 * ```
 */
export class SerialReader {
  #decoder = new TextDecoder();
  /** The kept transcript; `#text[0]` is character number `#base` of everything received. */
  #text = "";
  #base = 0;
  /** Absolute position of the cursor (characters received before it are consumed). */
  #cursor = 0;
  #waiters: Waiter[] = [];
  #checkScheduled = false;
  #machine: StopSource | undefined;
  #stopped: StopEvent | undefined;
  #closed = false;
  readonly #wholeOutput: () => string;

  /**
   * Reads `source`; `wholeOutput` gives the text {@link waitFor} matches
   * (the port's captured output).
   */
  constructor(source: SerialSource, wholeOutput: () => string) {
    source.onData((bytes) => this.#receive(bytes));
    this.#wholeOutput = wholeOutput;
  }

  /**
   * Ties waits to a machine: a pending wait rejects when it stops or
   * closes, and a wait begun while it stands stopped rejects at once unless
   * the text is already there. Before the first run, waits simply wait.
   */
  watchStops(machine: StopSource): void {
    this.#machine = machine;
    machine.onStop((stop) => this.#onStop(stop));
    machine.onClose?.(() => this.#onClose());
  }

  /** Everything received (the last 4 MiB of it, consumed text dropped first). */
  get transcript(): string {
    return this.#text;
  }

  /** The text received after the cursor, not consumed by any wait yet. */
  get unread(): string {
    return this.#text.slice(Math.max(0, this.#cursor - this.#base));
  }

  /**
   * Waits until `pattern` (a RegExp, or a string matched literally) occurs
   * in the text after the cursor, then moves the cursor past the match.
   * Rejects with a {@link SerialWaitError} after `timeout` ms, or as soon as
   * the machine stops or closes first.
   */
  expect(pattern: RegExp | string, options: ExpectOptions = {}): Promise<RegExpExecArray> {
    const regex = toRegExp(pattern);
    return this.#wait(`${regex}`, options, () => {
      const from = this.#cursor - this.#base;
      const match = regex.exec(this.#text.slice(from));
      if (match === null) return undefined;
      this.#cursor += match.index + match[0].length;
      return match;
    });
  }

  /**
   * Waits until every pattern occurs after the cursor, in any order (each
   * matched on its own from the cursor), then moves the cursor past the
   * match that ends last. Resolves with the matches in the order given.
   */
  expectAll(patterns: readonly (RegExp | string)[], options: ExpectOptions = {}): Promise<RegExpExecArray[]> {
    const regexes = patterns.map(toRegExp);
    return this.#wait(`all of ${regexes.join(", ")}`, options, () => {
      const unread = this.#text.slice(this.#cursor - this.#base);
      const matches: RegExpExecArray[] = [];
      for (const regex of regexes) {
        const match = regex.exec(unread);
        if (match === null) return undefined;
        matches.push(match);
      }
      this.#cursor += Math.max(0, ...matches.map((m) => m.index + m[0].length));
      return matches;
    });
  }

  /** Waits for the next whole line after the cursor and consumes it; resolves without its "\n" (or "\r\n"). */
  async readLine(options: ExpectOptions = {}): Promise<string> {
    const match = await this.#wait("a line", options, () => {
      const from = this.#cursor - this.#base;
      const end = this.#text.indexOf("\n", from);
      if (end < 0) return undefined;
      this.#cursor = this.#base + end + 1;
      return this.#text.slice(from, end);
    });
    return match.endsWith("\r") ? match.slice(0, -1) : match;
  }

  /**
   * Runs `command` at a shell on the port (console automation, as expect
   * scripts do it): `send`s the command and a newline, waits for the echo,
   * then for the next prompt, and resolves with what the command printed in
   * between: line ends as "\n", without the echo, the prompt or the final
   * line end. `timeout` covers the whole exchange; a timeout or a stop
   * rejects as {@link expect} does, with the output so far in the error.
   */
  async exec(command: string, send: (text: string) => void, options: ExecOptions = {}): Promise<string> {
    if (/[\r\n]/.test(command)) {
      throw new RangeError(`Cannot exec ${JSON.stringify(command)}: one line at a time (no CR or LF)`);
    }
    const deadline = performance.now() + (options.timeout ?? DEFAULT_TIMEOUT_MS);
    const left = () => ({ timeout: Math.max(0, deadline - performance.now()) });
    const prompt = toRegExp(options.prompt ?? DEFAULT_PROMPT);
    send(`${command}\n`);
    await this.expect(command, left());
    const reply = await this.expect(new RegExp(`([\\s\\S]*?)(?:${prompt.source})`, prompt.flags), left());
    return reply[1]!.replace(/\r\n/g, "\n").replace(/^\n/, "").replace(/\r?\n?$/, "");
  }

  /**
   * Waits until `pattern` matches the port's whole captured output (all of
   * it since boot or the last `clearOutput()`, consumed or not) and leaves
   * the cursor alone: a second `waitFor()` of the same text resolves at once.
   * Rejects like {@link expect}.
   */
  waitFor(pattern: RegExp | string, options: ExpectOptions = {}): Promise<RegExpMatchArray> {
    const regex = toRegExp(pattern);
    return this.#wait(`${regex}`, options, () => this.#wholeOutput().match(regex) ?? undefined);
  }

  #wait<T>(what: string, options: ExpectOptions, attempt: () => T | undefined): Promise<T> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    if (!(timeout >= 0)) return Promise.reject(new RangeError(`Invalid timeout ${timeout}: expected ms >= 0`));
    return new Promise<T>((resolve, reject) => {
      const settle = () => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
      };
      const waiter: Waiter = {
        attempt: () => {
          const result = attempt();
          if (result === undefined) return false;
          settle();
          resolve(result);
          return true;
        },
        fail: (reason, why, stop) => {
          settle();
          reject(
            new SerialWaitError(
              `Cannot wait for ${what} on the serial port: ${why}; unread output: ${quote(this.unread)}`,
              reason,
              this.unread,
              stop,
            ),
          );
        },
      };
      const timer = setTimeout(() => {
        settle();
        reject(
          new SerialWaitError(
            `Timed out after ${timeout} ms waiting for ${what} on the serial port; unread output: ${
              quote(this.unread)
            }`,
            "timeout",
            this.unread,
          ),
        );
      }, timeout);
      if (waiter.attempt()) return;
      this.#waiters.push(waiter);
      if (this.#closed) waiter.fail("closed", "the VM is closed");
      else if (this.#stopped !== undefined && this.#machine?.running === false) {
        waiter.fail("stopped", `the VM has stopped: ${describeStop(this.#stopped)}`, this.#stopped);
      }
    });
  }

  #receive(bytes: Uint8Array): void {
    this.#text += this.#decoder.decode(bytes, { stream: true });
    if (this.#text.length > TRANSCRIPT_LIMIT) {
      const drop = Math.max(this.#text.length - TRANSCRIPT_LIMIT / 2, 0);
      this.#text = this.#text.slice(drop);
      this.#base += drop;
      this.#cursor = Math.max(this.#cursor, this.#base);
    }
    // Bytes arrive one per guest exit; match once per turn of the event loop, not once per byte.
    if (this.#waiters.length > 0 && !this.#checkScheduled) {
      this.#checkScheduled = true;
      queueMicrotask(() => this.#check());
    }
  }

  #check(): void {
    this.#checkScheduled = false;
    // In the order the waits were made, so an earlier one consumes first.
    for (const waiter of [...this.#waiters]) waiter.attempt();
  }

  #onStop(stop: StopEvent): void {
    this.#stopped = stop;
    // Text that arrived just before the stop completes waits first.
    this.#check();
    const why = `the VM stopped first: ${describeStop(stop)}`;
    for (const waiter of [...this.#waiters]) waiter.fail("stopped", why, stop);
  }

  #onClose(): void {
    this.#closed = true;
    this.#check();
    for (const waiter of [...this.#waiters]) waiter.fail("closed", "the VM was closed");
  }
}
