/* Monotonic time in nanoseconds for the load generator's files. */
#ifndef BENCH_CLOCK_H
#define BENCH_CLOCK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NS_PER_S 1000000000ULL

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		perror("loadgen: clock_gettime");	/* cannot happen on Linux */
		exit(2);
	}
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static inline uint64_t secs_to_ns(double s)
{
	return s <= 0 ? 0 : (uint64_t)(s * 1e9);
}

#endif
