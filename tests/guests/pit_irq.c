/*
 * pit_irq.c - ELF32 guest for PIT interrupts through the 8259 PIC
 * (pit_irq.elf), entry `_start` in lib/start32.S.
 *
 * Loads a 32-bit IDT (every vector -> "unexpected interrupt\n", V=2, except
 * 0x20 = IRQ 0 and 0x27 = the master's spurious IRQ 7), remaps the PIC pair
 * (ICW1-4: master base 0x20, slave base 0x28), unmasks IRQ 0 only, starts
 * PIT channel 0 as a ~1 kHz rate generator (port 0x43 = 0x34, divisor 1193
 * to port 0x40 low then high byte) and waits with STI for 5 timer
 * interrupts; each one counts and sends a non-specific EOI (0x20 to port
 * 0x20). The LAPIC is left as the host set it up (KVM: the BSP's LINT0 in
 * ExtINT mode, so the PIC reaches the CPU).
 *
 * Host test expects: "pit ticks 5\n", exit V=0 (status 1).
 * Timeout (no 5 ticks within WAIT_SPINS pause loops, ~4 s on the slow test
 * host, >= ~50 ms anywhere): "pit timeout ticks=<n>\n", exit V=1 (status 3).
 */
#include "pc.h"

#define PIT_VECTOR 0x20      /* master base + IRQ 0 */
#define SPURIOUS_VECTOR 0x27 /* master base + IRQ 7 */
#define PIT_DIVISOR 1193     /* 1193182 Hz / 1193 = ~1000 Hz */
#define WANT_TICKS 5
#define WAIT_SPINS 3000000u  /* bound on the wait (the PIT is under test) */

static struct idt_gate idt[IDT_VECTORS];
static volatile unsigned int ticks;

void on_pit(void);
void on_spurious(void);
int main(void);

void on_pit(void) {
  ticks++;
  pic_eoi(0);
}

INTERRUPT_STUB(pit_stub, on_pit);

/* A spurious IRQ 7 is not in service: no EOI. */
void on_spurious(void) {}
INTERRUPT_STUB(spurious_stub, on_spurious);

int main(void) {
  idt_init(idt);
  idt_set_gate(idt, PIT_VECTOR, pit_stub);
  idt_set_gate(idt, SPURIOUS_VECTOR, spurious_stub);

  pic_remap(0x20, 0x28);
  pic_set_masks(0xfe, 0xff); /* IRQ 0 only */
  pit_start(PIT_DIVISOR);

  cpu_sti();
  for (unsigned int i = 0; i < WAIT_SPINS && ticks < WANT_TICKS; i++) cpu_pause();
  cpu_cli();

  unsigned int seen = ticks;
  if (seen < WANT_TICKS) {
    puts("pit timeout ticks=");
    put_dec(seen);
    putc('\n');
    guest_exit(1);
  }
  puts("pit ticks 5\n");
  guest_exit(0);
}
