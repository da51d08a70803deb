/*
 * smp_calls.c - ELF64 SMP guest for debugging every vCPU (smp_calls.elf),
 * shaped like kvm-unit-tests' x86/smptest: every vCPU calls `ipi_test(n)`
 * with its own number, one after the other, and the test passes when each
 * call ran on the vCPU it names. Entry `_start` in lib/start64.S (long mode,
 * identity paging from the host); AP start-up in smp64_tramp.S.
 *
 * The host's identity map covers the RAM's GiB only, so the BSP first maps
 * the LAPIC page (a 2 MiB uncached page in a page directory of its own). It
 * software-enables its LAPIC, reads the CPU count from fw_cfg key
 * 0x05, copies the trampoline to 0x8000 with its CR3, and wakes the APs with
 * INIT and two STARTUP IPIs. Each AP enters long mode, takes a stack, checks
 * in (`ap_count`), then waits for its turn (`turn == its APIC id`), calls
 * ipi_test(id), passes the turn on and parks in `cli; hlt`. The BSP calls
 * ipi_test(0) once every AP has checked in (or 5 s of PIT time passed),
 * hands the turn to vCPU 1 and waits, without a time limit (a debugger may
 * hold the vCPUs for as long as it likes), until the last AP is done.
 *
 * ipi_test and smp_id are never inlined: a debugger breaks in ipi_test, sees
 * `n` there (-O1 keeps its location) and can call smp_id() on any vCPU.
 *
 * Host test expects, with `--cpus N` (N = 1..17), APIC ids 0..N-1:
 *   "found N cpus\n", then "ipi called, cpu K\n" for K = 0..N-1 in order,
 *   then "nipis N\n", exit V=0 (status 1).
 * A call on the wrong vCPU prints "but wrong cpu ID\n" and the run ends
 * with exit V=1 (status 3); APs that never check in: "timeout\n", V=2.
 */
#include "pc.h"

#define TRAMPOLINE_BASE 0x8000 /* must match smp64_tramp.S */
#define SIPI_VECTOR (TRAMPOLINE_BASE >> 12)

#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_ASSERT (1u << 14)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)

#define CHECK_IN_MS 5000

extern const unsigned char ap_trampoline_start[];
extern const unsigned char ap_trampoline_end[];
extern unsigned int ap_cr3; /* smp64_tramp.S: the page tables the APs load */

volatile unsigned int ap_count; /* APs that have reached ap_main */
volatile unsigned int turn;     /* the vCPU whose turn it is to call ipi_test */
volatile unsigned int nipis;    /* calls that ran on the vCPU they name */
static volatile int print_lock;

void ap_main(void);
int main(void);

static unsigned long lapic_directory[512] __attribute__((aligned(4096)));

/* Maps 0xfee00000 (identity, uncached) when the host's page tables leave the 4th GiB out. */
static void map_lapic(void) {
  unsigned long cr3;
  __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
  unsigned long *pml4 = (unsigned long *)(cr3 & ~0xfffUL);
  unsigned long *pdpt = (unsigned long *)(pml4[0] & ~0xfffUL);
  if (pdpt[3] & 1) return;
  /* present | writable | PWT | PCD | 2 MiB page */
  lapic_directory[(LAPIC_BASE >> 21) & 511] = (LAPIC_BASE & ~0x1fffffUL) | 0x9b;
  pdpt[3] = (unsigned long)lapic_directory | 3;
  __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

/* This vCPU's number (its APIC id), as smptest's smp_id(). */
__attribute__((noinline)) unsigned int smp_id(void) { return lapic_id(); }

/* Called once on every vCPU with that vCPU's number. */
__attribute__((noinline)) void ipi_test(int n) {
  spin_lock(&print_lock);
  puts("ipi called, cpu ");
  put_dec((unsigned long)n);
  putc('\n');
  if ((unsigned int)n != smp_id()) {
    puts("but wrong cpu ");
    put_dec(smp_id());
    putc('\n');
  } else {
    nipis++;
  }
  spin_unlock(&print_lock);
}

/* Called by ap_entry64 (smp64_tramp.S) on each AP, on its own stack. */
void ap_main(void) {
  unsigned int id = lapic_id();
  __atomic_add_fetch(&ap_count, 1, __ATOMIC_SEQ_CST);
  while (turn != id) cpu_pause();
  ipi_test((int)id);
  __atomic_store_n(&turn, id + 1, __ATOMIC_SEQ_CST);
}

static void send_ipi(unsigned int icr) {
  lapic_write(LAPIC_ICR_HIGH, 0);
  lapic_write(LAPIC_ICR_LOW, icr);
  for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LOW) & LAPIC_ICR_PENDING); i++) cpu_pause();
}

int main(void) {
  map_lapic();
  lapic_enable();
  unsigned int cpus = fw_cfg_present() ? (unsigned int)fw_cfg_read_le(FW_CFG_NB_CPUS, 2) : 1;
  if (cpus == 0) cpus = 1;
  puts("found ");
  put_dec(cpus);
  puts(" cpus\n");

  if (cpus > 1) {
    unsigned long cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    ap_cr3 = (unsigned int)cr3;
    volatile unsigned char *dst = (volatile unsigned char *)TRAMPOLINE_BASE;
    for (const unsigned char *src = ap_trampoline_start; src < ap_trampoline_end; src++) *dst++ = *src;
    send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
    pit_delay_us(10000);
    for (int i = 0; i < 2; i++) {
      send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | SIPI_VECTOR);
      pit_delay_us(200);
    }
    struct pit_clock clock;
    pit_clock_start(&clock);
    while (ap_count < cpus - 1 && pit_clock_ms(&clock) < CHECK_IN_MS) cpu_pause();
    if (ap_count < cpus - 1) {
      puts("timeout\n");
      guest_exit(2);
    }
  }

  ipi_test(0);
  __atomic_store_n(&turn, 1, __ATOMIC_SEQ_CST);
  while (turn < cpus) cpu_pause();

  puts("nipis ");
  put_dec(nipis);
  putc('\n');
  guest_exit(nipis == cpus ? 0 : 1);
}
