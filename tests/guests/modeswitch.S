/*
 * modeswitch.S - flat real-mode image (modeswitch.bin, one boot sector) that
 * walks the x86 boot path: real mode -> 32-bit protected mode -> long mode.
 *
 * Loaded at physical 0x7c00 and entered with CS:IP = 0000:7c00, other
 * segments 0 (the symbols, all linear addresses, come from modeswitch.elf):
 *   real_start  (16-bit) prints "real\n", loads the GDT, sets CR0.PE and
 *               far-jumps to 0x08:prot_start;
 *   prot_start  (32-bit) prints "prot\n", builds identity page tables at
 *               0x1000 (PML4) / 0x2000 (PDPT) / 0x3000 (PD: two 2 MiB pages,
 *               the first 4 MiB), sets CR4.PAE, EFER.LME and CR0.PG, and
 *               far-jumps to 0x18:long_start;
 *   long_start  (64-bit) prints "long\n" and writes 0 to the debug-exit port.
 * Host test expects: serial output "real\nprot\nlong\n", exit status 1.
 */
        .intel_syntax noprefix
#include "serial.inc"

#define CODE32_SEL      0x08
#define DATA_SEL        0x10
#define CODE64_SEL      0x18
#define PML4            0x1000
#define PDPT            0x2000
#define PD              0x3000
#define STACK_TOP       0x7000          /* below the image */
#define CR0_PE          0x00000001
#define CR0_PG          0x80000000
#define CR4_PAE         0x00000020
#define MSR_EFER        0xc0000080
#define EFER_LME        0x00000100
#define PTE_P_W         0x003           /* present, writable */
#define PDE_P_W_PS      0x083           /* present, writable, 2 MiB page */

        .text
        .code16
        .globl  _start
        .globl  real_start
_start:
real_start:
        cli
        cld
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, STACK_TOP
        mov     si, offset msg_real
        SERIAL_PUTS
        lgdt    [gdt_descriptor]
        mov     eax, cr0
        or      eax, CR0_PE
        mov     cr0, eax
        ljmp    CODE32_SEL, offset prot_start

        .code32
        .globl  prot_start
prot_start:
        mov     ax, DATA_SEL
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     fs, ax
        mov     gs, ax
        mov     esp, STACK_TOP
        mov     esi, offset msg_prot
        SERIAL_PUTS
        /* Identity map of the first 4 MiB: PML4[0] -> PDPT, PDPT[0] -> PD, PD[0..1] = 2 MiB pages. */
        mov     edi, PML4
        xor     eax, eax
        mov     ecx, 3 * 4096 / 4
        rep     stosd
        mov     dword ptr [PML4], PDPT + PTE_P_W
        mov     dword ptr [PDPT], PD + PTE_P_W
        mov     dword ptr [PD], 0x000000 + PDE_P_W_PS
        mov     dword ptr [PD + 8], 0x200000 + PDE_P_W_PS
        mov     eax, PML4
        mov     cr3, eax
        mov     eax, cr4
        or      eax, CR4_PAE
        mov     cr4, eax
        mov     ecx, MSR_EFER
        rdmsr
        or      eax, EFER_LME
        wrmsr
        mov     eax, cr0
        or      eax, CR0_PG
        mov     cr0, eax                /* long mode is active (EFER.LMA), in 32-bit compatibility code */
        ljmp    CODE64_SEL, offset long_start

        .code64
        .globl  long_start
long_start:
        mov     esi, offset msg_long    /* zero-extended: the image is below 4 GiB */
        SERIAL_PUTS
        GUEST_EXIT 0

        .balign 8
gdt:
        .quad   0                       /* null */
        .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code, base 0, limit 4 GiB */
        .quad   0x00cf92000000ffff      /* 0x10: data, base 0, limit 4 GiB */
        .quad   0x00af9a000000ffff      /* 0x18: 64-bit code (L=1) */
gdt_end:
gdt_descriptor:
        .word   gdt_end - gdt - 1
        .long   gdt

msg_real:
        .asciz  "real\n"
msg_prot:
        .asciz  "prot\n"
msg_long:
        .asciz  "long\n"

        .org    510                     /* boot signature at offset 510 */
        .byte   0x55, 0xaa

        .section .note.GNU-stack, "", @progbits
