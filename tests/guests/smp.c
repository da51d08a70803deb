/*
 * smp.c - ELF32 SMP start-up guest (smp.elf): entry `_start` in
 * lib/start32.S (flat protected mode, paging off), AP trampoline and AP entry
 * in smp_tramp.S.
 *
 * The BSP reads its APIC id, software-enables its LAPIC (SVR bit 8), reads
 * the CPU count from fw_cfg key 0x05 (expected APs = count - 1), copies the
 * real-mode trampoline to 0x8000 and wakes every AP the MP-spec way: INIT IPI
 * to all-excluding-self (ICR 0x000c4500), 10 ms, then STARTUP IPI with vector
 * 0x08 (ICR 0x000c4608, start at 0x0800:0000) twice, 200 us after each. Each
 * AP enters protected mode, takes its own stack, prints "ap <apic id>\n"
 * under a spinlock, increments `ap_count` atomically and parks in
 * `cli; hlt`. The BSP waits (up to 5 s of PIT time) for ap_count to reach
 * the expected count.
 *
 * Host test expects, with `--cpus N` (N = 1..17):
 *   N-1 lines "ap <id>\n" (ids 1..N-1 in any order), then
 *   "bsp 0 saw <N-1> aps\n", exit V=0 (status 1).
 * If the wait times out: the "ap" lines seen, then "timeout <ap_count>\n",
 * exit V=1 (status 3).
 * Without fw_cfg (signature not "QEMU"): "no fw_cfg\n" first, the APs are
 * still started and given 1 s, then "bsp <id> saw <ap_count> aps\n", exit
 * V=2 (status 5).
 *
 * With `keep_running` set to 1 by the host before the run, nobody stops:
 * each AP counts in `ap_spins[id]` forever and the BSP, after its line,
 * counts in `bsp_spins` forever, so a host test can pause every vCPU in the
 * middle of guest code and see whether each one really stopped.
 */
#include "pc.h"

#define TRAMPOLINE_BASE 0x8000 /* must match smp_tramp.S */
#define SIPI_VECTOR (TRAMPOLINE_BASE >> 12)

/* ICR values: shorthand all-excluding-self (bits 18-19 = 3), level assert. */
#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_ASSERT (1u << 14)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)

#define WAIT_MS 5000          /* timeout for the APs to check in */
#define WAIT_MS_NO_FWCFG 1000 /* how long to wait when the count is unknown */

extern const unsigned char ap_trampoline_start[];
extern const unsigned char ap_trampoline_end[];

volatile unsigned int ap_count; /* APs that have printed their line */
volatile unsigned int keep_running; /* set by the host: spin instead of stopping */
volatile unsigned int ap_spins[32]; /* per APIC id, while keep_running */
volatile unsigned int bsp_spins;
static volatile int print_lock; /* serialises whole lines on COM1 */

void ap_main(void);
int main(void);

/* Called by ap_entry32 (smp_tramp.S) on each AP, on its own stack. */
void ap_main(void) {
  unsigned int id = lapic_id();
  spin_lock(&print_lock);
  puts("ap ");
  put_dec(id);
  putc('\n');
  spin_unlock(&print_lock);
  __atomic_add_fetch(&ap_count, 1, __ATOMIC_SEQ_CST);
  if (keep_running) {
    for (;;) ap_spins[id & 31]++;
  }
}

/* Sends an IPI with ICR low `icr` and waits (bounded) until it is delivered. */
static void send_ipi(unsigned int icr) {
  lapic_write(LAPIC_ICR_HIGH, 0); /* destination unused with a shorthand */
  lapic_write(LAPIC_ICR_LOW, icr);
  for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LOW) & LAPIC_ICR_PENDING); i++) cpu_pause();
}

int main(void) {
  unsigned int bsp_id = lapic_id();
  lapic_enable();

  int have_fw_cfg = fw_cfg_present();
  unsigned int expected = 0;
  if (have_fw_cfg) {
    unsigned int cpus = (unsigned int)fw_cfg_read_le(FW_CFG_NB_CPUS, 2);
    expected = cpus > 0 ? cpus - 1 : 0;
  } else {
    puts("no fw_cfg\n");
  }

  /* Copy the trampoline to low memory (a byte loop: no memcpy to link). */
  volatile unsigned char *dst = (volatile unsigned char *)TRAMPOLINE_BASE;
  for (const unsigned char *src = ap_trampoline_start; src < ap_trampoline_end; src++) *dst++ = *src;

  /* INIT, then two STARTUPs (MP spec B.4). */
  send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
  pit_delay_us(10000);
  for (int i = 0; i < 2; i++) {
    send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | SIPI_VECTOR);
    pit_delay_us(200);
  }

  struct pit_clock clock;
  pit_clock_start(&clock);
  if (!have_fw_cfg) {
    while (pit_clock_ms(&clock) < WAIT_MS_NO_FWCFG) cpu_pause();
  } else {
    while (ap_count < expected && pit_clock_ms(&clock) < WAIT_MS) cpu_pause();
  }

  unsigned int seen = ap_count;
  spin_lock(&print_lock);
  if (have_fw_cfg && seen < expected) {
    puts("timeout ");
    put_dec(seen);
    putc('\n');
    guest_exit(1);
  }
  puts("bsp ");
  put_dec(bsp_id);
  puts(" saw ");
  put_dec(seen);
  puts(" aps\n");
  if (keep_running) {
    for (;;) bsp_spins++;
  }
  guest_exit(have_fw_cfg ? 0 : 2);
}
