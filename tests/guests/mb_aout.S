/*
 * mb_aout.S - Multiboot 1 flat binary using the a.out kludge (mb_aout.bin).
 *
 * The header (at file offset 0) sets flags bit 16, so the loader ignores any
 * ELF format and uses header_addr/load_addr/load_end_addr/bss_end_addr/
 * entry_addr: the file's bytes [0, load_end_addr - load_addr) are loaded at
 * load_addr = 0x100000, [load_end_addr, bss_end_addr) is zeroed, and the
 * guest is entered at entry_addr in 32-bit protected mode with
 * EAX = 0x2BADB002, EBX = multiboot info address.
 *
 * Prints "aout ok\n", then checks that the 4 KiB `bss_area` (in .bss, beyond
 * the loaded bytes) reads all zero: prints "bss ok\n" or "bss dirty\n".
 * Then writes 0 to the debug-exit port.
 * Host test expects: "aout ok\nbss ok\n", exit status 1.
 * (mb_aout.elf beside the .bin holds the symbols; do not load the .elf.)
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

#define MB_MAGIC    0x1BADB002
/* bit 0: page-align modules, bit 1: memory info, bit 16: a.out kludge */
#define MB_FLAGS    0x00010003
#define MB_CHECKSUM (-(MB_MAGIC + MB_FLAGS))

        .section .multiboot, "a"
        .balign 4
mb_header:
        .long   MB_MAGIC
        .long   MB_FLAGS
        .long   MB_CHECKSUM
        .long   mb_header               /* header_addr   */
        .long   __image_start           /* load_addr     (0x100000) */
        .long   __load_end              /* load_end_addr (end of .data) */
        .long   __bss_end               /* bss_end_addr  */
        .long   _start                  /* entry_addr    */

        .text
        .globl  _start
_start:
        cli
        cld
        mov     esp, offset stack_top
        mov     esi, offset aout_msg
        SERIAL_PUTS

        /* every dword of bss_area must be zero: repe scasd stops on the
         * first non-zero dword (ZF=0) or after 1024 dwords (ZF=1) */
        mov     edi, offset bss_area
        mov     ecx, 4096 / 4
        xor     eax, eax
        repe scasd
        mov     esi, offset bss_ok_msg
        je      .Lreport
        mov     esi, offset bss_dirty_msg
.Lreport:
        SERIAL_PUTS
        GUEST_EXIT 0

        .section .rodata
aout_msg:       .asciz  "aout ok\n"
bss_ok_msg:     .asciz  "bss ok\n"
bss_dirty_msg:  .asciz  "bss dirty\n"

        /* Non-empty .data so that load_end_addr is exactly the end of the
         * flat binary that objcopy produces. */
        .data
        .balign 4
        .globl  data_marker
data_marker:
        .long   0xdeadbeef

        .section .bss
        .balign 16
        .globl  bss_area
bss_area:
        .skip   4096

        .section .stack, "aw", @nobits
        .balign 16
        .skip   1024                    /* small stack */
stack_top:

        .section .note.GNU-stack, "", @progbits
