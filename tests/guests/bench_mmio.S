/*
 * bench_mmio.S - ELF32 guest (bench_mmio.elf) linked at 1 MiB.
 *
 * Host sets ECX = N before entry. Executes `mov dword ptr [0xfe000000], eax`
 * N times (paging is off, so this is physical 0xfe000000: unbacked, one
 * MMIO exit each; N = 0 means none), then writes 0 to the debug-exit port.
 * Host test expects: N 4-byte MMIO writes at 0xfe000000 (value = EAX at
 * entry), then exit status 1. No serial output.
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

#define MMIO_ADDR 0xfe000000

        .text
        .globl  _start
_start:
        cli
        test    ecx, ecx
        jz      .Ldone
        .globl  mmio_loop
mmio_loop:
        mov     dword ptr [MMIO_ADDR], eax
        dec     ecx
        jnz     mmio_loop
.Ldone:
        GUEST_EXIT 0

        .section .note.GNU-stack, "", @progbits
