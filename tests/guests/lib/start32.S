/*
 * start32.S - entry stub shared by the 32-bit C guests of the PC-platform
 * tests (smp, pit_irq, lapic_timer, serial_irq, fwcfg, madt, reset).
 *
 * The host enters `_start` in 32-bit flat protected mode, paging off,
 * interrupts off, with its own boot GDT at 0x500. We load our own flat GDT
 * (so interrupt gates can name a code selector we know: GDT_CODE32 = 0x08,
 * data GDT_DATA = 0x10, see pc.h), reload every segment register, point ESP at
 * `stack_top` (16 KiB in .bss), clear EBP so frame-pointer backtraces end at
 * main's caller, and call `main`. If main ever returns, the vCPU halts
 * (`cli; hlt`).
 *
 * Also the interrupt plumbing used by pc.h's IDT helpers:
 *   interrupt_return      the IRET replacement every INTERRUPT_STUB ends with
 *   unexpected_interrupt  the default IDT entry: "unexpected interrupt\n", V=2
 */
        .intel_syntax noprefix
        .code32
#include "serial.inc"

#define GDT_CODE32 0x08
#define GDT_DATA   0x10

        .section .text.entry, "ax"
        .globl  _start
        .type   _start, @function
_start:
        cli
        cld
        lgdt    [gdt_descriptor]
        jmp     GDT_CODE32:.Lreload_cs  /* far jump: CS = our code selector */
.Lreload_cs:
        mov     ax, GDT_DATA
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax
        mov     esp, offset stack_top
        xor     ebp, ebp                /* end of the frame-pointer chain */
        call    main
.Lhalt:
        cli
        hlt
        jmp     .Lhalt
        .size   _start, . - _start

/*
 * interrupt_return: entered by a jump with the interrupt frame on the stack,
 *   [esp] = EIP, [esp+4] = CS, [esp+8] = EFLAGS
 * (an interrupt taken in ring 0: no ESP/SS), all other registers as they
 * were when the interrupt hit. Equivalent to IRET for that case, since CS is
 * unchanged: restores EFLAGS (IF included), pops the frame and resumes at
 * EIP. Written without IRET because KVM's instruction emulator, which runs
 * every guest instruction on the kvm_pvm test host, only emulates IRET in
 * real mode. If IF comes back set, an interrupt may be taken between POPFD
 * and RET; it nests harmlessly (the stack then holds just the return EIP).
 */
        .globl  interrupt_return
        .type   interrupt_return, @function
interrupt_return:
        push    eax                     /* eax, EIP, CS, EFLAGS */
        mov     eax, [esp + 4]          /* EIP */
        xchg    eax, [esp + 12]         /* eax, EIP, CS, EIP; eax = EFLAGS */
        mov     [esp + 8], eax          /* eax, EIP, EFLAGS, EIP */
        pop     eax                     /* EIP, EFLAGS, EIP */
        add     esp, 4                  /* EFLAGS, EIP (flags restored next) */
        popfd
        ret
        .size   interrupt_return, . - interrupt_return

/* unexpected_interrupt: default IDT entry (exceptions, stray vectors). */
        .globl  unexpected_interrupt
        .type   unexpected_interrupt, @function
unexpected_interrupt:
        cli
        cld
        mov     esi, offset unexpected_msg
        SERIAL_PUTS
        GUEST_EXIT 2
        .size   unexpected_interrupt, . - unexpected_interrupt

/*
 * The flat GDT: null, 32-bit code (base 0, limit 4 GiB, DPL 0, execute/read),
 * 32-bit data (base 0, limit 4 GiB, DPL 0, read/write).
 */
        .section .rodata
        .balign 8
        .globl  gdt32
gdt32:
        .quad   0                       /* 0x00: null descriptor */
        .quad   0x00cf9b000000ffff      /* 0x08: code32 (accessed bit preset) */
        .quad   0x00cf93000000ffff      /* 0x10: data (accessed bit preset) */
gdt32_end:
        .balign 4
        .short  0                       /* pad: keeps the base 4-byte aligned */
gdt_descriptor:
        .short  gdt32_end - gdt32 - 1   /* limit */
        .long   gdt32                   /* linear base */

unexpected_msg:
        .asciz  "unexpected interrupt\n"

        .section .stack, "aw", @nobits
        .balign 16
        .globl  stack_bottom
        .globl  stack_top
stack_bottom:
        .skip   16384
stack_top:

        .section .note.GNU-stack, "", @progbits
