/*
 * rloop.c - ELF64 guest for the reverse-execution tests (rloop.elf), entry
 * `_start` in lib/start64.S (then `call main`).
 *
 * main: for i = 0..4, `total += i * i + 1`, then tick(i) (the tests' breakpoint:
 * it stores total in ticks[i]), then prints "tick I total=T\n" on COM1,
 * which polls the line status register: every character is a port input the
 * replay must answer from the log. Prints "rloop done total=35\n" and exits
 * with V=0 (status 1). A few thousand instructions in all.
 * Host test expects: after reverse-continue from tick's third hit, `total`
 * is 7 and ticks[2] is 0 (as at the second hit); going forward again prints
 * the same lines and exits with status 1.
 */
#include "serial.h"

#define NOINLINE __attribute__((noinline, noclone, used))
#define ROUNDS 5

volatile unsigned long total;
volatile unsigned long ticks[ROUNDS];

void tick(unsigned long i);
int main(void);

/* Remembers the running total of round `i`. */
NOINLINE void tick(unsigned long i) {
  FORCE_FRAME();
  ticks[i] = total;
}

NOINLINE int main(void) {
  FORCE_FRAME();
  for (unsigned long i = 0; i < ROUNDS; i++) {
    total += i * i + 1;
    tick(i);
    puts("tick ");
    put_dec(i);
    puts(" total=");
    put_dec(total);
    putc('\n');
  }
  puts("rloop done total=");
  put_dec(total);
  putc('\n');
  guest_exit(0);
}
