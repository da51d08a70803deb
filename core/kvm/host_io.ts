/**
 * Host-side I/O the virtio back ends need and Deno does not offer: files
 * read and written at an offset straight into guest RAM (`pread`/`pwrite`,
 * no copy), hole punching for discard, `getrandom`, eventfds (for
 * KVM_IOEVENTFD / KVM_IRQFD) and TAP network devices (`/dev/net/tun` with
 * TUNSETIFF). Everything here owns a file descriptor and closes it in
 * `close()` / `[Symbol.dispose]`; failures name the call, errno and the
 * file.
 *
 * @module
 */

import { cString, errnoName, lastErrno, O_CLOEXEC, O_NONBLOCK, O_RDONLY, O_RDWR, sys } from "./_ffi.ts";

/** A failed host call, with its errno (callers branch on `errno`, e.g. EPERM for a TAP without privileges). */
export class HostIoError extends Error {
  /** The errno value. */
  readonly errno: number;
  constructor(message: string, errno: number) {
    super(message);
    this.name = "HostIoError";
    this.errno = errno;
  }
}

function fail(what: string): never {
  const errno = lastErrno();
  throw new HostIoError(`${what} failed: ${errnoName(errno)}`, errno);
}

const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
const EAGAIN = 11;
const POLLIN = 1;

/**
 * A host file opened for positioned I/O (a disk image).
 *
 * @example
 * ```ts ignore
 * using file = HostFile.open("disk.img", { readOnly: true });
 * const sector = new Uint8Array(512);
 * file.readAt(sector, 0);
 * ```
 */
export class HostFile {
  readonly path: string;
  readonly readOnly: boolean;
  #fd: number;

  private constructor(path: string, fd: number, readOnly: boolean) {
    this.path = path;
    this.#fd = fd;
    this.readOnly = readOnly;
  }

  /** Opens `path` read-write, or read-only. Throws a HostIoError naming the path and errno. */
  static open(path: string, options: { readOnly?: boolean } = {}): HostFile {
    const readOnly = options.readOnly ?? false;
    const fd = sys.open(cString(path), (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC, 0);
    if (fd < 0) fail(`open(${JSON.stringify(path)}${readOnly ? ", read-only" : ""})`);
    return new HostFile(path, fd, readOnly);
  }

  #open(): number {
    if (this.#fd < 0) throw new Error(`Cannot use ${this.path}: it is closed`);
    return this.#fd;
  }

  /** Reads `into.length` bytes at `offset`; returns the count read (short at the end of the file). */
  readAt(into: Uint8Array, offset: number): number {
    let done = 0;
    while (done < into.length) {
      const n = Number(sys.pread(this.#open(), into.subarray(done), BigInt(into.length - done), BigInt(offset + done)));
      if (n < 0) fail(`pread(${this.path}, ${into.length - done} bytes at ${offset + done})`);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** Writes all of `bytes` at `offset`. */
  writeAt(bytes: Uint8Array, offset: number): void {
    let done = 0;
    while (done < bytes.length) {
      const n = Number(
        sys.pwrite(this.#open(), bytes.subarray(done), BigInt(bytes.length - done), BigInt(offset + done)),
      );
      if (n <= 0) fail(`pwrite(${this.path}, ${bytes.length - done} bytes at ${offset + done})`);
      done += n;
    }
  }

  /** fsync(2). */
  sync(): void {
    if (sys.fsync(this.#open()) < 0) fail(`fsync(${this.path})`);
  }

  /** Punches a hole (the range reads as zeros and frees its blocks); false when the file system cannot. */
  punchHole(offset: number, length: number): boolean {
    return sys.fallocate(this.#open(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BigInt(offset), BigInt(length)) ===
      0;
  }

  /** Closes the file. Idempotent. */
  close(): void {
    if (this.#fd < 0) return;
    sys.close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Fills `into` from the host's `getrandom(2)` (the kernel's CSPRNG). */
export function getRandom(into: Uint8Array): void {
  let done = 0;
  while (done < into.length) {
    const n = Number(sys.getrandom(into.subarray(done), BigInt(into.length - done), 0));
    if (n < 0) {
      if (lastErrno() === 4) continue; // EINTR
      fail(`getrandom(${into.length - done} bytes)`);
    }
    done += n;
  }
}

/** An eventfd(2) counter, non-blocking: the far end of KVM_IOEVENTFD and KVM_IRQFD. */
export class EventFd {
  #fd: number;
  readonly #word = new Uint8Array(8);

  constructor() {
    this.#fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (this.#fd < 0) fail("eventfd()");
  }

  /** The descriptor (for KVM). */
  get fd(): number {
    if (this.#fd < 0) throw new Error("Cannot use the eventfd: it is closed");
    return this.#fd;
  }

  /** Adds 1 to the counter (what KVM_IRQFD listens for). */
  signal(): void {
    new DataView(this.#word.buffer).setBigUint64(0, 1n, true);
    if (Number(sys.write(this.fd, this.#word, 8n)) !== 8) fail("write(eventfd)");
  }

  /** Reads and clears the counter; 0 when nothing was signalled. */
  take(): number {
    const n = Number(sys.read(this.fd, this.#word, 8n));
    if (n < 0) {
      if (lastErrno() === EAGAIN) return 0;
      fail("read(eventfd)");
    }
    return Number(new DataView(this.#word.buffer).getBigUint64(0, true));
  }

  close(): void {
    if (this.#fd < 0) return;
    sys.close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
/** struct ifreq is 40 bytes on x86-64: the name (16), then a union whose first member here is the flags (short). */
const IFREQ_SIZE = 40;
const IFNAMSIZ = 16;

/**
 * A TAP device: whole Ethernet frames in and out, no packet-information
 * header and no virtio-net header (offloads off). Reads never block;
 * {@link TapDevice.waitReadable} waits on Deno's pool thread with a bound,
 * so the event loop and the guest keep running.
 */
export class TapDevice {
  /** The interface name the kernel gave (as asked, or tapN). */
  readonly name: string;
  #fd: number;
  readonly #pollFd = new Uint8Array(8);

  private constructor(name: string, fd: number) {
    this.name = name;
    this.#fd = fd;
    const view = new DataView(this.#pollFd.buffer);
    view.setInt32(0, fd, true);
    view.setInt16(4, POLLIN, true);
  }

  /**
   * Opens (or creates, with CAP_NET_ADMIN) the TAP device `name` ("" lets
   * the kernel pick one). Throws a HostIoError: EPERM when the process may
   * not create it, ENOENT without /dev/net/tun.
   */
  static open(name: string): TapDevice {
    const encoded = new TextEncoder().encode(name);
    if (encoded.length >= IFNAMSIZ) throw new RangeError(`Invalid TAP name ${JSON.stringify(name)}: at most 15 bytes`);
    const fd = sys.open(cString("/dev/net/tun"), O_RDWR | O_CLOEXEC | O_NONBLOCK, 0);
    if (fd < 0) fail("open(/dev/net/tun)");
    const ifreq = new Uint8Array(IFREQ_SIZE);
    ifreq.set(encoded);
    new DataView(ifreq.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI, true);
    if (sys.ioctl_buf(fd, TUNSETIFF, ifreq) < 0) {
      const errno = lastErrno();
      sys.close(fd);
      const hint = errno === 1
        ? " (creating a TAP device needs CAP_NET_ADMIN: run as root or create it first with `ip tuntap add`)"
        : "";
      throw new HostIoError(`TUNSETIFF ${JSON.stringify(name)} failed: ${errnoName(errno)}${hint}`, errno);
    }
    const end = ifreq.indexOf(0);
    const given = new TextDecoder().decode(ifreq.subarray(0, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end));
    return new TapDevice(given, fd);
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /** Reads one frame into `into`; returns its length, or 0 when none is waiting. */
  read(into: Uint8Array): number {
    if (this.#fd < 0) return 0;
    const n = Number(sys.read(this.#fd, into, BigInt(into.length)));
    if (n < 0) {
      if (lastErrno() === EAGAIN) return 0;
      fail(`read(${this.name})`);
    }
    return n;
  }

  /** Writes one frame. Returns false when the kernel's queue is full (the frame is dropped, as on a wire). */
  write(frame: Uint8Array): boolean {
    if (this.#fd < 0) return false;
    const n = Number(sys.write(this.#fd, frame, BigInt(frame.length)));
    if (n < 0) {
      if (lastErrno() === EAGAIN) return false;
      fail(`write(${this.name})`);
    }
    return true;
  }

  /** Resolves true when a frame is waiting, false after `timeoutMs` (the wait runs off the event loop's thread). */
  async waitReadable(timeoutMs: number): Promise<boolean> {
    if (this.#fd < 0) return false;
    const pollFd = new Uint8Array(this.#pollFd);
    const n = await sys.poll_blocking(pollFd, 1n, timeoutMs);
    return n > 0 && (new DataView(pollFd.buffer).getInt16(6, true) & POLLIN) !== 0;
  }

  /** True when a frame is waiting now. */
  readable(): boolean {
    if (this.#fd < 0) return false;
    const pollFd = new Uint8Array(this.#pollFd);
    return sys.poll(pollFd, 1n, 0) > 0;
  }

  close(): void {
    if (this.#fd < 0) return;
    sys.close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
