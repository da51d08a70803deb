/*
 * watch_sites.S - ELF64 guest (watch_sites.elf) linked at 1 MiB, for the
 * watchpoint tests: each kind of write and read whose instruction hvsh must
 * name exactly. Code, data and stack share pages, as in most tiny kernels.
 *
 * Entered at _start in 64-bit long mode (identity-mapped RAM, no IDT).
 *   site_store:  a plain store to `value` (mov [rip+value], rax)
 *   site_call:   a call whose return address lands on the watched stack slot
 *                `slot` (rsp is set so that the push writes it)
 *   site_movs:   rep movsb copying 16 bytes into `buffer`
 *   site_read:   a load from `value`, on the page the code runs from
 * Then prints "sites done\n" and writes 0 to the debug-exit port.
 * Host test expects: serial output "sites done\n", exit status 1.
 */
        .intel_syntax noprefix
        .code64
#include "serial.inc"

        .text
        .globl  _start, site_store, site_call, site_movs, site_read, callee
_start:
        cli
        cld
        lea     rsp, [rip + stack_top]
        mov     rax, 0x1234
site_store:
        mov     [rip + value], rax
        /* The call pushes its return address at rsp - 8: make that `slot`. */
        lea     rsp, [rip + slot + 8]
site_call:
        call    callee
        lea     rsp, [rip + stack_top]
        lea     rsi, [rip + source]
        lea     rdi, [rip + buffer]
        mov     rcx, 16
site_movs:
        rep movsb
site_read:
        mov     rbx, [rip + value]
        lea     rsi, [rip + msg]
        SERIAL_PUTS
        GUEST_EXIT 0

callee:
        ret

        .section .rodata
msg:    .asciz  "sites done\n"
source: .ascii  "0123456789abcdef"

        .data
        .balign 8
        .globl  value, slot, buffer
value:  .quad   0
slot:   .quad   0
buffer: .skip   16

        .section .stack, "aw", @nobits
        .balign 16
        .skip   4096
stack_top:

        .section .note.GNU-stack, "", @progbits
