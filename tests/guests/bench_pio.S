/*
 * bench_pio.S - ELF32 guest (bench_pio.elf) linked at 1 MiB.
 *
 * Host sets ECX = N before entry (or builds it with -DPIO_COUNT=N, for runs
 * through `hvsh boot`, which sets no registers: scripts/bench_process.ts). Executes `out 0x80, al` N times (one PIO
 * exit each; N = 0 means none), then writes 0 to the debug-exit port.
 * Host test expects: N exits on port 0x80 (1-byte writes of AL's entry
 * value), then exit status 1. No serial output.
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
#ifdef PIO_COUNT
        mov     ecx, PIO_COUNT
#endif
        test    ecx, ecx
        jz      .Ldone
        .globl  pio_loop
pio_loop:
        out     0x80, al
        dec     ecx
        jnz     pio_loop
.Ldone:
        GUEST_EXIT 0

        .section .note.GNU-stack, "", @progbits
