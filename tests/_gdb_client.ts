/**
 * A GDB stand-in speaking raw bytes over a real socket (TCP or Unix), and
 * ways to make a peer reset its connection as a dying or hostile client
 * does (SO_LINGER 0: the kernel sends RST instead of FIN). Shared by the
 * gdb protocol tests and the gdb-packets fuzz target.
 *
 * @module
 */

import assert from "node:assert/strict";
import net from "node:net";
import { bytesToText, checksum, encodePacket, textToBytes } from "../core/gdb/protocol.ts";

/** Expands a reply's run-length encoding (`c*N`: N - 29 more copies of c), as gdb does. */
export function expandRunLength(body: string): string {
  let out = "";
  for (let i = 0; i < body.length; i++) {
    if (body[i] === "*" && out.length > 0 && i + 1 < body.length) {
      out += out.at(-1)!.repeat(body.charCodeAt(++i) - 29);
    } else {
      out += body[i];
    }
  }
  return out;
}

/** A GDB stand-in speaking raw bytes: what it writes and reads is exactly what crosses the socket. */
export class RawClient {
  readonly #conn: Deno.Conn;
  #buffer = "";
  #eof = false;
  #pending: Promise<number | null> | undefined;
  readonly #chunk = new Uint8Array(65536);

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** Connects to a server's TCP port (on 127.0.0.1) or Unix socket path. */
  static async connect(server: { port?: number | undefined; path?: string | undefined }): Promise<RawClient> {
    if (server.path !== undefined) return new RawClient(await Deno.connect({ transport: "unix", path: server.path }));
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port! });
    conn.setNoDelay(true);
    return new RawClient(conn);
  }

  /** Writes `raw` (one char per byte) in one write where the kernel takes it all. */
  async write(raw: string | Uint8Array): Promise<void> {
    const bytes = typeof raw === "string" ? textToBytes(raw) : raw;
    let done = 0;
    while (done < bytes.length) done += await this.#conn.write(bytes.subarray(done));
  }

  /** Sends a framed packet. */
  send(payload: string): Promise<void> {
    return this.write(bytesToText(encodePacket(payload)));
  }

  /** Waits until `end(buffer)` finds an end index, then consumes and returns that much. */
  async take(end: (buffer: string) => number | undefined, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = end(this.#buffer);
      if (at !== undefined) {
        const out = this.#buffer.slice(0, at);
        this.#buffer = this.#buffer.slice(at);
        return out;
      }
      if (this.#eof) throw new Error(`connection closed; buffer ${JSON.stringify(this.#buffer)}`);
      await this.#fill(deadline);
    }
  }

  async #fill(deadline: number): Promise<void> {
    this.#pending ??= this.#conn.read(this.#chunk).catch(() => null);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) =>
      timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()))
    );
    const result = await Promise.race([this.#pending, timeout]);
    clearTimeout(timer);
    if (result === "timeout") throw new Error(`timed out; buffer ${JSON.stringify(this.#buffer)}`);
    this.#pending = undefined;
    if (result === null) this.#eof = true;
    else this.#buffer += bytesToText(this.#chunk.slice(0, result));
  }

  /** Drops whatever has been received and not consumed. */
  discard(): void {
    this.#buffer = "";
  }

  /** The next byte. */
  byte(timeoutMs?: number): Promise<string> {
    return this.take((b) => b.length > 0 ? 1 : undefined, timeoutMs);
  }

  /** Everything up to the end of the next packet, as received (acks included). */
  rawPacket(timeoutMs?: number): Promise<string> {
    return this.take((b) => {
      const hash = b.indexOf("#");
      return hash >= 0 && b.length >= hash + 3 ? hash + 3 : undefined;
    }, timeoutMs);
  }

  /** The next packet's payload (checksum verified), skipping acks before it. */
  async packet(timeoutMs?: number): Promise<string> {
    const raw = await this.take((b) => {
      const start = b.indexOf("$");
      const hash = b.indexOf("#", start);
      return start >= 0 && hash >= 0 && b.length >= hash + 3 ? hash + 3 : undefined;
    }, timeoutMs);
    const start = raw.indexOf("$");
    assert.match(raw.slice(0, start), /^\+*$/, `only acks before a packet: ${JSON.stringify(raw)}`);
    const body = raw.slice(start + 1, -3);
    assert.equal(raw.slice(-2), checksum(textToBytes(body)).toString(16).padStart(2, "0"), `checksum of ${raw}`);
    return expandRunLength(body);
  }

  /** Sends a packet in ack mode: expects `+`, returns the reply (acked). */
  async ask(payload: string, timeoutMs?: number): Promise<string> {
    await this.send(payload);
    assert.equal(await this.byte(timeoutMs), "+", `ack for ${payload}`);
    const reply = await this.packet(timeoutMs);
    await this.write("+");
    return reply;
  }

  /** Resolves true once the peer has closed the connection. */
  async closedByPeer(timeoutMs = 10_000): Promise<boolean> {
    try {
      await this.take(() => undefined, timeoutMs);
    } catch (error) {
      return /connection closed/.test((error as Error).message);
    }
    return false;
  }

  /** Closes the connection (FIN). Safe to call twice. */
  close(): void {
    try {
      this.#conn.close();
    } catch {
      // closed already
    }
  }
}

/**
 * Connects to 127.0.0.1:`port`, writes `bytes`, then resets the connection
 * (RST, as a client killed mid-packet or one with SO_LINGER 0 leaves it).
 * Resolves once the RST is sent (or the connection failed).
 */
export function sendThenReset(port: number, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => {
      socket.write(bytes, () => {
        socket.resetAndDestroy();
        resolve();
      });
    });
    socket.on("error", () => resolve());
    socket.on("close", () => resolve());
  });
}

const RESET_CLIENT = new URL("./_reset_client.ts", import.meta.url).pathname;

/**
 * Makes `count` connections to 127.0.0.1:`port` that another process resets
 * (SO_LINGER 0) before this process accepts them: this thread is blocked
 * (not running its event loop) until that process has reset them all, so
 * each reaches `accept()` already reset, which Deno reports as
 * `NotConnected (os error 107)`.
 */
export async function resetBeforeAccept(port: number, count: number, timeoutMs = 30_000): Promise<void> {
  const doneFile = await Deno.makeTempFile({ prefix: "hvsh-reset-" });
  await Deno.remove(doneFile);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      `--allow-write=${doneFile}`,
      RESET_CLIENT,
      String(port),
      String(count),
      doneFile,
    ],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  // Block this thread (so nothing is accepted meanwhile) until the child says it is done; Atomics.wait
  // pauses between looks without spinning.
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + timeoutMs;
  let done = false;
  while (!done && Date.now() < deadline) {
    try {
      Deno.statSync(doneFile);
      done = true;
    } catch {
      Atomics.wait(nap, 0, 0, 2);
    }
  }
  const status = await child.status;
  await Deno.remove(doneFile).catch(() => {});
  if (!done || !status.success) throw new Error(`the reset client did not finish (status ${status.code})`);
}
