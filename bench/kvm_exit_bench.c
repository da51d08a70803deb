/*
 * kvm_exit_bench.c - the C baseline for `deno task bench`.
 *
 * A deliberately minimal KVM user space: it does only what a VMM must do to
 * run the tiny ELF32 bench guests, so its cost per exit is the floor that
 * hvsh's Deno FFI run loop is compared against (same machine, same guest,
 * same exit count).
 *
 * Usage:
 *   kvm_exit_bench <guest.elf> <N>   run the guest with ECX = N; print
 *                                    {"exits": n, "seconds": s} where s covers
 *                                    the KVM_RUN loop only
 *   kvm_exit_bench --cold <guest.elf>
 *                                    run the guest, echo its COM1 output to
 *                                    stdout and exit: a cold-start reference
 *                                    for wall-time comparisons
 *
 * Guest contract (tests/guests/lib/serial.inc): writing to port 0xf4 ends the
 * run; port 0x80 writes are ignored; COM1 is at 0x3f8 with its line status
 * register at 0x3fd (reads of 0x60 = transmitter empty and idle).
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
/* Same address as hvsh and QEMU: three pages just below the BIOS area at 4 GiB. */
#define TSS_ADDR 0xfffbd000UL

#define PORT_POST 0x80
#define PORT_DEBUG_EXIT 0xf4
#define PORT_COM1_DATA 0x3f8
#define PORT_COM1_LSR 0x3fd
/* LSR: THR empty (bit 5) | transmitter empty (bit 6): the guest may always send. */
#define LSR_IDLE 0x60

#define CR0_PE 0x1ULL
#define CR0_ET 0x10ULL

/*
 * Copies an ELF32 image's PT_LOAD segments into guest RAM at p_paddr (zeroing
 * the BSS tail) and returns e_entry. Only the subset the bench guests use:
 * little-endian ELF32 i386, physical addresses inside RAM.
 */
static uint32_t load_elf32(const char *path, uint8_t *ram) {
    size_t size;
    uint8_t *file = read_file(path, &size);
    elf_check(size >= sizeof(Elf32_Ehdr), path, "shorter than an ELF header");
    Elf32_Ehdr eh;
    memcpy(&eh, file, sizeof eh);
    elf_check(memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0, path, "bad magic");
    elf_check(eh.e_ident[EI_CLASS] == ELFCLASS32, path, "not ELFCLASS32");
    elf_check(eh.e_ident[EI_DATA] == ELFDATA2LSB, path, "not little-endian");
    elf_check(eh.e_machine == EM_386, path, "not EM_386");
    elf_check(eh.e_phentsize == sizeof(Elf32_Phdr), path, "odd e_phentsize");
    elf_check((uint64_t)eh.e_phoff + (uint64_t)eh.e_phnum * sizeof(Elf32_Phdr) <= size, path,
              "program headers past end of file");
    int loaded = 0;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        Elf32_Phdr ph;
        memcpy(&ph, file + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
        elf_check(ph.p_filesz <= ph.p_memsz, path, "p_filesz > p_memsz");
        elf_check((uint64_t)ph.p_offset + ph.p_filesz <= size, path, "segment past end of file");
        elf_check((uint64_t)ph.p_paddr + ph.p_memsz <= RAM_SIZE, path, "segment outside RAM");
        memcpy(ram + ph.p_paddr, file + ph.p_offset, ph.p_filesz);
        memset(ram + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
        loaded++;
    }
    elf_check(loaded > 0, path, "no PT_LOAD segment");
    free(file);
    return eh.e_entry;
}

/* A flat 4 GiB segment: base 0, limit 0xffffffff with 4 KiB granularity, 32-bit default size. */
static struct kvm_segment flat_segment(uint16_t selector, uint8_t type) {
    struct kvm_segment s = {
        .base = 0,
        .limit = 0xffffffff,
        .selector = selector,
        .type = type,
        .present = 1,
        .dpl = 0,
        .db = 1,
        .s = 1,
        .l = 0,
        .g = 1,
    };
    return s;
}

/*
 * Puts the vCPU straight into 32-bit flat protected mode, paging off. The
 * hidden descriptor caches in kvm_sregs are all the CPU uses until a segment
 * register is reloaded, so no GDT has to exist in guest memory (the bench
 * guests never reload one). TR must be a busy 32-bit TSS for VMX's guest-state
 * checks, as Firecracker sets it.
 */
static void enter_protected_mode(int vcpu, uint32_t entry, uint32_t ecx) {
    struct kvm_sregs sregs;
    xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    sregs.cs = flat_segment(0x08, 0xb); /* execute/read, accessed */
    struct kvm_segment data = flat_segment(0x10, 0x3); /* read/write, accessed */
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.tr = (struct kvm_segment){
        .base = 0, .limit = 0xffff, .selector = 0x18, .type = 11, .present = 1, .s = 0, .g = 0,
    };
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = entry;
    regs.rcx = ecx;
    regs.rflags = 0x2; /* bit 1 is reserved and must be set */
    xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

/* Everything one run needs: the fds and the shared kvm_run page. */
struct machine {
    int kvm, vm, vcpu;
    uint8_t *ram;
    struct kvm_run *run;
};

/* Opens /dev/kvm, creates a VM with 64 MiB of RAM at guest address 0 and one vCPU. */
static struct machine create_machine(void) {
    struct machine m;
    m.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (m.kvm < 0) die("/dev/kvm");
    int version = xioctl(m.kvm, KVM_GET_API_VERSION, NULL, "KVM_GET_API_VERSION");
    if (version != KVM_API_VERSION) {
        fprintf(stderr, "KVM API version %d, expected %d\n", version, KVM_API_VERSION);
        exit(1);
    }
    m.vm = xioctl(m.kvm, KVM_CREATE_VM, (void *)0, "KVM_CREATE_VM");

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

    /* Intel needs the TSS pages placed before the first vCPU exists (real-mode emulation uses them). */
    xioctl(m.vm, KVM_SET_TSS_ADDR, (void *)TSS_ADDR, "KVM_SET_TSS_ADDR");
    /* The same machine as hvsh's default: in-kernel irqchip (before the vCPU) and PIT. */
    xioctl(m.vm, KVM_CREATE_IRQCHIP, (void *)0, "KVM_CREATE_IRQCHIP");
    m.vcpu = xioctl(m.vm, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
    struct kvm_pit_config pit = { .flags = 0 };
    xioctl(m.vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

    int run_size = xioctl(m.kvm, KVM_GET_VCPU_MMAP_SIZE, NULL, "KVM_GET_VCPU_MMAP_SIZE");
    m.run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, m.vcpu, 0);
    if (m.run == MAP_FAILED) die("mmap kvm_run");
    return m;
}

/*
 * Answers one port access. Returns 1 when the guest asked to stop (debug
 * exit). `echo` prints COM1 writes to stdout (cold mode); reads of unknown
 * ports return all ones, like an empty ISA bus.
 */
static int handle_io(struct kvm_run *run, int echo) {
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    uint16_t port = run->io.port;
    if (run->io.direction == KVM_EXIT_IO_OUT) {
        if (port == PORT_DEBUG_EXIT) return 1;
        if (port == PORT_COM1_DATA && echo) {
            /* `rep outsb` may batch several bytes into one exit. */
            fwrite(data, run->io.size, run->io.count, stdout);
        }
        return 0; /* port 0x80 (POST) and anything else: ignored */
    }
    uint8_t value = port == PORT_COM1_LSR ? LSR_IDLE : 0xff;
    memset(data, value, (size_t)run->io.size * run->io.count);
    return 0;
}

/* Ignores MMIO writes; answers reads with all ones (nothing is mapped there). */
static void handle_mmio(struct kvm_run *run) {
    if (!run->mmio.is_write) memset(run->mmio.data, 0xff, run->mmio.len);
}

/* Runs the vCPU until the debug exit; returns the number of exits taken (the final one included). */
static uint64_t run_loop(struct machine *m, int echo) {
    uint64_t exits = 0;
    for (;;) {
        if (ioctl(m->vcpu, KVM_RUN, NULL) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue; /* no signals here, but cheap to tolerate */
            die("KVM_RUN");
        }
        exits++;
        switch (m->run->exit_reason) {
        case KVM_EXIT_IO:
            if (handle_io(m->run, echo)) return exits;
            break;
        case KVM_EXIT_MMIO:
            handle_mmio(m->run);
            break;
        case KVM_EXIT_HLT:
            fprintf(stderr, "guest halted before the debug exit\n");
            exit(1);
        case KVM_EXIT_SHUTDOWN:
            fprintf(stderr, "guest triple-faulted (KVM_EXIT_SHUTDOWN)\n");
            exit(1);
        default:
            fprintf(stderr, "unexpected KVM exit reason %u\n", m->run->exit_reason);
            exit(1);
        }
    }
}

static double now_seconds(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0) die("clock_gettime");
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s <guest.elf> <N>\n       %s --cold <guest.elf>\n", argv0, argv0);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 3) usage(argv[0]);
    int cold = strcmp(argv[1], "--cold") == 0;
    const char *path = cold ? argv[2] : argv[1];
    uint32_t n = 0;
    if (!cold) {
        char *end;
        unsigned long parsed = strtoul(argv[2], &end, 0);
        if (*argv[2] == '\0' || *end != '\0' || parsed > 0xffffffffUL) usage(argv[0]);
        n = (uint32_t)parsed;
    }

    struct machine m = create_machine();
    uint32_t entry = load_elf32(path, m.ram);
    enter_protected_mode(m.vcpu, entry, n);

    if (cold) {
        run_loop(&m, 1);
        fflush(stdout);
        return 0;
    }
    double t0 = now_seconds();
    uint64_t exits = run_loop(&m, 0);
    double seconds = now_seconds() - t0;
    printf("{\"exits\": %llu, \"seconds\": %.9f}\n", (unsigned long long)exits, seconds);
    return 0;
}
