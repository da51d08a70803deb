/*
 * demo.c - ELF64 guest for the REPL's demo VM (demo.elf), entry `_start` in
 * lib/start64.S.
 *
 * Prints "hvsh demo guest\n", then loops forever:
 *   tick()                      ticks += 1
 *   last_result = compute(ticks)   fib(ticks % 20), iteratively
 *   every 16 ticks: "tick <ticks>\n"  (tick 16, tick 32, ...)
 *   delay()                     ~2000-iteration busy loop (~4k instructions)
 * Never exits; symbols are kept for the REPL (ticks, last_result, tick,
 * compute, delay, main). Every function keeps a frame-pointer prologue, so
 * rbp-chain backtraces work wherever the VM is paused (after a prologue).
 */
#include "serial.h"

#define NOINLINE __attribute__((noinline, noclone, used))
#define DELAY_ITERATIONS 2000
#define PRINT_EVERY 16

volatile unsigned long ticks;       /* .bss: number of tick() calls */
volatile unsigned long last_result; /* .bss: compute(ticks) of the last tick */

void tick(void);
unsigned long compute(unsigned long n);
void delay(void);
int main(void);

NOINLINE void tick(void) {
  FORCE_FRAME();
  ticks++;
}

/* Returns fib(n % 20) (fib(0) = 0, fib(1) = 1), computed iteratively. */
NOINLINE unsigned long compute(unsigned long n) {
  FORCE_FRAME();
  unsigned long a = 0, b = 1;
  for (n %= 20; n > 0; n--) {
    unsigned long t = a + b;
    a = b;
    b = t;
  }
  return a;
}

/* Busy-waits DELAY_ITERATIONS loop iterations (no VM exits). */
NOINLINE void delay(void) {
  FORCE_FRAME();
  unsigned long n = DELAY_ITERATIONS;
  __asm__ volatile("1: dec %0\n\tjnz 1b" : "+r"(n));
}

NOINLINE int main(void) {
  puts("hvsh demo guest\n");
  for (;;) {
    tick();
    last_result = compute(ticks);
    if (ticks % PRINT_EVERY == 0) {
      puts("tick ");
      put_dec(ticks);
      putc('\n');
    }
    delay();
  }
}
