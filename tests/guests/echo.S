/*
 * echo.S - ELF32 guest (echo.elf) linked at 1 MiB.
 *
 * Loops forever: waits for a byte on COM1 (polling LSR bit 0), echoes it
 * back; when the byte is 'q' (after echoing it) prints "\nbye\n" and writes
 * 0 to the debug-exit port.
 * Host test expects: e.g. input "abq" -> output "abq\nbye\n", exit status 1.
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
        cld
.Lloop:
        SERIAL_GETC_AL
        mov     bl, al                  /* keep the byte: PUTC clobbers AX */
        SERIAL_PUTC_AL
        cmp     bl, 0x71                /* 'q' */
        jne     .Lloop

        mov     esi, offset bye
        SERIAL_PUTS
        GUEST_EXIT 0

        .section .rodata
bye:    .asciz  "\nbye\n"

        .section .note.GNU-stack, "", @progbits
