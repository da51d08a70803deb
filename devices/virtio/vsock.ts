/**
 * virtio-vsock (virtio 1.2, section 5.10) as Firecracker's "hybrid vsock":
 * the guest speaks AF_VSOCK, the host speaks AF_UNIX, and hvsh carries the
 * bytes between them, so the host needs no vhost-vsock module.
 *
 * - Host-initiated: a host program connects to the Unix socket `uds` and
 *   writes `CONNECT <port>\n`; the device sends the guest a REQUEST to that
 *   port, and on the guest's RESPONSE writes `OK <host port>\n` back, after
 *   which the Unix stream is the connection. A RST (or no answer within
 *   `connectTimeout`, 2 s by default) closes the Unix stream instead, and
 *   the guest gets a RST should it answer later.
 * - Guest-initiated: a guest connecting to host (CID 2) port P is connected
 *   to the Unix socket `${uds}_${P}`, where a host program listens; no
 *   listener there and the guest gets a RST (connection refused).
 *
 * Data moves as RW packets under the credit flow control of 5.10.6.3: each
 * side advertises `buf_alloc` and `fwd_cnt`, and never sends more than the
 * peer has room for. The device forwards at most the guest's credit to it
 * (and asks with CREDIT_REQUEST when it runs out), advertises
 * {@link VSOCK_BUF_ALLOC} bytes of its own per connection, and sends a
 * CREDIT_UPDATE whenever a quarter of that has been written out to the host
 * since the guest last heard. A host EOF becomes SHUTDOWN(SEND) once the
 * bytes before it reached the guest; a guest SHUTDOWN(SEND) half-closes the
 * Unix stream after the guest's bytes were written; SHUTDOWN with both
 * flags, or RST, ends the connection (the device answers the former with
 * the RST the guest waits for).
 *
 * Nothing the guest sends is trusted. A tx chain shorter than the 44-byte
 * header, a `len` beyond the chain, or an rx buffer too small for a header
 * is a broken driver: NEEDS_RESET with one log line. A packet that is well
 * formed but wrong (source CID not the guest's, an unknown op or type, a
 * payload over 64 KiB, data beyond the credit the device gave, data on a
 * connection that is not open) is dropped with one log line (the first 16
 * per activation; the rest are counted) and, where the spec asks for it,
 * answered with RST.
 *
 * Snapshots carry the CID and the counters, not the connections: their Unix
 * streams belong to this process. A restored device posts
 * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, so the guest drops
 * its sockets, as Firecracker does after a restore.
 *
 * @module
 */

import { readConfigSpace, VIRTIO_ID, type VirtioContext, type VirtioDevice } from "./device.ts";
import { type DescriptorChain, type SplitQueue, VirtqueueError } from "./queue.ts";
import { StateReader } from "../_state.ts";

/** Feature bits (5.10.3). hvsh offers stream sockets only. */
export const VIRTIO_VSOCK_F = { stream: 1n << 0n, seqpacket: 1n << 1n } as const;
/** Packet operations (5.10.6). */
export const VIRTIO_VSOCK_OP = {
  invalid: 0,
  request: 1,
  response: 2,
  rst: 3,
  shutdown: 4,
  rw: 5,
  creditUpdate: 6,
  creditRequest: 7,
} as const;
/** SHUTDOWN flags: the sender will receive no more, send no more. */
export const VIRTIO_VSOCK_SHUTDOWN = { receive: 1, send: 2 } as const;
/** The stream socket type (`type` 1). */
export const VIRTIO_VSOCK_TYPE_STREAM = 1;
/** `struct virtio_vsock_hdr`: 44 bytes, little-endian. */
export const VIRTIO_VSOCK_HDR_SIZE = 44;
/** The host's CID (VMADDR_CID_HOST). */
export const VSOCK_HOST_CID = 2;
/** The event the device posts after a restore (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET). */
export const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0;
/** Bytes of receive buffer the device advertises per connection (Firecracker's figure). */
export const VSOCK_BUF_ALLOC = 256 * 1024;
/** How long a host-initiated connection waits for the guest's RESPONSE. */
export const VSOCK_CONNECT_TIMEOUT_MS = 2000;
/** The first host port handed to host-initiated connections (Firecracker's local ports start there too). */
export const VSOCK_FIRST_HOST_PORT = 1 << 30;

/** The largest payload one packet may carry (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
const MAX_PAYLOAD = 64 * 1024;
const QUEUE_SIZE = 128;
/** Host bytes read ahead per connection while the guest has no credit or no buffers. */
const INCOMING_LIMIT = 64 * 1024;
const READ_CHUNK = 64 * 1024;
/** Send a CREDIT_UPDATE once this much was forwarded since the guest last heard our fwd_cnt. */
const CREDIT_UPDATE_THRESHOLD = VSOCK_BUF_ALLOC / 4;
const MAX_CONNECTIONS = 1024;
/** Control replies (RST to unknown connections) kept while the guest gives no rx buffers. */
const REPLY_LIMIT = 1024;
const LOGGED_DROPS = 16;
/** The longest `CONNECT <port>\n` line read before giving up on a host client. */
const CONNECT_LINE_LIMIT = 64;
/** sun_path holds 108 bytes with the NUL. */
const UNIX_PATH_MAX = 107;

/** `struct virtio_vsock_hdr`, decoded. CIDs are 64 bits on the wire. */
export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

/**
 * Encodes a packet header (and the payload after it).
 *
 * @example
 * ```ts
 * import { decodeVsockHeader, encodeVsockPacket, VIRTIO_VSOCK_OP } from "./vsock.ts";
 * import assert from "node:assert/strict";
 * const bytes = encodeVsockPacket({ srcCid: 3n, dstCid: 2n, srcPort: 1, dstPort: 2, op: VIRTIO_VSOCK_OP.request });
 * assert.equal(bytes.length, 44);
 * assert.equal(decodeVsockHeader(bytes).op, VIRTIO_VSOCK_OP.request);
 * ```
 */
export function encodeVsockPacket(
  header: Partial<VsockHeader> & Pick<VsockHeader, "srcCid" | "dstCid" | "srcPort" | "dstPort" | "op">,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const bytes = new Uint8Array(VIRTIO_VSOCK_HDR_SIZE + payload.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, header.srcCid, true);
  view.setBigUint64(8, header.dstCid, true);
  view.setUint32(16, header.srcPort, true);
  view.setUint32(20, header.dstPort, true);
  view.setUint32(24, header.len ?? payload.length, true);
  view.setUint16(28, header.type ?? VIRTIO_VSOCK_TYPE_STREAM, true);
  view.setUint16(30, header.op, true);
  view.setUint32(32, header.flags ?? 0, true);
  view.setUint32(36, header.bufAlloc ?? 0, true);
  view.setUint32(40, header.fwdCnt ?? 0, true);
  bytes.set(payload, VIRTIO_VSOCK_HDR_SIZE);
  return bytes;
}

/** Decodes the first 44 bytes of `bytes` (a RangeError when fewer). */
export function decodeVsockHeader(bytes: Uint8Array): VsockHeader {
  if (bytes.length < VIRTIO_VSOCK_HDR_SIZE) {
    throw new RangeError(`Cannot decode a vsock header from ${bytes.length} bytes: it takes ${VIRTIO_VSOCK_HDR_SIZE}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, VIRTIO_VSOCK_HDR_SIZE);
  return {
    srcCid: view.getBigUint64(0, true),
    dstCid: view.getBigUint64(8, true),
    srcPort: view.getUint32(16, true),
    dstPort: view.getUint32(20, true),
    len: view.getUint32(24, true),
    type: view.getUint16(28, true),
    op: view.getUint16(30, true),
    flags: view.getUint32(32, true),
    bufAlloc: view.getUint32(36, true),
    fwdCnt: view.getUint32(40, true),
  };
}

const OP_NAMES = ["INVALID", "REQUEST", "RESPONSE", "RST", "SHUTDOWN", "RW", "CREDIT_UPDATE", "CREDIT_REQUEST"];

/** Where a connection stands. */
export type VsockConnectionState =
  /** Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE. */
  | "connecting"
  /** Guest-initiated: connecting to `${uds}_${port}`. */
  | "dialing"
  | "established";

/** A connection as listings show it. */
export interface VsockConnectionInfo {
  hostPort: number;
  guestPort: number;
  state: VsockConnectionState;
  initiator: "host" | "guest";
}

interface Outgoing {
  bytes: Uint8Array;
  /** Guest payload (counts in fwd_cnt); false for the `OK` line. */
  counted: boolean;
}

/** One connection: a guest (port) and a host Unix stream. */
class Connection {
  readonly hostPort: number;
  readonly guestPort: number;
  readonly initiator: "host" | "guest";
  state: VsockConnectionState;
  conn: Deno.UnixConn | undefined;
  closed = false;
  timer: ReturnType<typeof setTimeout> | undefined;
  // Guest → host: what the guest sent (rxCnt), what reached the Unix stream (fwdCnt), and the fwd_cnt it last saw.
  rxCnt = 0;
  fwdCnt = 0;
  fwdCntSent = 0;
  outgoing: Outgoing[] = [];
  guestShutdown = 0;
  hostWriteClosed = false;
  // Host → guest: the guest's buffer and how far it read (its credit to us), and what we sent.
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  txCnt = 0;
  incoming: Uint8Array[] = [];
  incomingBytes = 0;
  hostEof = false;
  shutdownSent = false;
  // Control packets owed to the guest.
  sendRequest = false;
  sendResponse = false;
  sendCreditUpdate = false;
  creditRequested = false;
  wakeWriter: (() => void) | undefined;
  wakeReader: (() => void) | undefined;

  constructor(hostPort: number, guestPort: number, initiator: "host" | "guest", state: VsockConnectionState) {
    this.hostPort = hostPort;
    this.guestPort = guestPort;
    this.initiator = initiator;
    this.state = state;
  }

  get key(): string {
    return connectionKey(this.hostPort, this.guestPort);
  }

  /** The bytes the guest still has room for. */
  get credit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt) >>> 0;
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  wake(): void {
    const writer = this.wakeWriter;
    const reader = this.wakeReader;
    this.wakeWriter = this.wakeReader = undefined;
    writer?.();
    reader?.();
  }
}

function connectionKey(hostPort: number, guestPort: number): string {
  return `${hostPort}:${guestPort}`;
}

/** Options of {@link virtioVsock}. */
export interface VirtioVsockOptions {
  /** The guest's CID: 3 or more, below 0xffffffff (VMADDR_CID_ANY). */
  cid: number;
  /** The host Unix socket hvsh listens on; guest connections to port P go to `${uds}_${P}`. */
  uds: string;
  /** How long a host-initiated connection waits for the guest's RESPONSE, in ms (default {@link VSOCK_CONNECT_TIMEOUT_MS}). */
  connectTimeout?: number;
}

/** What the device has done, for listings and tests. */
export interface VsockCounters {
  /** Connections that reached "established". */
  connections: number;
  /** Payload bytes guest → host and host → guest. */
  bytesFromGuest: number;
  bytesToGuest: number;
  /** Guest packets dropped (logged or not). */
  dropped: number;
}

/**
 * A vsock device whose host end is a Unix socket (Firecracker's hybrid vsock).
 *
 * @example
 * ```ts ignore
 * vm.add(virtioVsock({ cid: 3, uds: "/tmp/vm.vsock" }));
 * // host: connect to /tmp/vm.vsock, write "CONNECT 52\n", read "OK 1073741824\n", then talk to guest port 52.
 * ```
 */
export class VirtioVsock implements VirtioDevice {
  readonly deviceId = VIRTIO_ID.vsock;
  readonly kind = "vsock";
  readonly features = VIRTIO_VSOCK_F.stream;
  /** rx, tx, event (5.10.2). */
  readonly queueSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly configSize = 8;
  readonly cid: number;
  readonly uds: string;
  readonly counters: VsockCounters = { connections: 0, bytesFromGuest: 0, bytesToGuest: 0, dropped: 0 };
  readonly #listener: Deno.UnixListener;
  readonly #connectTimeout: number;
  readonly #connections = new Map<string, Connection>();
  /** Headers owed to the guest outside any connection (RST to a packet for no connection). */
  #replies: VsockHeader[] = [];
  #context: VirtioContext | undefined;
  #eventPending = false;
  #nextHostPort = VSOCK_FIRST_HOST_PORT;
  #turn = 0;
  #dropsLogged = 0;
  #closed = false;
  readonly #tasks = new Set<Promise<void>>();
  readonly #handshakes = new Set<Deno.UnixConn>();

  /** Listens on `options.uds` at once; throws a TypeError/RangeError naming a bad CID or path, or an Error when the path is taken. */
  constructor(options: VirtioVsockOptions) {
    const cid = options?.cid;
    if (!Number.isInteger(cid) || cid < 3 || cid >= 0xffff_ffff) {
      throw new RangeError(`Invalid virtio-vsock cid ${cid}: expected an integer from 3 to 4294967294`);
    }
    const uds = options.uds;
    if (typeof uds !== "string" || uds === "") {
      throw new TypeError(`Invalid virtio-vsock uds ${JSON.stringify(uds)}: expected the path of a Unix socket`);
    }
    const length = new TextEncoder().encode(uds).length;
    // Guest connections go to `${uds}_${port}`: leave room for "_4294967295".
    if (length + 11 > UNIX_PATH_MAX) {
      throw new RangeError(
        `Invalid virtio-vsock uds ${JSON.stringify(uds)}: ${length} bytes, at most ${UNIX_PATH_MAX - 11} so that ${
          JSON.stringify(`${uds}_PORT`)
        } fits a Unix socket address`,
      );
    }
    const timeout = options.connectTimeout ?? VSOCK_CONNECT_TIMEOUT_MS;
    if (!Number.isInteger(timeout) || timeout < 1 || timeout > 3_600_000) {
      throw new RangeError(`Invalid virtio-vsock connectTimeout ${timeout}: expected whole milliseconds, 1-3600000`);
    }
    this.cid = cid;
    this.uds = uds;
    this.#connectTimeout = timeout;
    try {
      this.#listener = Deno.listen({ transport: "unix", path: uds });
    } catch (error) {
      const why = error instanceof Deno.errors.AddrInUse
        ? "something is there already (a stale socket from an earlier run? remove it)"
        : (error as Error).message;
      throw new Error(`Cannot listen on the virtio-vsock socket ${uds}: ${why}`, { cause: error });
    }
    this.#track(this.#acceptLoop());
  }

  /** The open connections. */
  get connections(): VsockConnectionInfo[] {
    return [...this.#connections.values()].map((c) => ({
      hostPort: c.hostPort,
      guestPort: c.guestPort,
      state: c.state,
      initiator: c.initiator,
    }));
  }

  readConfig(offset: number, size: number): number {
    const config = new Uint8Array(8);
    new DataView(config.buffer).setBigUint64(0, BigInt(this.cid), true);
    return readConfigSpace(config, offset, size);
  }

  writeConfig(): void {}

  activate(context: VirtioContext): void {
    this.#context = context;
    this.#dropsLogged = 0;
    this.#postEvent();
    this.#pump();
  }

  /** The driver reset the device: every connection ends (the guest forgot them); the listener stays. */
  reset(): void {
    this.#context = undefined;
    for (const c of [...this.#connections.values()]) this.#drop(c, false);
    this.#replies = [];
  }

  notify(queue: number): void {
    const context = this.#context;
    if (context === undefined) return;
    if (queue === 1) {
      const tx = context.queues[1]!;
      // A chain the device cannot parse throws a VirtqueueError: the core puts the device in NEEDS_RESET.
      tx.drain((chain) => {
        this.#receive(tx, chain);
        return 0;
      });
      context.usedBuffers(1);
    } else if (queue === 2) {
      this.#postEvent();
    }
    this.#pump();
  }

  // ---- guest → device

  #receive(tx: SplitQueue, chain: DescriptorChain): void {
    if (chain.readableLength < VIRTIO_VSOCK_HDR_SIZE) {
      throw new VirtqueueError(
        `tx packet of ${chain.readableLength} bytes is shorter than the ${VIRTIO_VSOCK_HDR_SIZE}-byte header`,
      );
    }
    const header = decodeVsockHeader(tx.readAll(chain, VIRTIO_VSOCK_HDR_SIZE));
    const room = chain.readableLength - VIRTIO_VSOCK_HDR_SIZE;
    if (header.len > room) {
      throw new VirtqueueError(`tx packet header says len ${header.len} but its buffers hold ${room} payload bytes`);
    }
    const what = `${
      OP_NAMES[header.op] ?? `op ${header.op}`
    } ${header.srcCid}:${header.srcPort} -> ${header.dstCid}:${header.dstPort}`;
    if (header.srcCid !== BigInt(this.cid)) {
      this.#dropped(`${what}: source CID is not the guest's ${this.cid}`);
      return;
    }
    if (header.dstCid !== BigInt(VSOCK_HOST_CID)) {
      // Another VM, or a CID nobody has: refused, as a host with no such peer would.
      if (header.op !== VIRTIO_VSOCK_OP.rst) this.#reply(header);
      return;
    }
    if (header.type !== VIRTIO_VSOCK_TYPE_STREAM) {
      this.#dropped(`${what}: socket type ${header.type} is not stream (1), the only one offered`);
      if (header.op !== VIRTIO_VSOCK_OP.rst) this.#reply(header);
      return;
    }
    if (header.op === VIRTIO_VSOCK_OP.invalid || header.op > VIRTIO_VSOCK_OP.creditRequest) {
      this.#dropped(`${what}: unknown op`);
      return;
    }
    if (header.op === VIRTIO_VSOCK_OP.rw && header.len > MAX_PAYLOAD) {
      this.#dropped(`${what}: payload of ${header.len} bytes is over the ${MAX_PAYLOAD}-byte limit`);
      const c = this.#connections.get(connectionKey(header.dstPort, header.srcPort));
      if (c === undefined) this.#reply(header);
      else this.#drop(c, true);
      return;
    }
    const c = this.#connections.get(connectionKey(header.dstPort, header.srcPort));
    if (header.op === VIRTIO_VSOCK_OP.request) {
      if (c !== undefined) {
        // A second REQUEST for a live connection: the guest lost track of it; both ends start over.
        this.#drop(c, true);
        return;
      }
      this.#dial(header);
      return;
    }
    if (c === undefined) {
      if (header.op !== VIRTIO_VSOCK_OP.rst) this.#reply(header);
      return;
    }
    c.peerBufAlloc = header.bufAlloc;
    c.peerFwdCnt = header.fwdCnt;
    if (c.credit > 0) c.creditRequested = false;
    switch (header.op) {
      case VIRTIO_VSOCK_OP.response:
        if (c.state !== "connecting") {
          this.#dropped(`${what}: RESPONSE on a connection that is ${c.state}`);
          this.#drop(c, true);
          return;
        }
        // The host client hears which host port it got before any of the guest's bytes.
        c.outgoing.unshift({ bytes: new TextEncoder().encode(`OK ${c.hostPort}\n`), counted: false });
        this.#established(c);
        return;
      case VIRTIO_VSOCK_OP.rst:
        this.#drop(c, false);
        return;
      case VIRTIO_VSOCK_OP.shutdown:
        if (c.state !== "established") {
          this.#drop(c, true);
          return;
        }
        c.guestShutdown |= header.flags & 3;
        if ((c.guestShutdown & VIRTIO_VSOCK_SHUTDOWN.receive) !== 0) {
          c.incoming = [];
          c.incomingBytes = 0;
        }
        c.wake();
        return;
      case VIRTIO_VSOCK_OP.rw:
        this.#fromGuest(c, tx, chain, header, what);
        return;
      case VIRTIO_VSOCK_OP.creditRequest:
        c.sendCreditUpdate = true;
        return;
      case VIRTIO_VSOCK_OP.creditUpdate:
        return; // the credit fields were taken above
    }
  }

  #fromGuest(c: Connection, tx: SplitQueue, chain: DescriptorChain, header: VsockHeader, what: string): void {
    if (c.state !== "established" || (c.guestShutdown & VIRTIO_VSOCK_SHUTDOWN.send) !== 0) {
      this.#dropped(`${what}: data on a connection that is ${c.state === "established" ? "shut down" : c.state}`);
      this.#drop(c, true);
      return;
    }
    if (header.len === 0) return;
    const pending = (c.rxCnt - c.fwdCnt) >>> 0;
    if (pending + header.len > VSOCK_BUF_ALLOC) {
      this.#dropped(
        `${what}: ${header.len} bytes with ${pending} unforwarded, beyond the ${VSOCK_BUF_ALLOC}-byte buffer advertised`,
      );
      this.#drop(c, true);
      return;
    }
    const packet = tx.readAll(chain, VIRTIO_VSOCK_HDR_SIZE + header.len);
    c.outgoing.push({ bytes: packet.subarray(VIRTIO_VSOCK_HDR_SIZE), counted: true });
    c.rxCnt = (c.rxCnt + header.len) >>> 0;
    this.counters.bytesFromGuest += header.len;
    c.wake();
  }

  /** A guest REQUEST to host port P: connect to `${uds}_${P}`. */
  #dial(header: VsockHeader): void {
    if (this.#connections.size >= MAX_CONNECTIONS) {
      this.#dropped(`REQUEST to port ${header.dstPort}: ${MAX_CONNECTIONS} connections are open already`);
      this.#reply(header);
      return;
    }
    const c = new Connection(header.dstPort, header.srcPort, "guest", "dialing");
    c.peerBufAlloc = header.bufAlloc;
    c.peerFwdCnt = header.fwdCnt;
    this.#connections.set(c.key, c);
    this.#track((async () => {
      let conn: Deno.UnixConn | undefined;
      try {
        conn = await Deno.connect({ transport: "unix", path: `${this.uds}_${header.dstPort}` });
      } catch {
        // nobody listens there: refused
      }
      if (c.closed || this.#closed) {
        conn?.close();
        return;
      }
      if (conn === undefined) {
        this.#drop(c, true);
        this.#pump();
        return;
      }
      c.conn = conn;
      this.#established(c);
      c.sendResponse = true;
      this.#pump();
    })());
  }

  #established(c: Connection): void {
    if (c.timer !== undefined) clearTimeout(c.timer);
    c.timer = undefined;
    c.state = "established";
    this.counters.connections++;
    this.#track(this.#writeLoop(c));
    this.#track(this.#readLoop(c));
  }

  // ---- host side

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.UnixConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        if (this.#closed) return;
        continue;
      }
      if (this.#closed) {
        conn.close();
        return;
      }
      this.#track(this.#handshake(conn));
    }
  }

  /** Reads `CONNECT <port>\n` from a host client, then asks the guest. A malformed line closes the client. */
  async #handshake(conn: Deno.UnixConn): Promise<void> {
    this.#handshakes.add(conn);
    const line = new Uint8Array(CONNECT_LINE_LIMIT);
    let length = 0;
    let end = -1;
    try {
      while (end < 0 && length < line.length) {
        const n = await conn.read(line.subarray(length));
        if (n === null) break;
        end = line.subarray(length, length + n).indexOf(0x0a);
        if (end >= 0) end += length;
        length += n;
      }
    } catch {
      end = -1;
    } finally {
      this.#handshakes.delete(conn);
    }
    const match = end < 0 ? null : /^CONNECT (\d{1,10})$/.exec(new TextDecoder().decode(line.subarray(0, end)));
    const port = match === null ? NaN : Number(match[1]);
    if (this.#closed || !(port <= 0xffff_ffff) || this.#connections.size >= MAX_CONNECTIONS) {
      try {
        conn.close();
      } catch {
        // closed by close()
      }
      return;
    }
    const c = new Connection(this.#allocateHostPort(port), port, "host", "connecting");
    c.conn = conn;
    // Bytes after the line were meant for the guest: they wait for the connection.
    if (length > end + 1) {
      c.incoming.push(line.slice(end + 1, length));
      c.incomingBytes = length - end - 1;
    }
    c.sendRequest = true;
    c.timer = setTimeout(() => {
      c.timer = undefined;
      if (c.closed || c.state !== "connecting") return;
      this.#drop(c, true);
      this.#pump();
    }, this.#connectTimeout);
    this.#connections.set(c.key, c);
    this.#pump();
  }

  #allocateHostPort(guestPort: number): number {
    for (let tries = 0; tries < MAX_CONNECTIONS + 1; tries++) {
      const port = this.#nextHostPort;
      this.#nextHostPort = port >= 0xffff_fffe ? VSOCK_FIRST_HOST_PORT : port + 1;
      if (!this.#connections.has(connectionKey(port, guestPort))) return port;
    }
    throw new Error("unreachable: more host ports in use than connections");
  }

  async #writeLoop(c: Connection): Promise<void> {
    const conn = c.conn!;
    while (!c.closed) {
      const item = c.outgoing.shift();
      if (item === undefined) {
        if (c.guestShutdown === 3) {
          // Everything the guest sent is out: end it with the RST the guest waits for.
          this.#drop(c, true);
          this.#pump();
          return;
        }
        if ((c.guestShutdown & VIRTIO_VSOCK_SHUTDOWN.send) !== 0 && !c.hostWriteClosed) {
          c.hostWriteClosed = true;
          try {
            await conn.closeWrite();
          } catch {
            // the host closed already
          }
          continue;
        }
        await new Promise<void>((resolve) => (c.wakeWriter = resolve));
        continue;
      }
      try {
        for (let done = 0; done < item.bytes.length;) done += await conn.write(item.bytes.subarray(done));
      } catch {
        // The host end is gone: the guest hears RST.
        if (!c.closed) {
          this.#drop(c, true);
          this.#pump();
        }
        return;
      }
      if (!item.counted || c.closed) continue;
      c.fwdCnt = (c.fwdCnt + item.bytes.length) >>> 0;
      if (((c.fwdCnt - c.fwdCntSent) >>> 0) >= CREDIT_UPDATE_THRESHOLD) {
        c.sendCreditUpdate = true;
        this.#pump();
      }
    }
  }

  async #readLoop(c: Connection): Promise<void> {
    const conn = c.conn!;
    const buffer = new Uint8Array(READ_CHUNK);
    while (!c.closed && !c.hostEof) {
      if (c.incomingBytes >= INCOMING_LIMIT) {
        await new Promise<void>((resolve) => (c.wakeReader = resolve));
        continue;
      }
      let n: number | null;
      try {
        n = await conn.read(buffer);
      } catch {
        n = null; // reset by the host, or closed by us
      }
      if (c.closed) return;
      if (n === null) {
        c.hostEof = true;
      } else if ((c.guestShutdown & VIRTIO_VSOCK_SHUTDOWN.receive) === 0) {
        c.incoming.push(buffer.slice(0, n));
        c.incomingBytes += n;
      }
      this.#pump();
    }
  }

  // ---- device → guest

  /** Moves owed packets into the guest's rx buffers while both last. */
  #pump(): void {
    const context = this.#context;
    if (context === undefined || this.#closed) return;
    const rx = context.queues[0]!;
    if (!rx.active) return;
    try {
      let pushed = false;
      while (this.#hasWork()) {
        const chain = rx.pop();
        if (chain === undefined) break;
        if (chain.writableLength < VIRTIO_VSOCK_HDR_SIZE) {
          throw new VirtqueueError(
            `rx buffer of ${chain.writableLength} bytes is smaller than the ${VIRTIO_VSOCK_HDR_SIZE}-byte header`,
          );
        }
        const packet = this.#nextPacket(chain.writableLength - VIRTIO_VSOCK_HDR_SIZE);
        if (packet === undefined) {
          // Only data is owed and this buffer holds a bare header: keep it for a control packet.
          rx.undoPop();
          break;
        }
        rx.push(chain.head, rx.writeAt(chain, 0, packet));
        pushed = true;
      }
      if (pushed) context.usedBuffers(0);
    } catch (error) {
      context.fail((error as Error).message);
    }
  }

  #hasWork(): boolean {
    if (this.#replies.length > 0) return true;
    for (const c of this.#connections.values()) if (this.#owed(c, MAX_PAYLOAD) !== undefined) return true;
    return false;
  }

  /** What `c` would send next into a buffer with `room` payload bytes, without sending it. */
  #owed(c: Connection, room: number): number | undefined {
    if (c.sendRequest) return VIRTIO_VSOCK_OP.request;
    if (c.sendResponse) return VIRTIO_VSOCK_OP.response;
    if (c.state !== "established") return undefined;
    if (c.incomingBytes > 0) {
      if (c.credit > 0 && room > 0) return VIRTIO_VSOCK_OP.rw;
      if (c.credit === 0 && !c.creditRequested) return VIRTIO_VSOCK_OP.creditRequest;
    }
    if (c.sendCreditUpdate) return VIRTIO_VSOCK_OP.creditUpdate;
    if (c.hostEof && c.incomingBytes === 0 && !c.shutdownSent) return VIRTIO_VSOCK_OP.shutdown;
    return undefined;
  }

  /** The next packet owed, taken from the replies, then the connections in turn. */
  #nextPacket(room: number): Uint8Array | undefined {
    const reply = this.#replies.shift();
    if (reply !== undefined) return encodeVsockPacket(reply);
    const list = [...this.#connections.values()];
    for (let i = 0; i < list.length; i++) {
      const index = (this.#turn + i) % list.length;
      const c = list[index]!;
      const op = this.#owed(c, room);
      if (op === undefined) continue;
      this.#turn = index + 1;
      return this.#packetFor(c, op, room);
    }
    return undefined;
  }

  #packetFor(c: Connection, op: number, room: number): Uint8Array {
    let payload: Uint8Array = new Uint8Array(0);
    let flags = 0;
    switch (op) {
      case VIRTIO_VSOCK_OP.request:
        c.sendRequest = false;
        break;
      case VIRTIO_VSOCK_OP.response:
        c.sendResponse = false;
        break;
      case VIRTIO_VSOCK_OP.rw:
        payload = this.#takeIncoming(c, Math.min(c.credit, room, MAX_PAYLOAD));
        c.txCnt = (c.txCnt + payload.length) >>> 0;
        this.counters.bytesToGuest += payload.length;
        break;
      case VIRTIO_VSOCK_OP.creditRequest:
        c.creditRequested = true;
        break;
      case VIRTIO_VSOCK_OP.shutdown:
        c.shutdownSent = true;
        flags = VIRTIO_VSOCK_SHUTDOWN.send;
        break;
    }
    // Every header carries our credit, so the guest has heard this fwd_cnt.
    c.sendCreditUpdate = false;
    c.fwdCntSent = c.fwdCnt;
    return encodeVsockPacket({
      srcCid: BigInt(VSOCK_HOST_CID),
      dstCid: BigInt(this.cid),
      srcPort: c.hostPort,
      dstPort: c.guestPort,
      op,
      flags,
      bufAlloc: VSOCK_BUF_ALLOC,
      fwdCnt: c.fwdCnt,
    }, payload);
  }

  #takeIncoming(c: Connection, max: number): Uint8Array {
    const out = new Uint8Array(Math.min(max, c.incomingBytes));
    let done = 0;
    while (done < out.length) {
      const first = c.incoming[0]!;
      const part = first.subarray(0, out.length - done);
      out.set(part, done);
      done += part.length;
      if (part.length === first.length) c.incoming.shift();
      else c.incoming[0] = first.subarray(part.length);
    }
    c.incomingBytes -= done;
    if (c.incomingBytes < INCOMING_LIMIT) c.wake();
    return out;
  }

  /** Queues a RST answering `header` (to no connection, or one already forgotten). */
  #reply(header: VsockHeader): void {
    if (this.#replies.length >= REPLY_LIMIT) {
      this.counters.dropped++;
      return;
    }
    this.#replies.push({
      srcCid: header.dstCid,
      dstCid: header.srcCid,
      srcPort: header.dstPort,
      dstPort: header.srcPort,
      len: 0,
      type: VIRTIO_VSOCK_TYPE_STREAM,
      op: VIRTIO_VSOCK_OP.rst,
      flags: 0,
      bufAlloc: 0,
      fwdCnt: 0,
    });
  }

  /** Forgets `c` and closes its Unix stream; with `rst`, tells the guest. */
  #drop(c: Connection, rst: boolean): void {
    if (c.closed) return;
    c.closed = true;
    if (c.timer !== undefined) clearTimeout(c.timer);
    c.timer = undefined;
    this.#connections.delete(c.key);
    try {
      c.conn?.close();
    } catch {
      // already closed
    }
    c.wake();
    if (rst && this.#context !== undefined) {
      this.#reply({
        srcCid: BigInt(this.cid),
        dstCid: BigInt(VSOCK_HOST_CID),
        srcPort: c.guestPort,
        dstPort: c.hostPort,
        len: 0,
        type: VIRTIO_VSOCK_TYPE_STREAM,
        op: VIRTIO_VSOCK_OP.rst,
        flags: 0,
        bufAlloc: 0,
        fwdCnt: 0,
      });
    }
  }

  #dropped(line: string): void {
    this.counters.dropped++;
    if (this.#dropsLogged > LOGGED_DROPS) return;
    this.#dropsLogged++;
    const log = this.#context?.log;
    if (log === undefined) return;
    log(this.#dropsLogged > LOGGED_DROPS ? "further dropped packets are counted, not logged" : `dropped ${line}`);
  }

  /** Posts TRANSPORT_RESET into an event buffer, once the driver gives one. */
  #postEvent(): void {
    const context = this.#context;
    if (context === undefined || !this.#eventPending) return;
    const queue = context.queues[2]!;
    if (!queue.active) return;
    try {
      const chain = queue.pop();
      if (chain === undefined) return;
      const event = new Uint8Array(4);
      new DataView(event.buffer).setUint32(0, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, true);
      queue.push(chain.head, queue.writeAt(chain, 0, event));
      this.#eventPending = false;
      context.usedBuffers(2);
    } catch (error) {
      context.fail((error as Error).message);
    }
  }

  #track(task: Promise<void>): void {
    const tracked = task.catch((error) => this.#context?.fail(`host side: ${(error as Error).message}`)).finally(
      () => this.#tasks.delete(tracked),
    );
    this.#tasks.add(tracked);
  }

  describe(): string {
    return `CID ${this.cid}, ${this.uds}, ${this.#connections.size} connections`;
  }

  /** The CID, the counters and whether a TRANSPORT_RESET is owed; connections are not carried (see the module doc). */
  get state(): Record<string, unknown> {
    return { cid: this.cid, eventPending: this.#eventPending, counters: { ...this.counters } };
  }

  /**
   * Restores {@link state}: refuses another CID (the guest's sockets are bound to it), ends
   * this device's connections and owes the guest a TRANSPORT_RESET, so it drops the ones it
   * had when the snapshot was taken.
   */
  restore(state: Record<string, unknown>): void {
    const r = new StateReader("virtio-vsock", state);
    const cid = r.integer("cid", 3, 0xffff_fffe);
    if (cid !== this.cid) r.refuse(`cid ${cid} differs from this device's ${this.cid}`);
    r.boolean("eventPending");
    const counters = r.object("counters");
    const count = (field: string) => counters.integer(field, 0, Number.MAX_SAFE_INTEGER);
    const restored = {
      connections: count("connections"),
      bytesFromGuest: count("bytesFromGuest"),
      bytesToGuest: count("bytesToGuest"),
      dropped: count("dropped"),
    };
    for (const c of [...this.#connections.values()]) this.#drop(c, false);
    this.#replies = [];
    Object.assign(this.counters, restored);
    this.#eventPending = true;
  }

  /** Stops listening, closes every connection and waits for the host-side tasks to end. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#context = undefined;
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    for (const conn of this.#handshakes) {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
    for (const c of [...this.#connections.values()]) this.#drop(c, false);
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
  }
}

/** A vsock device for `vm.add()`, listening on `uds` at once. */
export function virtioVsock(options: VirtioVsockOptions): VirtioVsock {
  return new VirtioVsock(options);
}
