/* Log-linear latency histogram: bounded memory for any sample count,
 * relative error under 1/64 (~1.6%) per recorded value. */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stdint.h>

/* 64 sub-buckets per power of two; 64-bit values need 58 octaves. */
#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (2u * HIST_SUB + 58u * HIST_SUB)

struct hist {
	uint64_t count;
	uint64_t min;
	uint64_t max;
	uint64_t buckets[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_add(struct hist *h, uint64_t value);
/* Adds every sample of src to dst. */
void hist_merge(struct hist *dst, const struct hist *src);
/* Value at quantile q in [0,1]; exact for min (q=0) and max (q=1),
 * otherwise the upper edge of the bucket holding that rank. 0 if empty. */
uint64_t hist_quantile(const struct hist *h, double q);

#endif
