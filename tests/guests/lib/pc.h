/*
 * pc.h - freestanding PC-platform helpers for the 32-bit C guests (entry
 * stub lib/start32.S): port I/O, MMIO, a 32-bit IDT with assembly entry
 * stubs, the 8259 PIC pair, the 8254 PIT, the local APIC, QEMU's fw_cfg and
 * a spinlock.
 *
 * Like serial.h (included here), the functions are `static inline`, so a
 * guest carries only what it uses. Assumes flat 32-bit protected mode with
 * paging off, so every physical address (including the LAPIC at 0xfee00000)
 * is reachable as a pointer.
 *
 * Host conventions (see the issue / README):
 *   8259 PIC pair at 0x20/0x21 and 0xa0/0xa1, 8254 PIT at 0x40-0x43
 *     (in-kernel KVM irqchip and PIT);
 *   LAPIC at 0xfee00000 (one per vCPU, same address), IOAPIC at 0xfec00000;
 *   fw_cfg legacy I/O: selector port 0x510 (16-bit write), data port 0x511.
 */
#ifndef HVSH_GUEST_PC_H
#define HVSH_GUEST_PC_H

#include "serial.h"

/* ---- CPU and port I/O --------------------------------------------------- */

/* Selectors of the flat GDT loaded by start32.S. */
#define GDT_CODE32 0x08
#define GDT_DATA 0x10

static inline void outw(unsigned short port, unsigned short value) {
  __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port));
}

static inline void cpu_cli(void) { __asm__ volatile("cli" : : : "memory"); }
static inline void cpu_sti(void) { __asm__ volatile("sti" : : : "memory"); }
static inline void cpu_pause(void) { __asm__ volatile("pause" : : : "memory"); }

/* `sti; hlt`: the STI shadow makes this atomic, so an interrupt that is
 * already pending wakes the HLT instead of being taken just before it. */
static inline void cpu_sti_hlt(void) { __asm__ volatile("sti; hlt" : : : "memory"); }

static inline unsigned int mmio_read32(unsigned long addr) {
  return *(volatile unsigned int *)addr;
}

static inline void mmio_write32(unsigned long addr, unsigned int value) {
  *(volatile unsigned int *)addr = value;
}

/* ---- IDT (32-bit interrupt gates) -------------------------------------- */

/* One 8-byte 32-bit IDT gate descriptor. */
struct idt_gate {
  unsigned short offset_low;  /* handler address bits 0-15 */
  unsigned short selector;    /* code segment: GDT_CODE32 */
  unsigned char zero;
  unsigned char type_attr;    /* 0x8e: present, DPL 0, 32-bit interrupt gate */
  unsigned short offset_high; /* handler address bits 16-31 */
} __attribute__((packed));

#define IDT_VECTORS 256
#define IDT_INTERRUPT_GATE 0x8e

/*
 * Interrupt handlers are plain C functions `void handler(void)` reached
 * through an assembly entry stub declared with
 *   INTERRUPT_STUB(stub_name, handler);
 * which saves the caller-saved registers (EAX, ECX, EDX), clears DF, calls
 * the handler, restores them and jumps to `interrupt_return` (start32.S).
 * interrupt_return does what IRET does for an interrupt taken in ring 0 with
 * the same CS (restore EFLAGS, jump to EIP, drop the 3-word frame) without
 * IRET: on the kvm_pvm test host every guest instruction goes through KVM's
 * x86 emulator, which cannot emulate IRET outside real mode (it reports an
 * emulation failure). Only for vectors without an error code (external
 * interrupts). Put the handler's prototype before the stub if it is defined
 * later; the stub is a global symbol, so pick unique names.
 */
#define INTERRUPT_STUB(stub, handler)        \
  void stub(void);                           \
  __asm__(".pushsection .text\n"             \
          ".globl " #stub "\n"               \
          ".type " #stub ", @function\n"     \
          #stub ":\n"                        \
          "  pushl %eax\n"                   \
          "  pushl %ecx\n"                   \
          "  pushl %edx\n"                   \
          "  cld\n"                          \
          "  call " #handler "\n"            \
          "  popl %edx\n"                    \
          "  popl %ecx\n"                    \
          "  popl %eax\n"                    \
          "  jmp interrupt_return\n"         \
          ".size " #stub ", . - " #stub "\n" \
          ".popsection\n")

/* start32.S: the IRET replacement, and the default entry for every vector
 * nobody installed (prints "unexpected interrupt\n", exits with V=2). */
void interrupt_return(void);
void unexpected_interrupt(void);

static inline void idt_set_gate(struct idt_gate *idt, unsigned vector, void (*stub)(void)) {
  unsigned long addr = (unsigned long)stub;
  idt[vector].offset_low = (unsigned short)(addr & 0xffff);
  idt[vector].selector = GDT_CODE32;
  idt[vector].zero = 0;
  idt[vector].type_attr = IDT_INTERRUPT_GATE;
  idt[vector].offset_high = (unsigned short)(addr >> 16);
}

/* Points all IDT_VECTORS gates at unexpected_interrupt, then loads the IDT. */
static inline void idt_init(struct idt_gate *idt) {
  for (unsigned v = 0; v < IDT_VECTORS; v++) idt_set_gate(idt, v, unexpected_interrupt);
  struct __attribute__((packed)) {
    unsigned short limit;
    unsigned long base;
  } idtr = {IDT_VECTORS * sizeof(struct idt_gate) - 1, (unsigned long)idt};
  __asm__ volatile("lidt %0" : : "m"(idtr) : "memory");
}

/* ---- 8259 PIC pair ------------------------------------------------------ */

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1
#define PIC_EOI 0x20 /* OCW2: non-specific end of interrupt */

/*
 * Re-initialises both PICs (ICW1-ICW4) so IRQ 0-7 raise vectors
 * master_base..+7 and IRQ 8-15 slave_base..+7 (the power-on bases 0x08/0x70
 * collide with CPU exceptions), then masks every IRQ. Call with IF=0.
 */
static inline void pic_remap(unsigned char master_base, unsigned char slave_base) {
  outb(PIC1_CMD, 0x11);        /* ICW1: edge triggered, cascade, ICW4 follows */
  outb(PIC2_CMD, 0x11);
  outb(PIC1_DATA, master_base); /* ICW2: vector base */
  outb(PIC2_DATA, slave_base);
  outb(PIC1_DATA, 0x04);       /* ICW3 master: a slave on IRQ 2 */
  outb(PIC2_DATA, 0x02);       /* ICW3 slave: cascade identity 2 */
  outb(PIC1_DATA, 0x01);       /* ICW4: 8086 mode, normal EOI */
  outb(PIC2_DATA, 0x01);
  outb(PIC1_DATA, 0xff);       /* OCW1: mask everything */
  outb(PIC2_DATA, 0xff);
}

/* OCW1: a set bit masks that IRQ (master IRQ 0-7, slave IRQ 8-15). */
static inline void pic_set_masks(unsigned char master, unsigned char slave) {
  outb(PIC1_DATA, master);
  outb(PIC2_DATA, slave);
}

/* Non-specific EOI for `irq` (the slave too for IRQ 8-15). */
static inline void pic_eoi(unsigned irq) {
  if (irq >= 8) outb(PIC2_CMD, PIC_EOI);
  outb(PIC1_CMD, PIC_EOI);
}

/* ---- 8254 PIT channel 0 ------------------------------------------------- */

#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define PIT_HZ 1193182u
#define PIT_TICKS_PER_MS 1193u
/* Control word: channel 0, lobyte/hibyte access, mode 2 (rate generator), binary. */
#define PIT_CH0_MODE2 0x34
/* Control word: latch channel 0's count. */
#define PIT_CH0_LATCH 0x00

/* Starts channel 0 as a rate generator with `divisor` (0 means 65536):
 * IRQ 0 pulses every divisor / 1.193182 MHz. */
static inline void pit_start(unsigned short divisor) {
  outb(PIT_CMD, PIT_CH0_MODE2);
  outb(PIT_CH0, (unsigned char)(divisor & 0xff));
  outb(PIT_CH0, (unsigned char)(divisor >> 8));
}

/* Latches and reads channel 0's current count (it counts down). */
static inline unsigned short pit_read(void) {
  outb(PIT_CMD, PIT_CH0_LATCH);
  unsigned lo = inb(PIT_CH0);
  unsigned hi = inb(PIT_CH0);
  return (unsigned short)(lo | (hi << 8));
}

/*
 * A real-time clock for timeouts and delays, independent of how fast the
 * guest's instructions run: channel 0 free-runs with divisor 65536 (one wrap
 * per 54.9 ms) and each poll adds the distance counted down since the last
 * one. Poll at least every ~50 ms. Keep IRQ 0 masked (or IF=0) while it runs;
 * pit_clock_start restarts channel 0, so use one clock at a time.
 */
struct pit_clock {
  unsigned short last;  /* count at the previous poll */
  unsigned int ticks;   /* PIT ticks (1/1.193182 MHz) since start */
};

static inline void pit_clock_start(struct pit_clock *clock) {
  pit_start(0);
  clock->last = pit_read();
  clock->ticks = 0;
}

/* Polls the clock; returns the milliseconds since pit_clock_start. */
static inline unsigned int pit_clock_ms(struct pit_clock *clock) {
  unsigned short now = pit_read();
  clock->ticks += (unsigned short)(clock->last - now); /* counts down, mod 2^16 */
  clock->last = now;
  return clock->ticks / PIT_TICKS_PER_MS;
}

/* Busy-waits at least `us` microseconds (up to ~3.5e6) on a fresh pit_clock. */
static inline void pit_delay_us(unsigned int us) {
  struct pit_clock clock;
  pit_clock_start(&clock);
  unsigned int ticks = us * PIT_TICKS_PER_MS / 1000 + 1;
  while (clock.ticks < ticks) {
    pit_clock_ms(&clock);
    cpu_pause();
  }
}

/* ---- Local APIC (xAPIC MMIO) -------------------------------------------- */

#define LAPIC_BASE 0xfee00000u
#define LAPIC_ID 0x020          /* bits 24-31: this CPU's APIC id */
#define LAPIC_EOI 0x0b0         /* write 0: end of interrupt */
#define LAPIC_SVR 0x0f0         /* spurious vector; bit 8 = software enable */
#define LAPIC_ICR_LOW 0x300     /* interrupt command; writing it sends the IPI */
#define LAPIC_ICR_HIGH 0x310    /* bits 24-31: destination */
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_CURRENT 0x390
#define LAPIC_TIMER_DIVIDE 0x3e0

#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xff
#define LAPIC_ICR_PENDING (1u << 12) /* delivery status: send pending */
#define LAPIC_LVT_MASKED (1u << 16)
#define LAPIC_TIMER_PERIODIC (1u << 17)
#define LAPIC_DIVIDE_BY_16 0x3

static inline unsigned int lapic_read(unsigned reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(unsigned reg, unsigned int value) { mmio_write32(LAPIC_BASE + reg, value); }
static inline unsigned int lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

/* Software-enables this CPU's LAPIC, spurious interrupts on vector 0xff. */
static inline void lapic_enable(void) { lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR); }

/* ---- QEMU fw_cfg (legacy I/O interface) --------------------------------- */

#define FW_CFG_PORT_SEL 0x510  /* 16-bit write: select an item, offset 0 */
#define FW_CFG_PORT_DATA 0x511 /* 8-bit reads: the item's next byte */
#define FW_CFG_SIGNATURE 0x00  /* "QEMU" */
#define FW_CFG_RAM_SIZE 0x03   /* u64 LE bytes */
#define FW_CFG_NB_CPUS 0x05    /* u16 LE */
#define FW_CFG_MAX_CPUS 0x0f   /* u16 LE */
#define FW_CFG_CMDLINE_SIZE 0x14 /* u32 LE, including the NUL */
#define FW_CFG_CMDLINE_DATA 0x15 /* the command line bytes */

static inline void fw_cfg_select(unsigned short key) { outw(FW_CFG_PORT_SEL, key); }
static inline unsigned char fw_cfg_read8(void) { return inb(FW_CFG_PORT_DATA); }

/* Selects `key` and reads a little-endian integer of `bytes` (1-8) bytes. */
static inline unsigned long long fw_cfg_read_le(unsigned short key, int bytes) {
  unsigned long long value = 0;
  fw_cfg_select(key);
  for (int i = 0; i < bytes; i++) value |= (unsigned long long)fw_cfg_read8() << (8 * i);
  return value;
}

/* True when the signature item reads "QEMU". */
static inline int fw_cfg_present(void) {
  fw_cfg_select(FW_CFG_SIGNATURE);
  const char *want = "QEMU";
  int ok = 1;
  for (int i = 0; i < 4; i++) ok &= fw_cfg_read8() == (unsigned char)want[i];
  return ok;
}

/* ---- Spinlock ------------------------------------------------------------ */

/* Test-and-set with XCHG (implicitly locked); spins reading until free. */
static inline void spin_lock(volatile int *lock) {
  while (__atomic_exchange_n(lock, 1, __ATOMIC_ACQUIRE) != 0) {
    while (*lock != 0) cpu_pause();
  }
}

static inline void spin_unlock(volatile int *lock) { __atomic_store_n(lock, 0, __ATOMIC_RELEASE); }

#endif
