/**
 * Whether a program listens on a Unix socket path, asked synchronously (a
 * `connect()` through libc), so a server about to take the path can replace
 * a stale socket file but never one in use.
 *
 * @module
 */

import { cString, errnoName, lastErrno, sys } from "./_ffi.ts";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const ECONNREFUSED = 111;
const ENOENT = 2;
const EAGAIN = 11;
/** sizeof(struct sockaddr_un): a u16 family and a 108-byte path. */
const SOCKADDR_UN_SIZE = 110;

/** What is at a Unix socket path. */
export type UnixSocketState =
  /** A program accepts connections there (or its backlog is full). */
  | "listening"
  /** A socket file nobody listens on (its server died without removing it). */
  | "stale"
  /** Nothing there. */
  | "absent";

/**
 * Connects to `path` (non-blocking) and hangs up at once to learn whether
 * anyone listens there. Throws an Error naming the path and errno when
 * connecting fails for another reason (e.g. EACCES) or the path is longer
 * than a socket address holds.
 *
 * @example
 * ```ts ignore
 * import { unixSocketState } from "./unix_socket.ts";
 * if (unixSocketState("/tmp/hvsh.sock") === "stale") Deno.removeSync("/tmp/hvsh.sock");
 * ```
 */
export function unixSocketState(path: string): UnixSocketState {
  const encoded = cString(path);
  if (encoded.length > SOCKADDR_UN_SIZE - 2) {
    throw new RangeError(`Unix socket path ${path} is too long (${encoded.length - 1} bytes, at most 107)`);
  }
  const address = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(encoded, 2);
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`Cannot create a Unix socket to probe ${path}: ${errnoName(lastErrno())}`);
  try {
    if (sys.connect(fd, address, SOCKADDR_UN_SIZE) === 0) return "listening";
    const errno = lastErrno();
    if (errno === ECONNREFUSED) return "stale";
    if (errno === ENOENT) return "absent";
    if (errno === EAGAIN) return "listening"; // its backlog is full: busy, not stale
    throw new Error(`Cannot tell whether a program listens on Unix socket ${path}: connect: ${errnoName(errno)}`);
  } finally {
    sys.close(fd);
  }
}
