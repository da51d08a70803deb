/*
 * Helpers shared by the C baselines of scripts/bench.ts: each program is a
 * minimal VMM using raw KVM ioctls, and a bench has no recovery path, so
 * every failure ends the process with a message.
 */
#ifndef HVSH_BENCH_COMMON_H
#define HVSH_BENCH_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Prints what failed with errno's text and ends the process: a bench has no recovery path. */
static void die(const char *what) {
    perror(what);
    exit(1);
}

/* ioctl that must succeed; returns its (non-negative) result. */
static int xioctl(int fd, unsigned long request, void *arg, const char *name) {
    int ret = ioctl(fd, request, arg);
    if (ret < 0) die(name);
    return ret;
}

/* Reads the whole file at `path` into a malloc'd buffer. */
static uint8_t *read_file(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    struct stat st;
    if (fstat(fd, &st) < 0) die("fstat");
    uint8_t *data = malloc((size_t)st.st_size);
    if (data == NULL) die("malloc");
    size_t done = 0;
    while (done < (size_t)st.st_size) {
        ssize_t n = read(fd, data + done, (size_t)st.st_size - done);
        if (n < 0) die("read");
        if (n == 0) break;
        done += (size_t)n;
    }
    close(fd);
    *size = done;
    return data;
}

/* Fails with a message (no errno involved) when an ELF check does not hold. */
static void elf_check(int ok, const char *path, const char *what) {
    if (!ok) {
        fprintf(stderr, "%s: not a loadable ELF image for this bench: %s\n", path, what);
        exit(1);
    }
}

#endif
