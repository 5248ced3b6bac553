/* Counters with one writer (the thread that owns them) that any thread
 * may read: relaxed atomic loads and stores, no locked instruction on the
 * hot path, and no data race for a reader in another worker. */
#ifndef SLUICE_COUNTER_H
#define SLUICE_COUNTER_H

#include <stdint.h>

static inline void counter_add(uint64_t *c, uint64_t n)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static inline uint64_t counter_get(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

static inline void gauge_set(uint32_t *g, uint32_t v)
{
    __atomic_store_n(g, v, __ATOMIC_RELAXED);
}

static inline uint32_t gauge_get(const uint32_t *g)
{
    return __atomic_load_n(g, __ATOMIC_RELAXED);
}

#endif
