/* Quotas of the whole process, shared by every worker: per (route, key)
 * the number of open streams and a token bucket of requests. Keys are
 * keyhash2(route, key) values (core/keyhash.h): the table never holds
 * what a client sent. The limits come with each call (they are the
 * route's, from the script), so a reload changes them at once.
 *
 * Memory is bounded: an entry with no open stream and a full bucket is
 * worth nothing (a fresh entry says the same) and goes first; past
 * --quota-keys entries the least recently used entry without open streams
 * goes, and when every entry holds open streams a new key is refused
 * (QUOTA_FULL). 16 shards, each a mutex, a hash and an LRU list. */
#ifndef SLUICE_QUOTA_H
#define SLUICE_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum quota_verdict {
    QUOTA_OK,
    QUOTA_STREAMS,   /* the key has its cap of open streams */
    QUOTA_RATE,      /* the key's bucket is empty */
    QUOTA_FULL,      /* no room for a new key (every entry holds streams) */
};

struct quota_limits {
    uint32_t streams;   /* open streams per key; 0 = no cap */
    double rate;        /* tokens per second; 0 = no rate limit */
    double burst;       /* bucket size (>= 1 when rate > 0) */
};

/* The bound on entries (--quota-keys); before any worker starts. */
void quota_configure(size_t max_keys);

/* Takes a token and, with stream, an open-stream slot for key, at time now
 * (monotonic seconds). Anything but QUOTA_OK takes nothing and sets
 * *retry_after: whole seconds until a token is due (rate), or 0 when the
 * caller must choose (streams, full). */
enum quota_verdict quota_take(uint64_t key, const struct quota_limits *lim, bool stream,
                              double now, double *retry_after);

/* Gives back a stream slot quota_take gave. */
void quota_release(uint64_t key);

struct quota_counts {
    uint64_t keys;             /* entries now */
    uint64_t open;             /* slots held now */
    uint64_t refused_streams, refused_rate, refused_full;
    uint64_t evicted;          /* entries dropped for room or idleness */
};
void quota_counts(struct quota_counts *out);

/* Frees every entry (the process's exit). */
void quota_free_all(void);

#endif
