/*
 * lapic_timer.c - ELF32 guest for the local APIC timer (lapic_timer.elf),
 * entry `_start` in lib/start32.S.
 *
 * Loads a 32-bit IDT (every vector -> "unexpected interrupt\n", V=2, except
 * 0x40 = the timer and 0xff = the LAPIC spurious vector), remaps the PIC pair
 * to 0x20/0x28 and masks it entirely (so no PIC vector can collide with an
 * exception), software-enables the LAPIC (SVR 0xfee000f0 = 0x1ff), sets the
 * divide configuration (0xfee003e0) to 16, the LVT timer (0xfee00320) to
 * periodic on vector 0x40 and the initial count (0xfee00380) to 100000
 * (1.6 ms per period with KVM's 1 GHz APIC bus), then waits with STI for 3
 * timer interrupts; the handler counts and EOIs (writes 0 to 0xfee000b0).
 * Then it masks the LVT timer and stops the count. The wait is bounded by a
 * PIT-channel-0 clock (polled, IRQ 0 masked): 1 s.
 *
 * Host test expects: "lapic ticks 3\n", exit V=0 (status 1).
 * Timeout: "lapic timeout ticks=<n>\n", exit V=1 (status 3).
 */
#include "pc.h"

#define TIMER_VECTOR 0x40
#define TIMER_INITIAL_COUNT 100000
#define WANT_TICKS 3
#define WAIT_MS 1000

static struct idt_gate idt[IDT_VECTORS];
static volatile unsigned int ticks;

void on_timer(void);
void on_spurious(void);
int main(void);

void on_timer(void) {
  ticks++;
  lapic_write(LAPIC_EOI, 0);
}

INTERRUPT_STUB(timer_stub, on_timer);

/* Spurious LAPIC interrupts are not in service: no EOI. */
void on_spurious(void) {}
INTERRUPT_STUB(spurious_stub, on_spurious);

int main(void) {
  idt_init(idt);
  idt_set_gate(idt, TIMER_VECTOR, timer_stub);
  idt_set_gate(idt, LAPIC_SPURIOUS_VECTOR, spurious_stub);

  pic_remap(0x20, 0x28); /* leaves every PIC IRQ masked */

  lapic_enable();
  lapic_write(LAPIC_TIMER_DIVIDE, LAPIC_DIVIDE_BY_16);
  lapic_write(LAPIC_LVT_TIMER, LAPIC_TIMER_PERIODIC | TIMER_VECTOR);
  lapic_write(LAPIC_TIMER_INITIAL, TIMER_INITIAL_COUNT);

  struct pit_clock clock;
  pit_clock_start(&clock);
  cpu_sti();
  while (ticks < WANT_TICKS && pit_clock_ms(&clock) < WAIT_MS) cpu_pause();
  cpu_cli();

  lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED | TIMER_VECTOR);
  lapic_write(LAPIC_TIMER_INITIAL, 0); /* stops the timer */

  unsigned int seen = ticks;
  if (seen < WANT_TICKS) {
    puts("lapic timeout ticks=");
    put_dec(seen);
    putc('\n');
    guest_exit(1);
  }
  puts("lapic ticks 3\n");
  guest_exit(0);
}
