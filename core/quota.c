#include "quota.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/queue.h>

#include <uthash.h>


#define NSHARDS 16
#define DEFAULT_MAX_KEYS 100000
/* Entries looked at from the LRU end per call, for idleness or room: a
 * bound on the work under the lock. */
#define EVICT_SCAN 4

struct quota_entry {
    uint64_t key;
    uint32_t open;           /* streams holding a slot */
    double tokens, last;     /* the bucket, as of last (monotonic s) */
    double rate, burst;      /* the limits it was last used with */
    TAILQ_ENTRY(quota_entry) lru;   /* head: most recently used */
    UT_hash_handle hh;
};

struct shard {
    pthread_mutex_t lock;
    struct quota_entry *table;
    TAILQ_HEAD(quota_lru, quota_entry) lru;
    size_t count;
} __attribute__((aligned(64)));   /* one cache line per lock: no false sharing */

static struct shard shards[NSHARDS];
static pthread_once_t shards_ready = PTHREAD_ONCE_INIT;
static size_t shard_cap = DEFAULT_MAX_KEYS / NSHARDS;
static uint64_t refused[4], evicted, keys_now, open_now;   /* atomics */

static void init_shards(void)
{
    for (int i = 0; i < NSHARDS; i++) {
        pthread_mutex_init(&shards[i].lock, NULL);
        TAILQ_INIT(&shards[i].lru);
    }
}

void quota_configure(size_t max_keys)
{
    pthread_once(&shards_ready, init_shards);
    shard_cap = max_keys / NSHARDS ? max_keys / NSHARDS : 1;
}

static void refill(struct quota_entry *e, double now)
{
    if (e->rate > 0 && now > e->last) {
        e->tokens = fmin(e->burst, e->tokens + (now - e->last) * e->rate);
    }
    e->last = now;
}

/* No stream open and a full bucket: the entry says what a fresh one says. */
static bool worthless(struct quota_entry *e, double now)
{
    if (e->open)
        return false;
    refill(e, now);
    return e->rate <= 0 || e->tokens >= e->burst;
}

static void drop(struct shard *s, struct quota_entry *e)
{
    HASH_DEL(s->table, e);
    TAILQ_REMOVE(&s->lru, e, lru);
    s->count--;
    __atomic_sub_fetch(&keys_now, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&evicted, 1, __ATOMIC_RELAXED);
    free(e);
}

/* Drops worthless entries from the LRU end; with need_room, also the
 * least recently used entry that holds no stream, if the shard is full. */
static void tidy(struct shard *s, double now, bool need_room)
{
    struct quota_entry *e = TAILQ_LAST(&s->lru, quota_lru), *prev;
    for (int i = 0; e && i < EVICT_SCAN; i++, e = prev) {
        prev = TAILQ_PREV(e, quota_lru, lru);
        if (worthless(e, now) || (need_room && s->count >= shard_cap && !e->open))
            drop(s, e);
    }
}

enum quota_verdict quota_take(uint64_t key, const struct quota_limits *lim, bool stream,
                              double now, double *retry_after)
{
    pthread_once(&shards_ready, init_shards);
    struct shard *s = &shards[key % NSHARDS];
    enum quota_verdict v = QUOTA_OK;
    *retry_after = 0;
    pthread_mutex_lock(&s->lock);
    struct quota_entry *e;
    HASH_FIND(hh, s->table, &key, sizeof key, e);
    if (e) {
        TAILQ_REMOVE(&s->lru, e, lru);   /* moved to the head below */
        TAILQ_INSERT_HEAD(&s->lru, e, lru);
        tidy(s, now, false);
    } else {
        tidy(s, now, true);
        if (s->count >= shard_cap || !(e = calloc(1, sizeof *e))) {
            v = QUOTA_FULL;
            goto out;
        }
        e->key = key;
        e->tokens = lim->burst;
        e->last = now;
        HASH_ADD(hh, s->table, key, sizeof e->key, e);
        TAILQ_INSERT_HEAD(&s->lru, e, lru);
        s->count++;
        __atomic_add_fetch(&keys_now, 1, __ATOMIC_RELAXED);
    }
    e->rate = lim->rate;
    e->burst = lim->burst;
    refill(e, now);
    if (stream && lim->streams && e->open >= lim->streams) {
        v = QUOTA_STREAMS;
    } else if (lim->rate > 0 && e->tokens < 1) {
        v = QUOTA_RATE;
        *retry_after = ceil((1 - e->tokens) / lim->rate);
    } else {
        if (lim->rate > 0)
            e->tokens -= 1;
        if (stream) {
            e->open++;
            __atomic_add_fetch(&open_now, 1, __ATOMIC_RELAXED);
        }
    }
out:
    pthread_mutex_unlock(&s->lock);
    if (v != QUOTA_OK)
        __atomic_add_fetch(&refused[v], 1, __ATOMIC_RELAXED);
    if (*retry_after < 1 && v == QUOTA_RATE)
        *retry_after = 1;
    return v;
}

void quota_release(uint64_t key)
{
    pthread_once(&shards_ready, init_shards);
    struct shard *s = &shards[key % NSHARDS];
    pthread_mutex_lock(&s->lock);
    struct quota_entry *e;
    HASH_FIND(hh, s->table, &key, sizeof key, e);
    /* Entries holding slots are never dropped, so e is there. */
    if (e && e->open) {
        e->open--;
        __atomic_sub_fetch(&open_now, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&s->lock);
}

void quota_counts(struct quota_counts *out)
{
    out->keys = __atomic_load_n(&keys_now, __ATOMIC_RELAXED);
    out->open = __atomic_load_n(&open_now, __ATOMIC_RELAXED);
    out->refused_streams = __atomic_load_n(&refused[QUOTA_STREAMS], __ATOMIC_RELAXED);
    out->refused_rate = __atomic_load_n(&refused[QUOTA_RATE], __ATOMIC_RELAXED);
    out->refused_full = __atomic_load_n(&refused[QUOTA_FULL], __ATOMIC_RELAXED);
    out->evicted = __atomic_load_n(&evicted, __ATOMIC_RELAXED);
}

void quota_free_all(void)
{
    pthread_once(&shards_ready, init_shards);
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *s = &shards[i];
        pthread_mutex_lock(&s->lock);
        struct quota_entry *e, *tmp;
        HASH_ITER(hh, s->table, e, tmp) {
            HASH_DEL(s->table, e);
            free(e);
        }
        TAILQ_INIT(&s->lru);
        s->count = 0;
        pthread_mutex_unlock(&s->lock);
    }
    __atomic_store_n(&keys_now, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&open_now, 0, __ATOMIC_RELAXED);
}
