/*
 * hello32.S - ELF32 guest (hello32.elf) linked at 1 MiB.
 *
 * Entered at _start in 32-bit flat protected mode, paging off.
 * Prints "hello\n" on COM1, then writes 0 to the debug-exit port.
 * Host test expects: serial output "hello\n", exit status 1.
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
        cld
        mov     esp, offset stack_top
        mov     esi, offset msg
        SERIAL_PUTS
        GUEST_EXIT 0

        .section .rodata
msg:    .asciz  "hello\n"

        .section .stack, "aw", @nobits
        .balign 16
        .skip   4096
stack_top:

        .section .note.GNU-stack, "", @progbits
