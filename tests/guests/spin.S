/*
 * spin.S - ELF64 guest (spin.elf) linked at 1 MiB.
 *
 * Prints "spinning\n" on COM1, then spins forever in a one-instruction loop
 * (`spin_here: jmp spin_here`) that causes no VM exits.
 * Host test expects: "spinning\n", then the vCPU never stops on its own
 * (the host must pause/kick it; RIP stays at `spin_here`).
 */
        .intel_syntax noprefix
        .code64
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
        cld
        lea     rsi, [rip + msg]
        SERIAL_PUTS
        .globl  spin_here
spin_here:
        jmp     spin_here

        .section .rodata
msg:    .asciz  "spinning\n"

        .section .note.GNU-stack, "", @progbits
