/*
 * counter_mb.S - Multiboot 1 ELF32 guest (counter_mb.elf) linked at 1 MiB:
 * counter.S for loaders that take only multiboot images (QEMU's -kernel),
 * so the snapshot benchmark runs the same guest under hvsh and QEMU.
 *
 * Counts forever in 32-bit protected mode and prints each count in decimal
 * on its own line on COM1. The count lives in the memory word `count` and
 * in ebx; on a mismatch the guest prints "MISMATCH\n" and exits with status
 * 0x21 through the debug-exit port.
 * Host test expects: lines "0".."n" in order, never "MISMATCH".
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

#define MB_MAGIC    0x1BADB002
#define MB_FLAGS    0x00000003
        .section .multiboot, "a"
        .balign 4
        .long   MB_MAGIC
        .long   MB_FLAGS
        .long   -(MB_MAGIC + MB_FLAGS)

        .section .text.entry, "ax"
        .globl  _start
_start:
        cli
        cld
        mov     esp, offset stack_top
        xor     ebx, ebx
        mov     dword ptr [count], 0
next_count:
        cmp     ebx, dword ptr [count]
        jne     mismatch
        /* Decimal digits of ebx, written backwards ending at digits_end. */
        mov     eax, ebx
        mov     edi, offset digits_end
        mov     byte ptr [edi], 0
        mov     ecx, 10
1:      xor     edx, edx
        div     ecx
        add     dl, '0'
        dec     edi
        mov     byte ptr [edi], dl
        test    eax, eax
        jnz     1b
        mov     esi, edi
        SERIAL_PUTS
        mov     al, '\n'
        SERIAL_PUTC_AL
        inc     ebx
        inc     dword ptr [count]
        mov     ecx, 200
2:      dec     ecx
        jnz     2b
        jmp     next_count

mismatch:
        mov     esi, offset bad
        SERIAL_PUTS
        GUEST_EXIT 0x10

        .section .rodata
bad:    .asciz  "MISMATCH\n"

        .data
count:  .long   0
digits: .skip   24
digits_end:
        .byte   0

        .section .bss
        .balign 16
        .skip   4096
stack_top:

        .section .note.GNU-stack, "", @progbits
