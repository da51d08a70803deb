/*
 * triple_fault.S - ELF64 guest (triple_fault.elf) linked at 1 MiB.
 *
 * Loads an IDT with limit 0 and base 0, then executes `ud2`. The #UD cannot
 * be delivered (vector beyond the IDT limit -> #GP -> #DF -> shutdown), so
 * the CPU triple-faults. Nothing is printed. (int3 is deliberately avoided.)
 * Host test expects: a shutdown / triple-fault stop (KVM_EXIT_SHUTDOWN).
 */
        .intel_syntax noprefix
        .code64

        .text
        .globl  _start
_start:
        cli
        lidt    [rip + null_idtr]
        .globl  fault_here
fault_here:
        ud2
        jmp     fault_here              /* not reached */

        .section .rodata
        .balign 16
null_idtr:
        .word   0                       /* limit */
        .quad   0                       /* base  */

        .section .note.GNU-stack, "", @progbits
