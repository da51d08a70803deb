/*
 * start64.S - entry stub shared by the 64-bit C guests (dbg64, demo).
 *
 * The host enters `_start` in 64-bit long mode with identity-mapped paging,
 * interrupts off and no usable stack. We point RSP at `stack_top` (16 KiB in
 * .bss), clear RBP so frame-pointer backtraces end at main's caller, and call
 * `main`. If main ever returns, the VM halts (`cli; hlt`).
 */
        .intel_syntax noprefix
        .code64

        .section .text.entry, "ax"
        .globl  _start
        .type   _start, @function
_start:
        cli
        cld
        lea     rsp, [rip + stack_top]
        xor     ebp, ebp                /* end of the frame-pointer chain */
        call    main
.Lhalt:
        cli
        hlt
        jmp     .Lhalt
        .size   _start, . - _start

        .section .stack, "aw", @nobits
        .balign 16
        .globl  stack_bottom
        .globl  stack_top
stack_bottom:
        .skip   16384
stack_top:

        .section .note.GNU-stack, "", @progbits
