/*
 * sleep.S - flat real-mode image (sleep.bin): ACPI S3 suspend and resume.
 *
 * Loaded at 0x7c00 (CS:IP = 0000:7c00). The host puts the FACS address in EBX
 * (vm.platform.facs). The guest writes its resume address into the FACS
 * firmware waking vector, arms the RTC alarm for the next second (every
 * alarm byte "don't care", alarm interrupt enabled), prints "sleeping\n" and
 * writes SLP_TYP 1 | SLP_EN (0x2400) to PM1a_CNT (0x604): the machine sleeps.
 * The RTC alarm wakes it; the CPU resumes in real mode at the waking vector
 * (CS = vector >> 4, other segments 0), which prints "awake\n" and exits with
 * V=0 when PM1a_STS (0x600) has WAK_STS (bit 15) and RTC_STS (bit 10) set,
 * V=2 when not. If the write to PM1a_CNT returns, the guest exits with V=1.
 * Host test expects: "sleeping\nawake\n", exit status (0<<1)|1 = 1.
 */
        .intel_syntax noprefix
        .code16
#include "serial.inc"

.macro CMOS_WRITE index, value
        mov     al, \index
        out     0x70, al
        mov     al, \value
        out     0x71, al
.endm

        .text
        .globl  _start
_start:
        cli
        cld
        xor     ax, ax
        mov     ds, ax
        mov     ss, ax
        mov     sp, 0x7000
        mov     eax, ebx                /* FACS at linear EBX: ES:BX = (EBX >> 4):(EBX & 0xf) */
        shr     eax, 4
        mov     es, ax
        and     bx, 0xf
        mov     dword ptr es:[bx + 12], offset resume
        CMOS_WRITE 0x01, 0xc0           /* seconds alarm: don't care */
        CMOS_WRITE 0x03, 0xc0           /* minutes alarm: don't care */
        CMOS_WRITE 0x05, 0xc0           /* hours alarm: don't care */
        mov     al, 0x0b                /* register B |= AIE */
        out     0x70, al
        in      al, 0x71
        or      al, 0x20
        mov     ah, al
        mov     al, 0x0b
        out     0x70, al
        mov     al, ah
        out     0x71, al
        mov     si, offset sleeping
        SERIAL_PUTS
        mov     dx, 0x604
        mov     ax, 0x2400
        out     dx, ax
        GUEST_EXIT 1                    /* the sleep did not happen */

        .globl  resume
resume:                                 /* CS = resume >> 4, DS = 0: only relative jumps and DS data */
        mov     si, offset awake
        SERIAL_PUTS
        mov     dx, 0x600
        in      ax, dx
        and     ax, 0x8400
        cmp     ax, 0x8400
        jne     1f
        GUEST_EXIT 0
1:      GUEST_EXIT 2

sleeping: .asciz "sleeping\n"
awake:    .asciz "awake\n"

        .section .note.GNU-stack, "", @progbits
