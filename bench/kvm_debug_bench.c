/*
 * kvm_debug_bench.c - the C baseline for the debugger rows of `deno task bench`.
 *
 * A deliberately minimal KVM user space that does what a debugger must do,
 * and nothing else, on the same 64-bit guests and the same VM configuration
 * as hvsh (64 MiB of RAM, in-kernel irqchip and PIT, KVM's supported CPUID,
 * long mode with the same identity page tables), so its costs are the floor
 * that hvsh's debugger (`vm.debug`) is compared against.
 *
 * Usage (addresses come from the bench, which reads them from the ELF symbols):
 *   kvm_debug_bench step <guest.elf> <rip> <N>
 *       enter the guest at <rip> (spin.elf's `spin_here`: `jmp .`, no I/O)
 *       and single-step it N times: KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP
 *       [| BLOCKIRQ where KVM offers it, as hvsh sets it]), then N KVM_RUNs,
 *       each of which must be a KVM_EXIT_DEBUG with DR6.BS set. Prints
 *       {"steps": N, "seconds": s}, s covering the N KVM_RUNs.
 *   kvm_debug_bench break <guest.elf> <address> <K> <M>
 *       run the guest from its entry with an int3 planted at <address>
 *       (demo.elf's `tick`); the first hit is untimed (it includes the
 *       guest's start-up), then K more hits are timed, each as a debugger
 *       does it: the stop (KVM_GET_REGS: rip at the int3), restore the
 *       original byte, single-step it, re-plant, continue. Then, in the same
 *       VM, the guest's own pace with no debugger: the breakpoint removed and
 *       guest debugging off, run to the end of the next COM1 line, then time
 *       M more lines (demo.elf prints "tick <n>" every 16 loop iterations,
 *       so that is 16*M iterations; M = 0 skips this phase, for a guest that
 *       prints nothing, as spin.elf with the int3 on its `jmp .`). Prints
 *       {"hits": K, "seconds": s, "lines": M, "loopSeconds": s2}.
 *
 * A software breakpoint is recognised on both paths (see shared DESIGN.md):
 * hardware KVM reports the int3 as KVM_EXIT_DEBUG #BP (KVM_GUESTDBG_USE_SW_BP);
 * nested/emulated KVM reports KVM_EXIT_INTERNAL_ERROR, suberror 1 (emulation
 * failure), with rip at the int3.
 *
 * Guest contract (tests/guests/lib/serial.h): COM1 at 0x3f8, its line status
 * register at 0x3fd (reads of 0x60 = transmitter empty and idle); writing to
 * port 0xf4 ends the guest (an error here: the bench guests never exit).
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"

#define RAM_SIZE (64UL << 20)
/* Same addresses as hvsh and QEMU: just below the BIOS area at 4 GiB. */
#define TSS_ADDR 0xfffbd000UL
#define IDENTITY_MAP_ADDR 0xfffbc000ULL

/* hvsh's BOOT_LAYOUT (core/vcpu.ts): boot GDT, then identity page tables with 2 MiB pages. */
#define GDT_ADDR 0x500
#define PML4_ADDR 0x1000
#define PDPT_ADDR 0x2000
#define PD_ADDR 0x3000
#define SEL_CODE64 0x08
#define SEL_DATA 0x10

#define PORT_DEBUG_EXIT 0xf4
#define PORT_COM1_DATA 0x3f8
#define PORT_COM1_LSR 0x3fd
/* LSR: THR empty (bit 5) | transmitter empty (bit 6): the guest may always send. */
#define LSR_IDLE 0x60

#define CR0_PE 0x1ULL
#define CR0_ET 0x10ULL
#define CR0_NE 0x20ULL
#define CR0_PG 0x80000000ULL
#define CR4_PAE 0x20ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL

#define INT3 0xcc
#define DR6_BS 0x4000ULL
#define EMULATION_FAILURE 1

/* Older uapi headers lack these (KVM_CAP_SET_GUEST_DEBUG2 came with Linux 5.16). */
#ifndef KVM_CAP_SET_GUEST_DEBUG2
#define KVM_CAP_SET_GUEST_DEBUG2 195
#endif
#ifndef KVM_GUESTDBG_BLOCKIRQ
#define KVM_GUESTDBG_BLOCKIRQ 0x00100000
#endif

#define MAX_CPUID_ENTRIES 256

/* Prints a message (no errno involved) and ends the process. */
static void fail(const char *message, unsigned long long value) {
    fprintf(stderr, "%s (0x%llx)\n", message, value);
    exit(1);
}

/*
 * Copies an ELF64 image's PT_LOAD segments into guest RAM at p_paddr (zeroing
 * the BSS tail) and returns e_entry. Only the subset the 64-bit test guests
 * use: little-endian ELF64 x86-64, physical addresses inside RAM.
 */
static uint64_t load_elf64(const char *path, uint8_t *ram) {
    size_t size;
    uint8_t *file = read_file(path, &size);
    elf_check(size >= sizeof(Elf64_Ehdr), path, "shorter than an ELF header");
    Elf64_Ehdr eh;
    memcpy(&eh, file, sizeof eh);
    elf_check(memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0, path, "bad magic");
    elf_check(eh.e_ident[EI_CLASS] == ELFCLASS64, path, "not ELFCLASS64");
    elf_check(eh.e_ident[EI_DATA] == ELFDATA2LSB, path, "not little-endian");
    elf_check(eh.e_machine == EM_X86_64, path, "not EM_X86_64");
    elf_check(eh.e_phentsize == sizeof(Elf64_Phdr), path, "odd e_phentsize");
    elf_check(eh.e_phoff <= size && eh.e_phnum <= (size - eh.e_phoff) / sizeof(Elf64_Phdr), path,
              "program headers past end of file");
    int loaded = 0;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, file + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
        elf_check(ph.p_filesz <= ph.p_memsz, path, "p_filesz > p_memsz");
        elf_check(ph.p_offset <= size && ph.p_filesz <= size - ph.p_offset, path, "segment past end of file");
        elf_check(ph.p_paddr <= RAM_SIZE && ph.p_memsz <= RAM_SIZE - ph.p_paddr, path, "segment outside RAM");
        memcpy(ram + ph.p_paddr, file + ph.p_offset, ph.p_filesz);
        memset(ram + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
        loaded++;
    }
    elf_check(loaded > 0, path, "no PT_LOAD segment");
    free(file);
    return eh.e_entry;
}

/* A flat segment (base 0, 4 GiB, 4 KiB granularity): 64-bit code or 32-bit data, as hvsh sets them. */
static struct kvm_segment flat_segment(uint16_t selector, int code) {
    struct kvm_segment s = {
        .base = 0,
        .limit = 0xffffffff,
        .selector = selector,
        .type = code ? 0xb : 0x3, /* execute/read or read/write, accessed */
        .present = 1,
        .dpl = 0,
        .db = code ? 0 : 1,
        .s = 1,
        .l = code ? 1 : 0,
        .g = 1,
    };
    return s;
}

/*
 * Puts the vCPU in 64-bit long mode at `rip`, exactly as hvsh's
 * Vcpu.enterLongMode does: boot GDT at 0x500, identity page tables covering
 * the RAM with 2 MiB pages, busy 64-bit TSS, all other registers zero.
 */
static void enter_long_mode(int vcpu, uint8_t *ram, uint64_t rip) {
    static const uint64_t gdt[] = {
        0, 0x00af9b000000ffffULL, 0x00cf93000000ffffULL,
        0x00cf9b000000ffffULL, 0x008f9b000000ffffULL, 0x008f93000000ffffULL,
    };
    memcpy(ram + GDT_ADDR, gdt, sizeof gdt);
    uint64_t *pml4 = (uint64_t *)(ram + PML4_ADDR);
    uint64_t *pdpt = (uint64_t *)(ram + PDPT_ADDR);
    uint64_t *pd = (uint64_t *)(ram + PD_ADDR);
    memset(pml4, 0, 0x1000);
    memset(pdpt, 0, 0x1000);
    pml4[0] = PDPT_ADDR | 0x3; /* present | writable */
    pdpt[0] = PD_ADDR | 0x3;   /* RAM < 1 GiB: one page directory */
    for (uint64_t j = 0; j < 512; j++) pd[j] = (j << 21) | 0x83; /* present | writable | 2 MiB page */

    struct kvm_sregs sregs;
    xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    sregs.cs = flat_segment(SEL_CODE64, 1);
    struct kvm_segment data = flat_segment(SEL_DATA, 0);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.tr = (struct kvm_segment){
        .base = 0, .limit = 0x67, .selector = 0, .type = 0xb, .present = 1, .s = 0, .g = 0,
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = sizeof gdt - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = rip;
    regs.rflags = 0x2; /* bit 1 is reserved and must be set */
    xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

/* Everything one run needs: the fds, guest RAM, the shared kvm_run page and the step flags. */
struct machine {
    int kvm, vm, vcpu;
    uint8_t *ram;
    struct kvm_run *run;
    /* KVM_GUESTDBG_BLOCKIRQ where KVM offers it (hvsh adds it to every step), else 0. */
    uint32_t block_irq;
};

/*
 * Opens /dev/kvm and creates a VM configured like hvsh's Vm.create(): TSS and
 * identity-map pages below 4 GiB, in-kernel irqchip, one vCPU with KVM's
 * supported CPUID, a PIT, 64 MiB of RAM at guest address 0.
 */
static struct machine create_machine(void) {
    struct machine m;
    m.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (m.kvm < 0) die("/dev/kvm");
    int version = xioctl(m.kvm, KVM_GET_API_VERSION, NULL, "KVM_GET_API_VERSION");
    if (version != KVM_API_VERSION) fail("unexpected KVM API version", (unsigned long long)version);
    m.vm = xioctl(m.kvm, KVM_CREATE_VM, (void *)0, "KVM_CREATE_VM");
    xioctl(m.vm, KVM_SET_TSS_ADDR, (void *)TSS_ADDR, "KVM_SET_TSS_ADDR");
    uint64_t identity = IDENTITY_MAP_ADDR;
    xioctl(m.vm, KVM_SET_IDENTITY_MAP_ADDR, &identity, "KVM_SET_IDENTITY_MAP_ADDR");
    xioctl(m.vm, KVM_CREATE_IRQCHIP, NULL, "KVM_CREATE_IRQCHIP");

    m.ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m.ram == MAP_FAILED) die("mmap guest RAM");
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = 0,
        .guest_phys_addr = 0,
        .memory_size = RAM_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)m.ram,
    };
    xioctl(m.vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

    m.vcpu = xioctl(m.vm, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
    size_t cpuid_size = sizeof(struct kvm_cpuid2) + MAX_CPUID_ENTRIES * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *cpuid = calloc(1, cpuid_size);
    if (cpuid == NULL) die("calloc");
    cpuid->nent = MAX_CPUID_ENTRIES;
    xioctl(m.kvm, KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID");
    xioctl(m.vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
    free(cpuid);

    struct kvm_pit_config pit = {.flags = 0};
    xioctl(m.vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

    int run_size = xioctl(m.kvm, KVM_GET_VCPU_MMAP_SIZE, NULL, "KVM_GET_VCPU_MMAP_SIZE");
    m.run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, m.vcpu, 0);
    if (m.run == MAP_FAILED) die("mmap kvm_run");

    int debug2 = xioctl(m.vm, KVM_CHECK_EXTENSION, (void *)KVM_CAP_SET_GUEST_DEBUG2, "KVM_CHECK_EXTENSION");
    m.block_irq = ((uint32_t)debug2 & KVM_GUESTDBG_BLOCKIRQ) ? KVM_GUESTDBG_BLOCKIRQ : 0;
    return m;
}

/* KVM_SET_GUEST_DEBUG with `control` (0 turns guest debugging off); no debug registers. */
static void set_guest_debug(struct machine *m, uint32_t control) {
    struct kvm_guest_debug debug;
    memset(&debug, 0, sizeof debug);
    debug.control = control;
    xioctl(m->vcpu, KVM_SET_GUEST_DEBUG, &debug, "KVM_SET_GUEST_DEBUG");
}

/* One KVM_RUN that must succeed (no signals are used here); returns the exit reason. */
static uint32_t run_once(struct machine *m) {
    while (ioctl(m->vcpu, KVM_RUN, NULL) < 0) {
        if (errno != EINTR && errno != EAGAIN) die("KVM_RUN");
    }
    return m->run->exit_reason;
}

/*
 * Answers one port access; returns 1 when a COM1 write was a newline. Reads
 * of unknown ports return all ones, like an empty ISA bus.
 */
static int handle_io(struct kvm_run *run) {
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    uint16_t port = run->io.port;
    if (run->io.direction == KVM_EXIT_IO_OUT) {
        if (port == PORT_DEBUG_EXIT) fail("the guest exited through port 0xf4", port);
        if (port == PORT_COM1_DATA) return memchr(data, '\n', (size_t)run->io.size * run->io.count) != NULL;
        return 0;
    }
    memset(data, port == PORT_COM1_LSR ? LSR_IDLE : 0xff, (size_t)run->io.size * run->io.count);
    return 0;
}

/* Fails on an exit no bench guest should cause. */
static void unexpected_exit(struct machine *m, uint32_t reason) {
    if (reason == KVM_EXIT_INTERNAL_ERROR) fail("KVM internal error, suberror", m->run->internal.suberror);
    fail("unexpected KVM exit reason", reason);
}

static uint64_t get_rip(struct machine *m) {
    struct kvm_regs regs;
    xioctl(m->vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
    return regs.rip;
}

static double now_seconds(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0) die("clock_gettime");
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* `step` mode: N single steps from `rip`; every exit must be a single-step #DB. */
static double bench_step(struct machine *m, uint64_t n) {
    set_guest_debug(m, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | m->block_irq);
    double t0 = now_seconds();
    for (uint64_t i = 0; i < n; i++) {
        uint32_t reason = run_once(m);
        if (reason != KVM_EXIT_DEBUG) unexpected_exit(m, reason);
        if (m->run->debug.arch.exception != 1 || !(m->run->debug.arch.dr6 & DR6_BS)) {
            fail("debug exit that is not a single step, dr6", m->run->debug.arch.dr6);
        }
    }
    return now_seconds() - t0;
}

/*
 * Runs until the planted int3 at `address` stops the guest (either host
 * path), answering port I/O on the way; checks that rip is at the int3.
 */
static void run_to_breakpoint(struct machine *m, uint64_t address) {
    for (;;) {
        uint32_t reason = run_once(m);
        if (reason == KVM_EXIT_IO) {
            handle_io(m->run);
            continue;
        }
        int hit = (reason == KVM_EXIT_INTERNAL_ERROR && m->run->internal.suberror == EMULATION_FAILURE) ||
                  (reason == KVM_EXIT_DEBUG && m->run->debug.arch.exception == 3);
        if (!hit) unexpected_exit(m, reason);
        uint64_t rip = get_rip(m);
        if (rip == address) return;
        if (reason == KVM_EXIT_DEBUG && rip == address + 1) {
            /* Some hosts report #BP as a trap, rip past the int3: move it back. */
            struct kvm_regs regs;
            xioctl(m->vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
            regs.rip = address;
            xioctl(m->vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
            return;
        }
        fail("int3 stop away from the breakpoint, rip", rip);
    }
}

/* Executes the instruction under the breakpoint (original byte restored for one step), then re-plants. */
static void step_over(struct machine *m, uint64_t address, uint8_t original) {
    m->ram[address] = original;
    set_guest_debug(m, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP | KVM_GUESTDBG_SINGLESTEP | m->block_irq);
    uint32_t reason = run_once(m);
    if (reason != KVM_EXIT_DEBUG) unexpected_exit(m, reason);
    if (m->run->debug.arch.exception != 1 || !(m->run->debug.arch.dr6 & DR6_BS)) {
        fail("step over the breakpoint: not a single step, dr6", m->run->debug.arch.dr6);
    }
    m->ram[address] = INT3;
    set_guest_debug(m, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP);
}

/* `break` mode: one untimed hit, then K timed hit + resume round trips. */
static double bench_break(struct machine *m, uint64_t address, uint8_t original, uint64_t k) {
    m->ram[address] = INT3;
    set_guest_debug(m, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP);
    run_to_breakpoint(m, address);
    double t0 = now_seconds();
    for (uint64_t i = 0; i < k; i++) {
        step_over(m, address, original);
        run_to_breakpoint(m, address);
    }
    return now_seconds() - t0;
}

/* Runs until the guest finishes its next COM1 line. */
static void run_to_newline(struct machine *m) {
    for (;;) {
        uint32_t reason = run_once(m);
        if (reason != KVM_EXIT_IO) unexpected_exit(m, reason);
        if (handle_io(m->run)) return;
    }
}

/*
 * The guest's own pace, after `break` mode's hits: breakpoint removed and
 * guest debugging off, time from the end of the next COM1 line to the end of
 * `lines` more.
 */
static double bench_lines(struct machine *m, uint64_t address, uint8_t original, uint64_t lines) {
    if (lines == 0) return 0;
    m->ram[address] = original;
    set_guest_debug(m, 0);
    run_to_newline(m);
    double t0 = now_seconds();
    for (uint64_t i = 0; i < lines; i++) run_to_newline(m);
    return now_seconds() - t0;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s step <guest.elf> <rip> <N>\n"
            "       %s break <guest.elf> <address> <K> <M>\n",
            argv0, argv0);
    exit(2);
}

/* Parses a whole unsigned number (decimal or 0x hex); anything else is a usage error. */
static uint64_t parse_number(const char *text, const char *argv0) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 0);
    if (*text == '\0' || *end != '\0' || errno != 0) usage(argv0);
    return value;
}

int main(int argc, char **argv) {
    int step = argc == 5 && strcmp(argv[1], "step") == 0;
    int brk = argc == 6 && strcmp(argv[1], "break") == 0;
    if (!step && !brk) usage(argv[0]);
    const char *path = argv[2];
    uint64_t address = parse_number(argv[3], argv[0]); /* step: the start rip; break: the breakpoint */
    uint64_t count = parse_number(argv[4], argv[0]);   /* step: N; break: K */
    uint64_t lines = brk ? parse_number(argv[5], argv[0]) : 0;
    if (address >= RAM_SIZE) fail("address outside RAM", address);

    struct machine m = create_machine();
    uint64_t entry = load_elf64(path, m.ram);
    if (step) {
        enter_long_mode(m.vcpu, m.ram, address);
        double seconds = bench_step(&m, count);
        printf("{\"steps\": %llu, \"seconds\": %.9f}\n", (unsigned long long)count, seconds);
    } else {
        uint8_t original = m.ram[address];
        enter_long_mode(m.vcpu, m.ram, entry);
        double seconds = bench_break(&m, address, original, count);
        double loop_seconds = bench_lines(&m, address, original, lines);
        printf("{\"hits\": %llu, \"seconds\": %.9f, \"lines\": %llu, \"loopSeconds\": %.9f}\n",
               (unsigned long long)count, seconds, (unsigned long long)lines, loop_seconds);
    }
    return 0;
}
