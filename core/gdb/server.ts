/**
 * The gdb server: listens on TCP (default 127.0.0.1) or a Unix socket and
 * runs one {@link GdbStub} per connection, one connection at a time.
 *
 * - A second client while one is attached gets one `E` packet saying so and
 *   is disconnected; the first stays. (It waits up to a second first: a
 *   client that has just hung up may not have been seen leaving yet.)
 * - A connection reset before it is accepted is skipped; the server goes on.
 * - A client that disconnects (or dies) mid-command leaves the VM paused and
 *   usable; its breakpoints and watchpoints are removed.
 * - `detach` lets the guest run on; the server keeps listening.
 * - `kill` stops the guest and closes the server: {@link GdbServer.closed}
 *   resolves with `"killed"`.
 *
 * The server lives on hvsh's main thread with the run loop, which yields to
 * the event loop every few milliseconds while the guest runs, so GDB's
 * packets (and Ctrl-C) are read while the guest runs.
 *
 * @example
 * ```ts ignore
 * import { listenGdb } from "./server.ts";
 * const vm = await Vm.create();
 * await vm.load("tests/guests/build/dbg64.elf");
 * const server = listenGdb(vm, { port: 1234 });
 * // $ gdb -ex 'file tests/guests/build/dbg64.elf' -ex 'target remote 127.0.0.1:1234'
 * console.log(await server.closed); // "killed" after gdb's `kill`
 * ```
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import { Debugger } from "../debug/debugger.ts";
import type { StopEvent } from "../stop.ts";
import { encodePacket } from "./protocol.ts";
import { GdbStub } from "./stub.ts";
import { VmTarget } from "./target.ts";
import type { MonitorRegistry } from "./monitor.ts";
import { unixSocketState } from "../kvm/unix_socket.ts";

/** Options of {@link listenGdb}. */
export interface GdbListenOptions {
  /** TCP address to bind. Default 127.0.0.1 (only this host can connect). */
  host?: string;
  /** TCP port; 0 picks a free one (read it from {@link GdbServer.port}). Default 1234. */
  port?: number;
  /**
   * A Unix socket path instead of TCP. A stale socket file there (nobody
   * listening) is replaced; a socket another program listens on is refused.
   */
  path?: string;
  /** Monitor commands; default the shared registry (see monitor.ts). */
  monitor?: MonitorRegistry;
  /**
   * Whether `monitor js` may run JavaScript in hvsh's process. Default false:
   * anyone who can connect (on a shared host, every local user, even on
   * loopback) could run code as hvsh, which often runs as root.
   */
  allowJs?: boolean;
  /** One line per packet in and out, for debugging. */
  log?: (line: string) => void;
}

/** Why a server closed: `close()` was called, or GDB killed the VM. */
export type GdbServerEnd = "closed" | "killed";

/** A listening gdb server. */
export interface GdbServer {
  /** The TCP host bound (undefined for a Unix socket). */
  readonly host: string | undefined;
  /** The TCP port bound (undefined for a Unix socket). */
  readonly port: number | undefined;
  /** The Unix socket path (undefined for TCP). */
  readonly path: string | undefined;
  /** What to give GDB's `target remote`: `127.0.0.1:1234` or the socket path. */
  readonly address: string;
  /** True while a GDB is connected. */
  readonly connected: boolean;
  /** True once GDB has sent `kill` ({@link GdbServer.closed} resolves with `"killed"` once the server is down). */
  readonly killed: boolean;
  /** Resolves when the server stops listening. */
  readonly closed: Promise<GdbServerEnd>;
  /** Stops listening and drops the client (a guest GDB was running is paused). Safe to call twice. */
  close(): Promise<void>;
  /** `await using server = vm.gdb.listen()` closes it at scope exit. */
  [Symbol.asyncDispose](): Promise<void>;
  /** Calls `listener` when a client attaches (true) or goes (false). Returns an unsubscribe function. */
  onConnection(listener: (connected: boolean) => void): () => void;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** True when `host` only accepts connections from this machine. */
export function isLoopback(host: string): boolean {
  return LOOPBACK.test(host);
}

/**
 * Starts a gdb server for `vm`. Throws when the address cannot be bound
 * (the message names it).
 *
 * @example
 * ```ts ignore
 * const server = listenGdb(vm, { port: 0 });
 * console.log(`target remote ${server.address}`);
 * await server.close();
 * ```
 */
export function listenGdb(vm: Machine, options: GdbListenOptions = {}): GdbServer {
  let listener: Deno.Listener;
  const path = options.path;
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 1234;
  if (path !== undefined) {
    listener = listenUnix(path);
  } else {
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RangeError(`Invalid gdb port ${port}: expected 0-65535`);
    }
    try {
      listener = Deno.listen({ hostname: host, port });
    } catch (error) {
      throw new Error(`Cannot listen for gdb on ${host}:${port}: ${(error as Error).message}`, { cause: error });
    }
  }
  const allowJs = options.allowJs ?? false;
  const server = new Server(vm, listener, path, { ...options, allowJs });
  // The listener is the VM's resource too: closing the VM closes it.
  const forget = vm.onClose(() => server.close());
  void server.closed.then(forget);
  return server;
}

/** Listens on `path`, replacing a stale socket file there but refusing one another program listens on. */
function listenUnix(path: string): Deno.Listener {
  const fail = (why: string, cause?: unknown) =>
    new Error(`Cannot listen for gdb on Unix socket ${path}: ${why}`, cause === undefined ? {} : { cause });
  try {
    return Deno.listen({ transport: "unix", path });
  } catch (error) {
    const isSocket = (() => {
      try {
        return Deno.lstatSync(path).isSocket;
      } catch {
        return false;
      }
    })();
    if (!(error instanceof Deno.errors.AddrInUse) || !isSocket) throw fail((error as Error).message, error);
    let state;
    try {
      state = unixSocketState(path);
    } catch (probeError) {
      throw fail((probeError as Error).message, probeError);
    }
    if (state === "listening") {
      throw fail("another program is listening on it (left alone; choose another path or stop that program)");
    }
  }
  removeStaleSocket(path); // nobody listens: a server that died without removing it
  try {
    return Deno.listen({ transport: "unix", path });
  } catch (error) {
    throw fail((error as Error).message, error);
  }
}

function removeStaleSocket(path: string): void {
  try {
    if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
  } catch {
    // nothing there
  }
}

interface Client {
  conn: Deno.Conn;
  /** Set when the session starts (after the previous client's teardown). */
  target: VmTarget | undefined;
  stub: GdbStub | undefined;
  writing: Promise<void>;
  /** Resolves when the connection has ended (read EOF or error), before the teardown. */
  left: Promise<void>;
  hasLeft: () => void;
  /** Resolves when this client's session (and every earlier one) is over. */
  done: Promise<void>;
}

/** How long a new client waits for the attached one to be seen leaving before it is refused. */
const REFUSE_GRACE_MS = 1000;

/** How long to wait before accepting again after an accept error that was not the peer's (e.g. out of fds). */
const ACCEPT_RETRY_MS = 50;

/** Accept errors that mean only this connection is lost: the peer reset or aborted it before it was accepted. */
function isPeerGone(error: unknown): boolean {
  return error instanceof Deno.errors.NotConnected || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted;
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

class Server implements GdbServer {
  readonly host: string | undefined;
  readonly port: number | undefined;
  readonly path: string | undefined;
  readonly closed: Promise<GdbServerEnd>;
  readonly #vm: Machine;
  readonly #listener: Deno.Listener;
  readonly #options: GdbListenOptions & { allowJs: boolean };
  #resolveClosed!: (end: GdbServerEnd) => void;
  #client: Client | undefined;
  #closing = false;
  #startClosing!: () => void;
  /** Resolves when the server starts closing. */
  readonly #closingNow = new Promise<void>((resolve) => this.#startClosing = resolve);
  #killed = false;
  #listeners = new Set<(connected: boolean) => void>();
  #accepting: Promise<void>;
  /** Resolves when the last client's session is over. */
  #teardown: Promise<void> = Promise.resolve();

  constructor(
    vm: Machine,
    listener: Deno.Listener,
    path: string | undefined,
    options: GdbListenOptions & { allowJs: boolean },
  ) {
    this.#vm = vm;
    this.#listener = listener;
    this.#options = options;
    this.path = path;
    const addr = listener.addr;
    if (addr.transport === "tcp") {
      this.host = addr.hostname;
      this.port = addr.port;
    } else {
      this.host = undefined;
      this.port = undefined;
    }
    this.closed = new Promise((resolve) => this.#resolveClosed = resolve);
    this.#accepting = this.#accept();
  }

  get address(): string {
    if (this.path !== undefined) return this.path;
    return this.host!.includes(":") ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }

  get connected(): boolean {
    return this.#client !== undefined;
  }

  get killed(): boolean {
    return this.#killed;
  }

  onConnection(listener: (connected: boolean) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#closing || error instanceof Deno.errors.BadResource) return; // the listener is closed
        // The peer reset before the accept completed (NotConnected, ConnectionAborted), or the process
        // ran out of fds for a moment: that connection is lost, the listener is not.
        this.#options.log?.(`accept failed: ${(error as Error).message}`);
        if (!isPeerGone(error)) await new Promise((resolve) => setTimeout(resolve, ACCEPT_RETRY_MS));
        continue;
      }
      if (this.#closing) {
        conn.close();
        return;
      }
      const attached = this.#client;
      if (attached !== undefined) {
        // The attached client may have hung up just before this one connected, its FIN or RST not read
        // yet (the event loop is busy with the guest): give it a moment to be seen leaving before refusing.
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          attached.left,
          this.#closingNow,
          new Promise((resolve) => timer = setTimeout(resolve, REFUSE_GRACE_MS)),
        ]);
        clearTimeout(timer);
        if (this.#closing) {
          closeQuietly(conn);
          return;
        }
      }
      if (this.#client !== undefined) {
        void refuse(conn);
        continue;
      }
      this.#serve(conn);
    }
  }

  /**
   * Takes the client slot for `conn` at once; the session starts when the
   * previous client's teardown (pausing a guest it ran, removing its
   * breakpoints) is over, so a client that arrives just after another left
   * is served, not refused.
   */
  #serve(conn: Deno.Conn): void {
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    let hasLeft!: () => void;
    const left = new Promise<void>((resolve) => hasLeft = resolve);
    const client: Client = {
      conn,
      target: undefined,
      stub: undefined,
      writing: Promise.resolve(),
      left,
      hasLeft,
      done: Promise.resolve(),
    };
    this.#client = client;
    client.done = this.#session(client, this.#teardown);
    this.#teardown = client.done;
  }

  async #session(client: Client, previous: Promise<void>): Promise<void> {
    await previous;
    const conn = client.conn;
    if (this.#closing) {
      if (this.#client === client) this.#client = undefined;
      client.hasLeft();
      closeQuietly(conn);
      return;
    }
    const debug = Debugger.for(this.#vm);
    const target = new VmTarget(this.#vm, debug);
    const send = (bytes: Uint8Array) => {
      client.writing = client.writing.then(() => writeAll(conn, bytes)).catch(() => {});
    };
    const hangUp = () => {
      void client.writing.then(() => closeQuietly(conn));
    };
    const stub = new GdbStub(target, {
      send,
      allowJs: this.#options.allowJs,
      monitorScope: { machine: this.#vm, debug },
      ...(this.#options.monitor === undefined ? {} : { monitor: this.#options.monitor }),
      ...(this.#options.log === undefined ? {} : { log: this.#options.log }),
      onDetach: hangUp,
      onKill: () => {
        // Before the hang-up: whoever watches the disconnect must see that this was a kill.
        this.#killed = true;
        hangUp();
        void this.#shutdown("killed");
      },
    });
    client.target = target;
    client.stub = stub;
    for (const listener of this.#listeners) listener(true);
    const buffer = new Uint8Array(65536);
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) break;
        stub.receive(buffer.slice(0, n));
      }
    } catch {
      // reset by peer, or closed by us
    }
    // The client is gone: the next one may take the slot (its session waits for this teardown).
    if (this.#client === client) this.#client = undefined;
    client.hasLeft();
    try {
      await stub.disconnect();
    } finally {
      target.dispose();
      closeQuietly(conn);
      for (const listener of this.#listeners) listener(false);
    }
  }

  async #shutdown(end: GdbServerEnd): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    this.#startClosing();
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    const client = this.#client;
    if (client !== undefined) {
      await client.writing;
      closeQuietly(client.conn);
    }
    await this.#teardown;
    await this.#accepting;
    if (this.path !== undefined) removeStaleSocket(this.path);
    this.#resolveClosed(end);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  close(): Promise<void> {
    return this.#shutdown("closed");
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await conn.write(bytes.subarray(written));
}

async function refuse(conn: Deno.Conn): Promise<void> {
  try {
    await writeAll(conn, encodePacket("E.hvsh: another gdb is already attached to this VM (one client at a time)"));
  } catch {
    // the client went away first
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

/** How a guest served under gdb ended (see {@link serveGdbUntilEnd}). */
export type GdbRunEnd =
  | { reason: "stop"; stop: StopEvent }
  | { reason: "killed" }
  | { reason: "timeout" };

/** Options of {@link serveGdbUntilEnd}. */
export interface ServeOptions {
  /** Hold the guest at its first instruction until gdb attaches and continues (QEMU's `-S`). */
  wait?: boolean;
  /** Give up after this many milliseconds (the guest is paused). */
  timeoutMs?: number;
}

/**
 * Runs a VM under a gdb server until the guest ends, as `hvsh boot --gdb`
 * does: without `wait` the guest starts at once (gdb may attach later and
 * stops it, like QEMU); with `wait` it starts when gdb continues.
 *
 * Ends with:
 * - `{ reason: "stop" }` for a debug-exit or a final HLT, whoever ran the
 *   guest, and for a crash (triple fault, emulation failure) while no gdb is
 *   attached (with gdb attached, a crash is reported to gdb as a signal and
 *   the guest can be inspected; the run ends when gdb detaches or kills);
 * - `{ reason: "killed" }` when gdb sends `kill`;
 * - `{ reason: "timeout" }` after `timeoutMs`.
 *
 * The server is closed on return; the VM is left to the caller.
 */
export async function serveGdbUntilEnd(vm: Machine, server: GdbServer, options: ServeOptions = {}): Promise<GdbRunEnd> {
  let finish!: (end: GdbRunEnd) => void;
  const ended = new Promise<GdbRunEnd>((resolve) => finish = resolve);
  let lastCrash: StopEvent | undefined;
  const isCrash = (stop: StopEvent) => stop.reason === "shutdown" || stop.reason === "internal-error";
  const unsubscribe = vm.onStop((stop) => {
    if (stop.reason === "exit" || stop.reason === "halt") finish({ reason: "stop", stop });
    else if (isCrash(stop)) {
      if (server.connected) lastCrash = stop;
      else finish({ reason: "stop", stop });
    } else {
      // The guest ran again after the crash (gdb repaired and resumed it): that crash is history.
      lastCrash = undefined;
    }
  });
  const unwatch = server.onConnection((connected) => {
    // gdb went (detach, quit) after a crash it was shown: the crash ends the run. A kill ends it as a kill.
    if (!connected && lastCrash !== undefined && !vm.running && !server.killed) {
      finish({ reason: "stop", stop: lastCrash });
    }
    if (connected) lastCrash = undefined;
  });
  void server.closed.then((end) => {
    if (end === "killed") finish({ reason: "killed" });
  });
  const timer = options.timeoutMs === undefined
    ? undefined
    : setTimeout(() => finish({ reason: "timeout" }), options.timeoutMs);
  if (!options.wait) vm.run().catch((error) => finish({ reason: "stop", stop: crashFrom(vm, error) }));
  try {
    return await ended;
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    unsubscribe();
    unwatch();
    if (vm.running) await vm.pause();
    await server.close();
  }
}

function crashFrom(vm: Machine, error: unknown): StopEvent {
  const cpu = vm.cpu(0);
  return {
    reason: "internal-error",
    suberror: 0,
    detail: `the run failed: ${(error as Error).message}`,
    cpu: 0,
    rip: cpu.regs.rip,
    mode: cpu.mode,
  };
}

/** What `vm.gdb` offers: start a server for this VM, and the one running. */
export interface VmGdb {
  /** Starts a gdb server for the VM (see {@link listenGdb}). */
  listen(options?: GdbListenOptions): GdbServer;
  /** The server started last through this object, until it closes. */
  readonly server: GdbServer | undefined;
}

/**
 * The `vm.gdb` facade of a VM.
 *
 * @example
 * ```ts ignore
 * const gdb = attachGdb(vm);
 * const server = gdb.listen({ port: 1234 });
 * ```
 */
export function attachGdb(vm: Machine): VmGdb {
  let current: GdbServer | undefined;
  return {
    listen(options: GdbListenOptions = {}): GdbServer {
      const server = listenGdb(vm, options);
      current = server;
      void server.closed.then(() => {
        if (current === server) current = undefined;
      });
      return server;
    },
    get server() {
      return current;
    },
  };
}

/**
 * Parses a `--gdb` argument: `PORT`, `HOST:PORT`, `[IPV6]:PORT`, or a Unix
 * socket path (anything with a `/`). Throws a RangeError naming a bad value.
 *
 * @example
 * ```ts
 * import { parseGdbAddress } from "./server.ts";
 * parseGdbAddress("1234"); // { port: 1234 }
 * parseGdbAddress("0.0.0.0:1234"); // { host: "0.0.0.0", port: 1234 }
 * parseGdbAddress("/tmp/hvsh.sock"); // { path: "/tmp/hvsh.sock" }
 * ```
 */
export function parseGdbAddress(text: string): { host?: string; port?: number; path?: string } {
  if (text.includes("/")) return { path: text };
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text) ?? /^()()(\d+)$/.exec(text);
  const port = match === null ? NaN : Number(match[3]);
  if (match === null || !Number.isInteger(port) || port > 65535) {
    throw new RangeError(
      `Invalid gdb address ${JSON.stringify(text)}: expected PORT, HOST:PORT or a socket path (with a /)`,
    );
  }
  const host = match[1] || match[2];
  return host ? { host, port } : { port };
}
