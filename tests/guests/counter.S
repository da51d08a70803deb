/*
 * counter.S - ELF64 guest (counter.elf) linked at 1 MiB: the snapshot tests' guest.
 *
 * Counts forever and prints each count in decimal on its own line on COM1:
 * "0\n1\n2\n...". The count lives in three places that must agree: the
 * memory word `count`, r12, and r13 (count + 1000; SSE is not emulated on
 * nested KVM here, so no xmm register); before printing a count the guest
 * checks them and, on any mismatch, prints "MISMATCH\n" and exits
 * with status 0x21 ((0x10 << 1) | 1). A short busy loop between counts keeps
 * the output rate modest.
 * Host test expects: lines "0".."n" in order with no gap or repeat, across
 * any number of snapshot/restore/migration hops; never "MISMATCH".
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
        xor     r12, r12
        mov     qword ptr [rip + count], 0
        lea     r13, [r12 + 1000]
        .globl  next_count
next_count:
        /* The three copies of the count must agree. */
        cmp     r12, qword ptr [rip + count]
        jne     mismatch
        lea     rax, [r12 + 1000]
        cmp     rax, r13
        jne     mismatch
        /* Decimal digits of r12, written backwards into digits_end. */
        mov     rax, r12
        lea     rdi, [rip + digits_end]
        mov     byte ptr [rdi], 0
        mov     rcx, 10
1:      xor     edx, edx
        div     rcx
        add     dl, '0'
        dec     rdi
        mov     byte ptr [rdi], dl
        test    rax, rax
        jnz     1b
        mov     rsi, rdi
        SERIAL_PUTS
        mov     al, '\n'
        SERIAL_PUTC_AL
        /* Count on in all three places. */
        inc     r12
        inc     qword ptr [rip + count]
        lea     r13, [r12 + 1000]
        mov     ecx, 200
2:      dec     ecx
        jnz     2b
        jmp     next_count

mismatch:
        lea     rsi, [rip + bad]
        SERIAL_PUTS
        GUEST_EXIT 0x10

        .section .rodata
bad:    .asciz  "MISMATCH\n"

        .data
        .globl  count
count:  .quad   0
digits: .skip   24
digits_end:
        .byte   0

        .section .stack, "aw", @nobits
        .balign 16
        .skip   4096
stack_top:

        .section .note.GNU-stack, "", @progbits
