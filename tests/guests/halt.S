/*
 * halt.S - ELF32 guest (halt.elf) linked at 1 MiB.
 *
 * Prints "halting\n" on COM1, then executes `cli; hlt`.
 * Host test expects: serial output "halting\n", then a "halt" stop
 * (KVM_EXIT_HLT), with RIP just past the hlt instruction.
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
        cld
        mov     esi, offset msg
        SERIAL_PUTS
        .globl  halt_here
halt_here:
        cli
        hlt
        jmp     halt_here               /* not reached: the VM stops at hlt */

        .section .rodata
msg:    .asciz  "halting\n"

        .section .note.GNU-stack, "", @progbits
