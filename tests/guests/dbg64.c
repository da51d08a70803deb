/*
 * dbg64.c - ELF64 guest for the debugger tests (dbg64.elf), entry `_start`
 * in lib/start64.S (stack at `stack_top`, then `call main`).
 *
 * Built with frame pointers (every function below starts with
 * `push rbp; mov rbp, rsp`), no inlining and no sibling calls, so a breakpoint in `bump` shows the backtrace
 *   bump <- level3 <- level2 <- level1 <- main (<- _start)
 *
 * main: for iteration = 0..2 (index kept in callee-saved r12 and stored in
 * the global `iteration`): level1(); level3 calls bump(1) BUMPS_PER_CALL (5)
 * times, so `counter` ends at 15. Then use_stack() runs one 64-byte
 * `rep stosb` and one 64-byte `rep movsb` (for step-over-rep tests).
 * Prints "dbg done counter=15\n" and exits with V=0 (status 1).
 * Also exports `answer`, a const u64 = 42 in .rodata. ~1k instructions total.
 */
#include "serial.h"

#define NOINLINE __attribute__((noinline, noclone, used))
#define ITERATIONS 3
#define BUMPS_PER_CALL 5

volatile unsigned long counter;   /* .bss: sum of all bump() arguments */
volatile unsigned long iteration; /* .bss: main's current loop index */
volatile unsigned long stack_sum; /* .bss: result of use_stack() */
const unsigned long answer = 42;  /* .rodata */

unsigned long bump(unsigned long by);
void level3(void);
void level2(void);
void level1(void);
unsigned long use_stack(void);
int main(void);

/* Adds `by` to counter and returns the new value. */
NOINLINE unsigned long bump(unsigned long by) {
  FORCE_FRAME();
  counter += by;
  return counter;
}

/* Calls bump(1) BUMPS_PER_CALL times. */
NOINLINE void level3(void) {
  for (int i = 0; i < BUMPS_PER_CALL; i++) bump(1);
}

NOINLINE void level2(void) { level3(); }

NOINLINE void level1(void) { level2(); }

/* Fills a 64-byte stack buffer with `rep stosb`, copies it to a second one
 * with `rep movsb`, and returns the sum of the copy's first and last bytes
 * (0xa5 + 0xa5 = 0x14a). */
NOINLINE unsigned long use_stack(void) {
  unsigned char src[64], dst[64];
  void *d = src;
  const void *s = src;
  unsigned long n = sizeof src;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(0xa5) : "memory");
  d = dst;
  n = sizeof dst;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
  return (unsigned long)dst[0] + dst[63];
}

NOINLINE int main(void) {
  /* Loop index pinned to the callee-saved r12 (survives the calls). */
  register unsigned long i __asm__("r12");
  for (i = 0; i < ITERATIONS; i++) {
    __asm__ volatile("" : "+r"(i)); /* i is in r12 here (and all along) */
    iteration = i;
    level1();
  }
  stack_sum = use_stack();
  puts("dbg done counter=");
  put_dec(counter);
  putc('\n');
  guest_exit(0);
}
