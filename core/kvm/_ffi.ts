/**
 * The one FFI door: every call from hvsh into libc goes through this file.
 * Nothing above `core/kvm/` may call `Deno.dlopen` or hold raw pointers.
 *
 * Conventions measured on Deno 2.9 (see DESIGN.md): the ioctl request is a
 * `u32` (a bigint `u64` would leave the fast call path), KVM_RUN takes a null
 * pointer, and errno is read from a view over `__errno_location()` straight
 * after the call, on the same thread.
 *
 * @module
 */

// Two symbol tables: Deno prepares each symbol's call path when the library is opened (~0.2 ms a symbol here,
// 37 symbols ~8 ms of a cold start), so the ones a plain run needs (VM and vCPU set-up, guest RAM, KVM_RUN, the
// kick timer) are opened at start and the rest (host files, sockets, eventfds, poll: virtio back ends, snapshot
// files, the unix-socket gdb server) on first use.
const EAGER_SYMBOLS = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u32", "pointer"], result: "i32" },
  ioctl_buf: { name: "ioctl", parameters: ["i32", "u32", "buffer"], result: "i32" },
  ioctl_int: { name: "ioctl", parameters: ["i32", "u32", "usize"], result: "i32" },
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  gettid: { parameters: [], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  tgkill: { parameters: ["i32", "i32", "i32"], result: "i32" },
  timer_create: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  timer_settime: { parameters: ["pointer", "i32", "buffer", "pointer"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
} as const;

const LAZY_SYMBOLS = {
  strerror: { parameters: ["i32"], result: "pointer" },
  timer_delete: { parameters: ["pointer"], result: "i32" },
  access: { parameters: ["buffer", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // Host files, eventfds and TAP devices for the virtio back ends (core/kvm/host_io.ts).
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  fsync: { parameters: ["i32"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  getrandom: { parameters: ["buffer", "usize", "u32"], result: "isize" },
  // Blocking with a timeout, on Deno's pool thread: the event loop stays free while a TAP waits for frames.
  poll_blocking: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  mmap_fixed: {
    name: "mmap",
    parameters: ["u64", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
} as const;

type LazySymbols = Deno.DynamicLibrary<typeof LAZY_SYMBOLS>["symbols"];
let lazySymbols: LazySymbols | undefined;

/** Raw libc symbols. Only `core/kvm/` imports this file. */
export const sys = { ...Deno.dlopen("libc.so.6", EAGER_SYMBOLS).symbols } as
  & Deno.DynamicLibrary<typeof EAGER_SYMBOLS>["symbols"]
  & LazySymbols;
for (const name of Object.keys(LAZY_SYMBOLS) as (keyof LazySymbols)[]) {
  Object.defineProperty(sys, name, {
    enumerable: true,
    get: () => (lazySymbols ??= Deno.dlopen("libc.so.6", LAZY_SYMBOLS).symbols)[name],
  });
}

const errnoCell = new Int32Array(
  Deno.UnsafePointerView.getArrayBuffer(sys.__errno_location()!, 4),
);

/** errno of the last failed libc call on this (the main) thread. */
export function lastErrno(): number {
  return errnoCell[0]!;
}

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  22: "EINVAL",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
};

/** Symbolic name of an errno value, e.g. `EINVAL`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** NUL-terminated C string for FFI `buffer` parameters. */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  const encoded = new TextEncoder().encode(text);
  const out = new Uint8Array(encoded.length + 1);
  out.set(encoded);
  return out;
}

/** Typed views over a region of native memory (a guest RAM mapping, kvm_run). */
export function viewNative(pointer: Deno.PointerObject, size: number): ArrayBuffer {
  return Deno.UnsafePointerView.getArrayBuffer(pointer, size);
}

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_FIXED = 0x10;
export const MFD_CLOEXEC = 1;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;
export const MAP_FAILED = -1n;
export const CLOCK_MONOTONIC = 1;
export const SIGEV_THREAD_ID = 4;

/** Bytes of native memory at an address another thread passed along (e.g. the main vCPU's kvm_run). */
export function viewAddress(address: bigint, size: number): Uint8Array {
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(address)!, size));
}

/** Address of a native pointer as a bigint (0n for null). */
export function pointerValue(pointer: Deno.PointerValue): bigint {
  return BigInt(Deno.UnsafePointer.value(pointer));
}
