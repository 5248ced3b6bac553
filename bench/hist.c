#include "hist.h"

#include <string.h>

void hist_init(struct hist *h)
{
	memset(h, 0, sizeof *h);
	h->min = UINT64_MAX;
}

/* Values below 2*HIST_SUB get one bucket each (exact); above, each octave
 * [2^k, 2^(k+1)) is split into HIST_SUB equal buckets. */
static unsigned bucket_of(uint64_t v)
{
	if (v < 2u * HIST_SUB)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - HIST_SUB_BITS;	/* >= 1 here */
	unsigned mant = (unsigned)(v >> shift) - HIST_SUB; /* 0..HIST_SUB-1 */
	return 2u * HIST_SUB + (shift - 1u) * HIST_SUB + mant;
}

/* Largest value that falls into bucket b. */
static uint64_t bucket_upper(unsigned b)
{
	if (b < 2u * HIST_SUB)
		return b;
	unsigned shift = (b - 2u * HIST_SUB) / HIST_SUB + 1u;
	uint64_t mant = (b - 2u * HIST_SUB) % HIST_SUB + HIST_SUB;
	return ((mant + 1u) << shift) - 1u;
}

void hist_add(struct hist *h, uint64_t value)
{
	h->buckets[bucket_of(value)]++;
	h->count++;
	if (value < h->min)
		h->min = value;
	if (value > h->max)
		h->max = value;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
	if (src->count == 0)
		return;
	for (unsigned b = 0; b < HIST_BUCKETS; b++)
		dst->buckets[b] += src->buckets[b];
	dst->count += src->count;
	if (src->min < dst->min)
		dst->min = src->min;
	if (src->max > dst->max)
		dst->max = src->max;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
	if (h->count == 0)
		return 0;
	if (q <= 0.0)
		return h->min;
	if (q >= 1.0)
		return h->max;
	/* rank = ceil(q * count), 1-based: the nearest-rank definition */
	uint64_t rank = (uint64_t)(q * (double)h->count);
	if ((double)rank < q * (double)h->count)
		rank++;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned b = 0; b < HIST_BUCKETS; b++) {
		seen += h->buckets[b];
		if (seen >= rank) {
			uint64_t upper = bucket_upper(b);
			return upper > h->max ? h->max : upper;
		}
	}
	return h->max;
}
