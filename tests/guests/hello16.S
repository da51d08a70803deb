/*
 * hello16.S - flat real-mode image (hello16.bin, 512-byte boot sector).
 *
 * Loaded at physical 0x7c00 and entered with CS:IP = 0000:7c00, other
 * segments 0. Prints "hello\n" on COM1, then writes 0 to the debug-exit port.
 * Host test expects: serial output "hello\n", exit status (0<<1)|1 = 1.
 * The image ends with the 0x55 0xaa boot signature (ignored by hvsh).
 */
        .intel_syntax noprefix
        .code16
#include "serial.inc"

        .text
        .globl  _start
_start:
        cli
        cld
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7000              /* stack below the image */
        mov     si, offset msg
        SERIAL_PUTS
        GUEST_EXIT 0

msg:    .asciz  "hello\n"

        .org    510                     /* boot signature at offset 510 */
        .byte   0x55, 0xaa

        .section .note.GNU-stack, "", @progbits
