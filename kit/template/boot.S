/*
 * boot.S - a tiny Multiboot 1 kernel, the start `hvsh init` gives you.
 *
 * Prints a banner and its command line on COM1, then reads one command line
 * from COM1: "ping" answers "pong" and exits with 0 through the debug-exit
 * port (0xf4, QEMU's isa-debug-exit: the run's status is (V << 1) | 1);
 * anything else answers "unknown command: ..." and exits with 1.
 *
 * Build: `await assemble("boot.S", { format: "multiboot" })` (gcc and ld,
 * 32-bit, linked at 1 MiB, the .multiboot section first).
 */
        .intel_syntax noprefix
        .code32

        .equ    COM1, 0x3f8
        .equ    COM1_LSR, COM1 + 5
        .equ    LSR_DATA_READY, 0x01
        .equ    LSR_THR_EMPTY, 0x20
        .equ    DEBUG_EXIT, 0xf4
        .equ    MB_MAGIC, 0x1BADB002
        .equ    MB_FLAGS, 0x00000003            /* page-align modules, memory info */
        .equ    MB_INFO_CMDLINE, 0x04           /* info flags bit 2: cmdline is valid */
        .equ    LINE_MAX, 63

        .section .multiboot, "a"
        .balign 4
        .long   MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

        .text
        .globl  _start
_start:
        cli
        cld
        mov     esp, offset stack_top
        mov     ebp, ebx                        /* the multiboot info the loader passed */

        mov     esi, offset banner
        call    puts
        test    dword ptr [ebp], MB_INFO_CMDLINE
        jz      read_command
        mov     esi, offset cmdline_label
        call    puts
        mov     esi, [ebp + 16]                 /* info->cmdline */
        call    puts
        mov     al, '\n'
        call    putc

read_command:                                   /* one line into `line`, NUL-terminated */
        xor     ecx, ecx
1:      call    getc
        cmp     al, '\r'
        je      1b
        cmp     al, '\n'
        je      2f
        cmp     ecx, LINE_MAX
        jae     1b                              /* too long: the rest is dropped */
        mov     [line + ecx], al
        inc     ecx
        jmp     1b
2:      mov     byte ptr [line + ecx], 0

        cmp     ecx, 4
        jne     unknown
        cmp     dword ptr [line], 0x676e6970    /* "ping" */
        jne     unknown
        mov     esi, offset pong
        call    puts
        mov     al, 0
        out     DEBUG_EXIT, al                  /* exit 0: the run's status is 1 */
        jmp     halt

unknown:
        mov     esi, offset unknown_label
        call    puts
        mov     esi, offset line
        call    puts
        mov     al, '\n'
        call    putc
        mov     al, 1
        out     DEBUG_EXIT, al                  /* exit 1: status 3 */
halt:
        cli
        hlt
        jmp     halt

/* putc: sends AL on COM1 once the transmitter is empty. Keeps every register. */
putc:
        push    edx
        push    eax
        mov     dx, COM1_LSR
1:      in      al, dx
        test    al, LSR_THR_EMPTY
        jz      1b
        pop     eax
        mov     dx, COM1
        out     dx, al
        pop     edx
        ret

/* puts: sends the NUL-terminated string at ESI. */
puts:
        lodsb
        test    al, al
        jz      1f
        call    putc
        jmp     puts
1:      ret

/* getc: waits for a byte on COM1 and returns it in AL. */
getc:
        push    edx
        mov     dx, COM1_LSR
1:      in      al, dx
        test    al, LSR_DATA_READY
        jz      1b
        mov     dx, COM1
        in      al, dx
        pop     edx
        ret

        .section .rodata
banner:         .asciz  "mykernel banner v1\n"
cmdline_label:  .asciz  "cmdline: "
pong:           .asciz  "pong\n"
unknown_label:  .asciz  "unknown command: "

        .section .bss
line:   .skip   LINE_MAX + 1
        .balign 16
        .skip   4096
stack_top:

        .section .note.GNU-stack, "", @progbits
