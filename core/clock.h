/* Monotonic time in seconds: deadlines, history ages and flush slices must
 * not move when the wall clock is stepped. (clock_gettime of the monotonic
 * clock is a vDSO call: no system call.) */
#ifndef SLUICE_CLOCK_H
#define SLUICE_CLOCK_H

#include <time.h>

static inline double clock_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
