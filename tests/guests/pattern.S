/*
 * pattern.S - ELF64 guest (pattern.elf) linked at 1 MiB.
 *
 * 1. Fills 64 KiB at physical 0x200000 with u32 words: word i = i * 0x9E3779B1
 *    (mod 2^32), i = 0..16383 (little-endian). ~80k instructions.
 * 2. Reads the 16 bytes the host pre-wrote at physical 0x300000 and prints
 *    them as "seed=<32 lowercase hex digits>\n", bytes in memory order, each
 *    byte high nibble first (bytes 01 02 .. 10 -> "seed=0102...10").
 * 3. Writes 0 to the debug-exit port.
 * Host test expects: the seed line, exit status 1, and the pattern in memory.
 */
        .intel_syntax noprefix
        .code64
#include "serial.inc"

#define PATTERN_ADDR  0x200000
#define PATTERN_WORDS (65536 / 4)
#define GOLDEN        0x9E3779B1
#define SEED_ADDR     0x300000
#define SEED_BYTES    16

/* PUT_HEX_NIBBLE: print the low nibble of AL (0..15) as a hex digit. */
.macro PUT_HEX_NIBBLE
        cmp     al, 10
        jb      .Ldigit\@
        add     al, 'a' - '0' - 10
.Ldigit\@:
        add     al, '0'
        SERIAL_PUTC_AL
.endm

        .text
        .globl  _start
_start:
        cli
        cld

        /* 1. word i = i * GOLDEN: keep a running sum instead of multiplying */
        mov     edi, PATTERN_ADDR
        mov     ecx, PATTERN_WORDS
        xor     eax, eax
        .globl  fill_loop
fill_loop:
        mov     dword ptr [rdi], eax
        add     eax, GOLDEN
        add     rdi, 4
        dec     ecx
        jnz     fill_loop

        /* 2. "seed=" + 16 bytes of hex + "\n" */
        lea     rsi, [rip + seed_msg]
        SERIAL_PUTS
        mov     ebx, SEED_ADDR
        mov     ecx, SEED_BYTES
.Lseed_byte:
        mov     al, byte ptr [rbx]
        shr     al, 4
        PUT_HEX_NIBBLE
        mov     al, byte ptr [rbx]
        and     al, 0x0f
        PUT_HEX_NIBBLE
        inc     rbx
        dec     ecx
        jnz     .Lseed_byte
        mov     al, 0x0a                /* '\n' */
        SERIAL_PUTC_AL

        /* 3. done */
        GUEST_EXIT 0

        .section .rodata
seed_msg:
        .asciz  "seed="

        .section .note.GNU-stack, "", @progbits
