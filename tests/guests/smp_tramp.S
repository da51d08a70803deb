/*
 * smp_tramp.S - application-processor start-up code for smp.elf (see smp.c).
 *
 * ap_trampoline_start..ap_trampoline_end is 16-bit real-mode code that smp.c
 * copies to TRAMPOLINE_BASE (0x8000) before sending the SIPIs with vector
 * 0x08: each AP then starts in real mode at CS:IP = 0x0800:0000. The copy
 * runs at a different address than it is linked at (in .rodata, ~1 MiB), so
 * it only uses addresses relative to its own start (DS = CS = 0x0800) plus
 * one absolute, link-time address: the 32-bit entry `ap_entry32`, which stays
 * in the loaded image.
 *
 * The trampoline loads its own GDT (a copy of start32.S's flat GDT, inside
 * the trampoline, i.e. in low memory at 0x8000 + offset), sets CR0.PE and far
 * jumps to ap_entry32 with CS = GDT_CODE32. ap_entry32 loads the data
 * segments, claims a stack with `lock xadd` on ap_stack_next (AP_MAX stacks
 * of AP_STACK_SIZE bytes in .bss; an AP beyond AP_MAX parks without one) and
 * calls ap_main() in smp.c, then parks in a `cli; hlt` loop.
 */
        .intel_syntax noprefix

#define TRAMPOLINE_BASE 0x8000  /* must match smp.c */
#define GDT_CODE32      0x08
#define GDT_DATA        0x10
#define AP_MAX          16      /* stacks for up to 16 APs (17 CPUs) */
#define AP_STACK_SIZE   4096

/* ---- 16-bit real-mode trampoline (copied to 0x8000) --------------------- */
        .section .rodata
        .code16
        .balign 16
        .globl  ap_trampoline_start
        .globl  ap_trampoline_end
ap_trampoline_start:
        cli
        cld
        mov     ax, cs                  /* 0x0800 after SIPI vector 0x08 */
        mov     ds, ax
        /* DS-relative operand: DS:offset = 0x8000 + offset = the copy's GDTR */
        lgdt    [.Ltramp_gdtr - ap_trampoline_start]
        mov     eax, cr0
        or      eax, 1                  /* CR0.PE: protected mode */
        mov     cr0, eax
        /* jmp far GDT_CODE32:ap_entry32 with a 32-bit offset (0x66 0xEA ptr16:32) */
        .byte   0x66, 0xea
        .long   ap_entry32
        .short  GDT_CODE32

        .balign 8
.Ltramp_gdt:
        .quad   0                       /* 0x00: null descriptor */
        .quad   0x00cf9b000000ffff      /* 0x08: code32, flat, accessed */
        .quad   0x00cf93000000ffff      /* 0x10: data, flat, accessed */
.Ltramp_gdt_end:
.Ltramp_gdtr:
        .short  .Ltramp_gdt_end - .Ltramp_gdt - 1               /* limit */
        .long   TRAMPOLINE_BASE + (.Ltramp_gdt - ap_trampoline_start) /* base */
ap_trampoline_end:

/* ---- 32-bit AP entry (runs in place, in the loaded image) -------------- */
        .text
        .code32
        .globl  ap_entry32
        .type   ap_entry32, @function
ap_entry32:
        mov     ax, GDT_DATA
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax
        mov     eax, 1
        lock xadd [ap_stack_next], eax  /* eax = this AP's stack index */
        cmp     eax, AP_MAX
        jae     .Lap_park               /* no stack left: park */
        inc     eax
        imul    eax, eax, AP_STACK_SIZE
        add     eax, offset ap_stacks   /* top of stack number index */
        mov     esp, eax
        xor     ebp, ebp                /* end of the frame-pointer chain */
        call    ap_main
.Lap_park:
        cli
        hlt
        jmp     .Lap_park
        .size   ap_entry32, . - ap_entry32

        .data
        .balign 4
ap_stack_next:
        .long   0                       /* next free index into ap_stacks */

        .bss                            /* not .stack: start32.S's stack_top stays last */
        .balign 16
ap_stacks:
        .skip   AP_MAX * AP_STACK_SIZE

        .section .note.GNU-stack, "", @progbits
