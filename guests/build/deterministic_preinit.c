/*
 * Preloaded into componentize-py while it builds the guest (LD_PRELOAD), so that the interpreter
 * snapshot it takes does not depend on the machine or the moment of the build:
 *
 * - entropy (getrandom, getentropy, the getrandom syscall) comes from a fixed-seed generator, so
 *   the snapshot's str hash secret and random states are the same in every build;
 * - the real-time clock reads a fixed instant (2000-01-01T00:00:00Z) and the monotonic clocks
 *   advance by one microsecond per reading of the calling thread, so values derived from time
 *   (mimalloc's fallback randomness among them) repeat too.
 *
 * Nothing of this reaches weir at run time: it only affects the build tool's process.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static uint64_t state = 0x853c49e6748fea9bULL;

static void fill(void *buf, size_t n) {
    unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (unsigned char)(state >> 33);
    }
}

ssize_t getrandom(void *buf, size_t n, unsigned flags) {
    (void)flags;
    fill(buf, n);
    return (ssize_t)n;
}

int getentropy(void *buf, size_t n) {
    fill(buf, n);
    return 0;
}

long syscall(long number, ...) {
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_getrandom) {
        fill((void *)a[0], (size_t)a[1]);
        return a[1];
    }
    static long (*real)(long, ...) = 0;
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *) = 0;
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(clock, ts);
    if (r != 0) return r;
    if (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE) {
        ts->tv_sec = 946684800;
        ts->tv_nsec = 0;
    } else if (clock == CLOCK_MONOTONIC || clock == CLOCK_MONOTONIC_COARSE ||
               clock == CLOCK_MONOTONIC_RAW || clock == CLOCK_BOOTTIME) {
        /* Per thread: the guest runs on one thread, whose readings must not depend on how
         * the build tool's other threads happen to be scheduled. */
        static __thread uint64_t ticks = 0;
        uint64_t ns = 1000000000ULL + 1000ULL * ticks++;
        ts->tv_sec = (time_t)(ns / 1000000000ULL);
        ts->tv_nsec = (long)(ns % 1000000000ULL);
    }
    return 0;
}
