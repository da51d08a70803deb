/*
 * mb_hello_entry.S - Multiboot 1 header and entry stub for mb_hello.elf.
 *
 * The header (flags: page-align modules + memory info, no a.out kludge) sits
 * in section .multiboot, which link32.ld places first, i.e. at the start of
 * the PT_LOAD segment (file offset 0x1000, well within the first 8 KiB).
 * The loader enters _start in 32-bit protected mode with EAX = 0x2BADB002
 * and EBX = physical address of the multiboot info struct; we set up a stack
 * and call mb_main(eax, ebx) (cdecl). See mb_hello.c for the behaviour.
 */
        .intel_syntax noprefix
        .code32

#define MB_MAGIC    0x1BADB002
#define MB_FLAGS    0x00000003  /* bit 0: page-align modules, bit 1: memory info */
#define MB_CHECKSUM (-(MB_MAGIC + MB_FLAGS))

        .section .multiboot, "a"
        .balign 4
        .globl  mb_header
mb_header:
        .long   MB_MAGIC
        .long   MB_FLAGS
        .long   MB_CHECKSUM

        .section .text.entry, "ax"
        .globl  _start
        .type   _start, @function
_start:
        cli
        cld
        mov     esp, offset stack_top
        xor     ebp, ebp                /* end of the frame-pointer chain */
        push    ebx                     /* arg 2: multiboot info address */
        push    eax                     /* arg 1: boot loader magic */
        call    mb_main                 /* does not return */
.Lhalt:
        cli
        hlt
        jmp     .Lhalt
        .size   _start, . - _start

        .section .stack, "aw", @nobits
        .balign 16
stack_bottom:
        .skip   8192
        .globl  stack_top
stack_top:

        .section .note.GNU-stack, "", @progbits
