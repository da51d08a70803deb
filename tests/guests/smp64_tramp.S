/*
 * smp64_tramp.S - application-processor start-up code for smp_calls.elf
 * (see smp_calls.c): real mode -> protected mode -> long mode.
 *
 * ap_trampoline_start..ap_trampoline_end is copied to TRAMPOLINE_BASE
 * (0x8000); each AP starts there in real mode after SIPI vector 0x08
 * (CS:IP = 0x0800:0000). It loads the GDT kept inside the copy, enters
 * 32-bit protected mode at the copy's own .Ltramp32, turns on PAE, loads the
 * BSP's page tables (`ap_cr3`, written by smp_calls.c before the SIPIs; the
 * host's identity map), sets EFER.LME and CR0.PG, and far-jumps to
 * ap_entry64 in the loaded image with the 64-bit code segment. ap_entry64
 * claims a stack with `lock xadd` on ap_stack_next and calls ap_main(), then
 * parks in a `cli; hlt` loop.
 */
        .intel_syntax noprefix

#define TRAMPOLINE_BASE 0x8000  /* must match smp_calls.c */
#define GDT_CODE32      0x08
#define GDT_DATA        0x10
#define GDT_CODE64      0x18
#define AP_MAX          16
#define AP_STACK_SIZE   4096
#define COPY(label)     (TRAMPOLINE_BASE + (label - ap_trampoline_start))

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
        lgdt    [.Ltramp_gdtr - ap_trampoline_start]
        mov     eax, cr0
        or      eax, 1                  /* CR0.PE */
        mov     cr0, eax
        /* jmp far GDT_CODE32:.Ltramp32 (in the copy), 32-bit offset */
        .byte   0x66, 0xea
        .long   COPY(.Ltramp32)
        .short  GDT_CODE32

        .code32
.Ltramp32:
        mov     ax, GDT_DATA
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     eax, cr4
        or      eax, 0x20               /* CR4.PAE */
        mov     cr4, eax
        mov     eax, [ap_cr3]
        mov     cr3, eax
        mov     ecx, 0xc0000080         /* EFER */
        rdmsr
        or      eax, 0x100              /* EFER.LME */
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000000         /* CR0.PG: long mode is active */
        mov     cr0, eax
        /* jmp far GDT_CODE64:ap_entry64 */
        .byte   0xea
        .long   ap_entry64
        .short  GDT_CODE64

        .balign 8
.Ltramp_gdt:
        .quad   0                       /* 0x00: null */
        .quad   0x00cf9b000000ffff      /* 0x08: code32, flat */
        .quad   0x00cf93000000ffff      /* 0x10: data, flat */
        .quad   0x00af9b000000ffff      /* 0x18: code64 */
.Ltramp_gdt_end:
.Ltramp_gdtr:
        .short  .Ltramp_gdt_end - .Ltramp_gdt - 1
        .long   COPY(.Ltramp_gdt)
ap_trampoline_end:

        .text
        .code64
        .globl  ap_entry64
        .type   ap_entry64, @function
ap_entry64:
        mov     ax, GDT_DATA
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax
        mov     eax, 1
        lock xadd [rip + ap_stack_next], eax
        cmp     eax, AP_MAX
        jae     .Lap_park
        inc     eax
        imul    eax, eax, AP_STACK_SIZE
        lea     rsp, [rip + ap_stacks]
        add     rsp, rax                /* top of stack number index */
        xor     ebp, ebp
        call    ap_main
.Lap_park:
        cli
        hlt
        jmp     .Lap_park
        .size   ap_entry64, . - ap_entry64

        .data
        .balign 4
        .globl  ap_cr3
ap_cr3:
        .long   0
ap_stack_next:
        .long   0

        .bss
        .balign 16
ap_stacks:
        .skip   AP_MAX * AP_STACK_SIZE

        .section .note.GNU-stack, "", @progbits
