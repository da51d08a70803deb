/**
 * hvsh's gdbstub: lets GDB debug a hvsh guest over the remote serial
 * protocol, split like the Rust `gdbstub` crate: protocol (framing, packet
 * parsers), stub (the state machine), target (what a debuggee provides, over
 * a {@link Vm}), arch (the x86-64 register layout and target description),
 * plus the server (TCP/Unix socket) and monitor commands.
 *
 * @example
 * ```ts ignore
 * import { listenGdb } from "./mod.ts";
 * const server = listenGdb(vm, { port: 1234 });
 * // gdb -ex 'file kernel.elf' -ex 'target remote 127.0.0.1:1234'
 * ```
 *
 * @module
 */

export * from "./protocol.ts";
export * from "./arch_x86.ts";
export * from "./target.ts";
export * from "./monitor.ts";
export * from "./stub.ts";
export * from "./server.ts";
