/*
 * serial_irq.c - ELF32 guest for COM1 receive interrupts through the 8259
 * PIC (serial_irq.elf), entry `_start` in lib/start32.S.
 *
 * Loads a 32-bit IDT (every vector -> "unexpected interrupt\n", V=2, except
 * 0x24 = IRQ 4 and 0x27 = the master's spurious IRQ 7), remaps the PIC pair
 * to 0x20/0x28 and unmasks IRQ 4 only, sets the UART's IER to 0x01 (received
 * data available) and MCR to DTR|RTS|OUT2 (0x0b), prints "ready\n" and then
 * sleeps in a `sti; hlt` loop. It never polls the UART outside the handler.
 *
 * The IRQ 4 handler drains the receiver (reads 0x3f8 while LSR bit 0 is set,
 * so bytes that arrived before IER was set are taken too and the level-
 * sensitive UART line drops before the edge-triggered PIC's EOI), echoes
 * every byte, then sends EOI (0x20 to port 0x20). After echoing 'q' it
 * prints "\nirq bye\n" and exits.
 *
 * Host test expects: input "abq" (sent at any time, e.g. before "ready")
 *   -> output "ready\nabq\nirq bye\n", exit V=0 (status 1).
 */
#include "pc.h"

#define COM1_IER (COM1_DATA + 1)
#define COM1_MCR (COM1_DATA + 4)
#define IER_RECEIVED_DATA 0x01
#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT2 0x08 /* on a PC, gates the UART's interrupt onto the bus */

#define COM1_IRQ 4
#define COM1_VECTOR (0x20 + COM1_IRQ)
#define SPURIOUS_VECTOR 0x27

static struct idt_gate idt[IDT_VECTORS];

void on_com1(void);
void on_spurious(void);
int main(void);

void on_com1(void) {
  int quit = 0;
  while (inb(COM1_LSR) & LSR_DATA_READY) {
    char c = (char)inb(COM1_DATA);
    putc(c);
    if (c == 'q') quit = 1;
  }
  if (quit) {
    puts("\nirq bye\n");
    guest_exit(0);
  }
  pic_eoi(COM1_IRQ);
}

INTERRUPT_STUB(com1_stub, on_com1);

/* A spurious IRQ 7 is not in service: no EOI. */
void on_spurious(void) {}
INTERRUPT_STUB(spurious_stub, on_spurious);

int main(void) {
  idt_init(idt);
  idt_set_gate(idt, COM1_VECTOR, com1_stub);
  idt_set_gate(idt, SPURIOUS_VECTOR, spurious_stub);

  pic_remap(0x20, 0x28);
  pic_set_masks((unsigned char)~(1u << COM1_IRQ), 0xff);

  outb(COM1_IER, IER_RECEIVED_DATA);
  outb(COM1_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
  puts("ready\n");

  for (;;) cpu_sti_hlt();
}
