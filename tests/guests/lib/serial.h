/*
 * serial.h - tiny freestanding support for the C guests (32- and 64-bit).
 *
 * Everything is `static inline`, so a guest only carries what it uses and
 * there is no library to link. Inline asm uses GCC's default AT&T syntax.
 *
 * Host conventions:
 *   COM1 16550 UART at 0x3f8; LSR at 0x3fd (bit 0 data ready, bit 5 THR empty).
 *   Writing V to port 0xf4 (isa-debug-exit) ends the VM with status (V<<1)|1.
 */
#ifndef HVSH_GUEST_SERIAL_H
#define HVSH_GUEST_SERIAL_H

#define COM1_DATA 0x3f8
#define COM1_LSR (COM1_DATA + 5)
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20
#define DEBUG_EXIT_PORT 0xf4

static inline void outb(unsigned short port, unsigned char value) {
  __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline unsigned char inb(unsigned short port) {
  unsigned char value;
  __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
  return value;
}

/* Transmit one byte (busy-waits on LSR.THRE). */
static inline void putc(char c) {
  while (!(inb(COM1_LSR) & LSR_THR_EMPTY)) {
  }
  outb(COM1_DATA, (unsigned char)c);
}

/* Wait for and return one received byte (busy-waits on LSR.DR). */
static inline char getc(void) {
  while (!(inb(COM1_LSR) & LSR_DATA_READY)) {
  }
  return (char)inb(COM1_DATA);
}

/* Transmit a NUL-terminated string (no newline is appended). */
static inline void puts(const char *s) {
  while (*s) putc(*s++);
}

/* Transmit `v` in decimal, no padding. */
static inline void put_dec(unsigned long v) {
  char buf[20]; /* 2^64-1 has 20 digits */
  int n = 0;
  do {
    buf[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) putc(buf[--n]);
}

/* Transmit the low `digits` nibbles of `v` as lowercase hex, no "0x". */
static inline void put_hex(unsigned long v, int digits) {
  while (digits-- > 0) {
    unsigned d = (unsigned)(v >> (digits * 4)) & 0xf;
    putc((char)(d < 10 ? '0' + d : 'a' + d - 10));
  }
}

/*
 * FORCE_FRAME(): put at the top of a function body to make GCC keep the
 * `push rbp; mov rbp, rsp` prologue even in a leaf function that touches no
 * stack (GCC drops the frame there despite -fno-omit-frame-pointer), so the
 * debugger's frame-pointer backtraces see every function. Emits no code.
 */
#define FORCE_FRAME() __asm__ volatile("" : : "r"(__builtin_frame_address(0)))

/* End the VM via the debug-exit port with status (code<<1)|1; never returns. */
static inline __attribute__((noreturn)) void guest_exit(unsigned char code) {
  outb(DEBUG_EXIT_PORT, code);
  for (;;) __asm__ volatile("cli; hlt");
}

#endif
