/*
 * hello64.S - ELF64 guest (hello64.elf) linked at 1 MiB.
 *
 * Entered at _start in 64-bit long mode (identity-mapped RAM, no IDT).
 * Prints "hello\n" on COM1, then writes 0 to the debug-exit port.
 * Host test expects: serial output "hello\n", exit status 1.
 */
        .intel_syntax noprefix
        .code64
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
        cld
        lea     rsp, [rip + stack_top]
        lea     rsi, [rip + msg]
        SERIAL_PUTS
        GUEST_EXIT 0

        .section .rodata
msg:    .asciz  "hello\n"

        .section .stack, "aw", @nobits
        .balign 16
        .skip   4096
stack_top:

        .section .note.GNU-stack, "", @progbits
