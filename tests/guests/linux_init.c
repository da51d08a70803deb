/*
 * /init for the Linux boot tests: a static user program with no libc.
 *
 * On this project's host (nested, emulated KVM) user space runs but cannot
 * make system calls: SYSCALL reaches the kernel still in user mode and
 * `int $0x80` is #UD (DESIGN.md). So /init cannot print; it proves that it
 * ran by writing to an unmapped marker address. The kernel then logs
 *   init[1]: segfault at 48565348 ip ... error 6 in init[...]
 * and, init having died, panics ("Attempted to kill init!"); with
 * `panic=-1` it reboots at once, which ends an `hvsh boot` run.
 *
 * Built by scripts/build_guests.ts: gcc -static -nostdlib -O1.
 */

/* "HVSH" in ASCII: an address no static binary maps (about 1.2 GiB). */
#define INIT_MARKER_ADDRESS 0x48565348UL

void _start(void) {
  *(volatile unsigned long *)INIT_MARKER_ADDRESS = 0x696e6974; /* "init" */
  for (;;) {
  }
}
