/*
 * exit42.S - ELF32 guest (exit42.elf) linked at 1 MiB.
 *
 * Writes 42 to the debug-exit port without printing anything.
 * Host test expects: no serial output, exit status (42<<1)|1 = 85.
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
        GUEST_EXIT 42

        .section .note.GNU-stack, "", @progbits
