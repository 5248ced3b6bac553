#include "bus.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <uthash.h>

#include "clock.h"
#include "frame.h"
#include "log.h"
#include "numfmt.h"
#include "sse.h"

struct hist_entry {
    struct bus_event *ev;
    size_t bytes;                 /* the event and its raw frame, for the bound */
    ev_tstamp at;
};

struct bchan {
    UT_hash_handle hh;
    TAILQ_ENTRY(bchan) idle_link;   /* on the idle list when unused */
    bool idle;
    uint32_t nsubs;               /* subscriptions in the whole process */
    uint32_t *wsubs;              /* subscriptions per worker */
    struct hist_entry *ring;
    uint32_t head, count, cap;
    uint32_t heap_pos;            /* in bus.oldest, or NOT_IN_HEAP */
    size_t cost;                  /* the record's own bytes, in history_bytes */
    size_t history_len;
    double history_ttl;
    /* Every event of this channel with an id >= complete_from is in the
     * ring; an older Last-Event-ID may have missed something. */
    uint64_t complete_from;
    size_t name_len;
    char name[];
};

struct history_rule {
    char *prefix;
    size_t prefix_len;
    size_t history_len;
    double history_ttl;
};

/* Unused channels whose events are all gone from history are kept as small
 * records, so a client resuming on one later is told exactly whether it
 * missed something. Past this many, the oldest record is forgotten and a
 * process-wide watermark stands in for it (conservative: it may cause a
 * reset that an exact record would not). With --max-history-bytes they
 * also count in it, and may take at most half of it. */
#define MAX_IDLE_CHANNELS 65536

struct inbox {
    struct bus_batch q;           /* queued, in id order */
    struct ev_loop *loop;         /* NULL: the worker is not attached */
    ev_async *wake;
};

struct bus {
    pthread_mutex_t lock;
    struct ev_loop *loop;         /* for the sweeper */
    double (*clock)(void);        /* monotonic seconds; a test may set its own */
    unsigned nworkers;
    struct inbox *inboxes;
    struct bus_listener listener;
    struct bus_upstream upstream;   /* cluster mode: set before workers start */
    uint64_t queued_upstream;       /* atomic: publishes handed to it */
    uint64_t published;
    struct bchan *by_name;
    TAILQ_HEAD(, bchan) idle;
    size_t nidle, idle_bytes;
    uint64_t boot_id;             /* ids of this process are > boot_id */
    uint64_t last_id;
    uint64_t forgotten_upto;      /* ids a freed channel may have dropped */
    size_t nsubs, nevents;
    /* Events and channel records: a channel costs memory of its own (its
     * struct, ring, heap slot), which one-event channels would otherwise
     * multiply past the bound unseen. */
    size_t history_bytes, max_history_bytes;   /* max 0: no bound */
    /* Channels with history, as a min-heap on their oldest event's id:
     * the top is where the oldest event of all is, which the global bound
     * drops first. */
    struct bchan **oldest;
    uint32_t oldest_len, oldest_cap;
    struct history_rule *rules;
    size_t nrules;
    bool sweeping;                /* iterating by_name: no destroying */
    ev_timer sweeper;
};

static bool inbox_empty(const struct inbox *in)
{
    return in->q.len == 0 && !in->q.resumed && !in->q.notices && !in->q.answers;
}

static void lock(struct bus *b)
{
    pthread_mutex_lock(&b->lock);
}

static void unlock(struct bus *b)
{
    pthread_mutex_unlock(&b->lock);
}

void bus_event_unref(struct bus_event *ev)
{
    if (ev && __atomic_sub_fetch(&ev->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        frame_unref(ev->raw);
        free(ev);
    }
}

static struct bus_event *event_ref(struct bus_event *ev)
{
    __atomic_add_fetch(&ev->refs, 1, __ATOMIC_RELAXED);
    return ev;
}

/* ---- history ---------------------------------------------------------- */

#define NOT_IN_HEAP UINT32_MAX

/* What malloc adds to a block (header, rounding), and a channel's share of
 * uthash's bucket table: estimates, so the bound holds for RSS too. */
#define ALLOC_OVERHEAD 16
#define HASH_SHARE 16

static size_t channel_cost(const struct bchan *ch)
{
    size_t n = sizeof *ch + ch->name_len + 1 + ALLOC_OVERHEAD + HASH_SHARE;
    if (ch->ring)
        n += sizeof *ch->ring * ch->cap + ALLOC_OVERHEAD;
    if (ch->heap_pos != NOT_IN_HEAP)
        n += sizeof(struct bchan *);
    return n;
}

/* After anything that changes what ch holds besides its events. */
static void recount(struct bus *cs, struct bchan *ch)
{
    size_t cost = channel_cost(ch);
    cs->history_bytes = cs->history_bytes - ch->cost + cost;
    ch->cost = cost;
}

static struct hist_entry *ring_at(struct bchan *ch, uint32_t i)
{
    return &ch->ring[(ch->head + i) % ch->cap];
}

static uint64_t oldest_id(struct bchan *ch)
{
    return ring_at(ch, 0)->ev->src.id;
}

static void heap_set(struct bus *cs, uint32_t i, struct bchan *ch)
{
    cs->oldest[i] = ch;
    ch->heap_pos = i;
}

static void heap_up(struct bus *cs, uint32_t i)
{
    struct bchan *ch = cs->oldest[i];
    uint64_t id = oldest_id(ch);
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (oldest_id(cs->oldest[parent]) <= id)
            break;
        heap_set(cs, i, cs->oldest[parent]);
        i = parent;
    }
    heap_set(cs, i, ch);
}

static void heap_down(struct bus *cs, uint32_t i)
{
    struct bchan *ch = cs->oldest[i];
    uint64_t id = oldest_id(ch);
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= cs->oldest_len)
            break;
        if (child + 1 < cs->oldest_len &&
            oldest_id(cs->oldest[child + 1]) < oldest_id(cs->oldest[child]))
            child++;
        if (id <= oldest_id(cs->oldest[child]))
            break;
        heap_set(cs, i, cs->oldest[child]);
        i = child;
    }
    heap_set(cs, i, ch);
}

/* Room for one more channel, so that adding one cannot fail later. */
static bool heap_reserve(struct bus *cs)
{
    if (cs->oldest_len < cs->oldest_cap)
        return true;
    uint32_t cap = cs->oldest_cap ? cs->oldest_cap * 2 : 64;
    struct bchan **a = realloc(cs->oldest, sizeof *a * cap);
    if (!a)
        return false;
    cs->oldest = a;
    cs->oldest_cap = cap;
    return true;
}

static void heap_remove(struct bus *cs, struct bchan *ch)
{
    uint32_t i = ch->heap_pos;
    ch->heap_pos = NOT_IN_HEAP;
    struct bchan *last = cs->oldest[--cs->oldest_len];
    if (last == ch)
        return;
    heap_set(cs, i, last);
    heap_up(cs, i);
    heap_down(cs, last->heap_pos);
}

static void entry_free(struct hist_entry *e)
{
    bus_event_unref(e->ev);
}

/* False if out of memory: the old ring stays, still correct. */
static bool ring_resize(struct bchan *ch, uint32_t cap)
{
    struct hist_entry *ring = malloc(sizeof *ring * cap);
    if (!ring)
        return false;
    for (uint32_t i = 0; i < ch->count; i++)
        ring[i] = *ring_at(ch, i);
    free(ch->ring);
    ch->ring = ring;
    ch->cap = cap;
    ch->head = 0;
    return true;
}

static void evict_oldest(struct bus *cs, struct bchan *ch)
{
    struct hist_entry *e = ring_at(ch, 0);
    ch->complete_from = e->ev->src.id + 1;
    cs->history_bytes -= e->bytes;
    entry_free(e);
    ch->head = (ch->head + 1) % ch->cap;
    ch->count--;
    cs->nevents--;
    if (ch->count) {
        heap_down(cs, ch->heap_pos);   /* its oldest is younger now */
    } else {
        heap_remove(cs, ch);
        recount(cs, ch);
    }
}

/* A ring stays at most 4x larger than what it holds, so memory follows
 * the history bound down too. */
static void shrink_ring(struct bus *cs, struct bchan *ch)
{
    if (ch->count && ch->cap > 8 && ch->count < ch->cap / 4 &&
        ring_resize(ch, ch->cap / 2))   /* a failed shrink costs nothing */
        recount(cs, ch);
}

static void release_if_unused(struct bus *cs, struct bchan *ch);
static void forget_oldest_idle(struct bus *cs);

/* The global bound: drop the oldest events of all; a channel emptied
 * here is released at once (except keep, which the caller still uses and
 * releases itself). Idle records may take up to half the bound: past it,
 * or with no event left to drop, the oldest are forgotten. */
static void trim_history(struct bus *cs, struct bchan *keep)
{
    while (cs->max_history_bytes && cs->history_bytes > cs->max_history_bytes) {
        if (!cs->sweeping && !TAILQ_EMPTY(&cs->idle) &&
            (cs->idle_bytes > cs->max_history_bytes / 2 || !cs->oldest_len)) {
            forget_oldest_idle(cs);
            continue;
        }
        if (!cs->oldest_len)
            break;   /* only records of subscribed channels are left */
        struct bchan *ch = cs->oldest[0];
        evict_oldest(cs, ch);
        shrink_ring(cs, ch);
        if (ch != keep)
            release_if_unused(cs, ch);
    }
}

static void evict_expired(struct bus *cs, struct bchan *ch, ev_tstamp now)
{
    while (ch->count && (ch->count > ch->history_len ||
                         ring_at(ch, 0)->at + ch->history_ttl <= now))
        evict_oldest(cs, ch);
    shrink_ring(cs, ch);
}

static bool ring_reserve(struct bchan *ch)
{
    /* A full ring at its limit is fine: the caller evicts the oldest. */
    if (ch->count < ch->cap || ch->cap >= ch->history_len)
        return true;
    uint32_t cap = ch->cap ? ch->cap * 2 : 8;
    if (cap > ch->history_len)
        cap = (uint32_t)ch->history_len;
    return ring_resize(ch, cap);
}

/* ---- channels --------------------------------------------------------- */

static const struct history_rule *rule_for(const struct bus *cs,
                                           const char *name, size_t len)
{
    const struct history_rule *best = NULL;
    for (size_t i = 0; i < cs->nrules; i++) {
        const struct history_rule *r = &cs->rules[i];
        if (r->prefix_len <= len && memcmp(r->prefix, name, r->prefix_len) == 0 &&
            (!best || r->prefix_len > best->prefix_len))
            best = r;
    }
    return best;
}

static void apply_rule(const struct bus *cs, struct bchan *ch)
{
    const struct history_rule *r = rule_for(cs, ch->name, ch->name_len);
    ch->history_len = r->history_len;
    ch->history_ttl = r->history_ttl;
}

static void set_busy(struct bus *cs, struct bchan *ch)
{
    if (!ch->idle)
        return;
    TAILQ_REMOVE(&cs->idle, ch, idle_link);
    ch->idle = false;
    cs->nidle--;
    cs->idle_bytes -= ch->cost;
}

static struct bchan *find(struct bus *cs, const char *name, size_t len)
{
    struct bchan *ch = NULL;
    HASH_FIND(hh, cs->by_name, name, len, ch);
    if (ch)
        set_busy(cs, ch);
    return ch;
}

static uint64_t first_unknown(const struct bus *cs)
{
    return (cs->forgotten_upto > cs->boot_id ? cs->forgotten_upto : cs->boot_id) + 1;
}

static void destroy(struct bus *cs, struct bchan *ch)
{
    set_busy(cs, ch);
    while (ch->count)
        evict_oldest(cs, ch);
    HASH_DEL(cs->by_name, ch);
    cs->history_bytes -= ch->cost;
    free(ch->ring);
    free(ch->wsubs);
    free(ch);
}

static struct bchan *get(struct bus *cs, const char *name, size_t len)
{
    struct bchan *ch = find(cs, name, len);
    if (ch)
        return ch;
    ch = calloc(1, sizeof *ch + len + 1);
    if (!ch)
        return NULL;
    ch->wsubs = calloc(cs->nworkers, sizeof *ch->wsubs);
    if (!ch->wsubs) {
        free(ch);
        return NULL;
    }
    memcpy(ch->name, name, len);
    ch->name_len = len;
    ch->heap_pos = NOT_IN_HEAP;
    ch->complete_from = first_unknown(cs);
    apply_rule(cs, ch);
    HASH_ADD_KEYPTR(hh, cs->by_name, ch->name, ch->name_len, ch);
    recount(cs, ch);
    return ch;
}

/* The watermark stands in for the record from now on. */
static void forget_oldest_idle(struct bus *cs)
{
    struct bchan *oldest = TAILQ_FIRST(&cs->idle);
    if (oldest->complete_from - 1 > cs->forgotten_upto)
        cs->forgotten_upto = oldest->complete_from - 1;
    destroy(cs, oldest);
}

/* Forgets the oldest idle records past the limit (not while the sweeper
 * iterates: the one it would visit next may be among them). */
static void trim_idle(struct bus *cs)
{
    while (!cs->sweeping && cs->nidle > MAX_IDLE_CHANNELS)
        forget_oldest_idle(cs);
}

static void release_if_unused(struct bus *cs, struct bchan *ch)
{
    if (ch->nsubs || ch->count || ch->idle)
        return;
    free(ch->ring);
    ch->ring = NULL;
    ch->cap = ch->head = 0;
    recount(cs, ch);
    /* Nothing was ever dropped: a new record would know as much. */
    if (ch->complete_from <= first_unknown(cs)) {   /* (the sweeper may free the channel it is on) */
        destroy(cs, ch);
        return;
    }
    ch->idle = true;
    TAILQ_INSERT_TAIL(&cs->idle, ch, idle_link);
    cs->nidle++;
    cs->idle_bytes += ch->cost;
    trim_idle(cs);
}

static void on_sweep(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct bus *cs = t->data;
    struct bchan *ch, *tmp;
    lock(cs);
    ev_tstamp now = cs->clock();
    cs->sweeping = true;
    HASH_ITER(hh, cs->by_name, ch, tmp) {
        if (ch->idle)
            continue;
        evict_expired(cs, ch, now);
        release_if_unused(cs, ch);
    }
    cs->sweeping = false;
    trim_idle(cs);
    unlock(cs);
}

/* clock_mono is inline: this gives the default clock an address. */
static double mono_clock(void)
{
    return clock_mono();
}

struct bus *bus_new(struct ev_loop *loop, unsigned nworkers, size_t history_len,
                    double history_ttl, size_t history_bytes)
{
    struct bus *cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    cs->inboxes = calloc(nworkers ? nworkers : 1, sizeof *cs->inboxes);
    if (!cs->inboxes || pthread_mutex_init(&cs->lock, NULL) != 0) {
        free(cs->inboxes);
        free(cs);
        return NULL;
    }
    cs->nworkers = nworkers ? nworkers : 1;
    cs->loop = loop;
    cs->clock = mono_clock;
    cs->max_history_bytes = history_bytes;
    TAILQ_INIT(&cs->idle);
    if (bus_configure(cs, "", history_len, history_ttl) < 0) {
        bus_free(cs);
        return NULL;
    }
    /* Ids keep growing across restarts (microsecond clock at boot, below
     * 2^53 so Lua numbers hold them exactly); an id from an earlier run is
     * recognised as such and answered with the reset event. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    cs->boot_id = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    cs->last_id = cs->boot_id;
    ev_timer_init(&cs->sweeper, on_sweep, 1.0, 1.0);
    cs->sweeper.data = cs;
    ev_timer_start(loop, &cs->sweeper);
    ev_unref(loop);   /* the sweeper alone must not keep the loop alive */
    return cs;
}

void bus_resumed_free(struct bus_resumed *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->replay.len; i++)
        bus_event_unref(r->replay.items[i].ev);
    free(r->replay.items);
    free(r);
}

static void free_notices(struct bus_notice *n)
{
    while (n) {
        struct bus_notice *next = n->next;
        free(n);
        n = next;
    }
}

static void free_answers(struct bus_answer *a)
{
    while (a) {
        struct bus_answer *next = a->next;
        free(a);
        a = next;
    }
}

static void free_resumed_list(struct bus_resumed *r)
{
    while (r) {
        struct bus_resumed *next = r->next;
        bus_resumed_free(r);
        r = next;
    }
}

void bus_free(struct bus *cs)
{
    if (!cs)
        return;
    if (ev_is_active(&cs->sweeper)) {
        ev_ref(cs->loop);
        ev_timer_stop(cs->loop, &cs->sweeper);
    }
    struct bchan *ch, *tmp;
    HASH_ITER(hh, cs->by_name, ch, tmp)
        destroy(cs, ch);
    for (size_t i = 0; i < cs->nrules; i++)
        free(cs->rules[i].prefix);
    free(cs->rules);
    free(cs->oldest);
    for (unsigned i = 0; i < cs->nworkers; i++) {
        struct bus_batch *q = &cs->inboxes[i].q;
        for (size_t j = 0; j < q->len; j++)
            bus_event_unref(q->evs[j]);
        free(q->evs);
        free_resumed_list(q->resumed);
        free_notices(q->notices);
        free_answers(q->answers);
    }
    free(cs->inboxes);
    pthread_mutex_destroy(&cs->lock);
    free(cs);
}

unsigned bus_workers(const struct bus *b)
{
    return b->nworkers;
}

void bus_set_clock(struct bus *b, double (*clock)(void))
{
    lock(b);
    b->clock = clock;
    unlock(b);
}

void bus_set_upstream(struct bus *b, const struct bus_upstream *u)
{
    lock(b);
    b->upstream = *u;
    unlock(b);
}

void bus_set_listener(struct bus *b, const struct bus_listener *l)
{
    lock(b);
    b->listener = *l;
    unlock(b);
}

int bus_configure(struct bus *cs, const char *prefix, size_t history_len,
                  double history_ttl)
{
    size_t plen = strlen(prefix);
    int rc = 0;
    lock(cs);
    struct history_rule *r = NULL;
    for (size_t i = 0; i < cs->nrules; i++)
        if (cs->rules[i].prefix_len == plen && memcmp(cs->rules[i].prefix, prefix, plen) == 0)
            r = &cs->rules[i];
    if (!r) {
        struct history_rule *rules = realloc(cs->rules, sizeof *rules * (cs->nrules + 1));
        char *copy = strdup(prefix);
        if (rules)
            cs->rules = rules;
        if (!rules || !copy) {
            free(copy);
            rc = -1;
            goto out;
        }
        r = &rules[cs->nrules];
        r->prefix = copy;
        r->prefix_len = plen;
        cs->nrules++;
    }
    r->history_len = history_len > UINT32_MAX / 2 ? UINT32_MAX / 2 : history_len;
    r->history_ttl = history_ttl;
    struct bchan *ch, *tmp;
    HASH_ITER(hh, cs->by_name, ch, tmp)
        apply_rule(cs, ch);
out:
    unlock(cs);
    return rc;
}

void bus_attach(struct bus *b, unsigned wid, struct ev_loop *loop, ev_async *wake)
{
    lock(b);
    b->inboxes[wid].loop = loop;
    b->inboxes[wid].wake = wake;
    unlock(b);
}

void bus_detach(struct bus *b, unsigned wid)
{
    lock(b);
    struct inbox *in = &b->inboxes[wid];
    in->loop = NULL;
    in->wake = NULL;
    for (size_t j = 0; j < in->q.len; j++)
        bus_event_unref(in->q.evs[j]);
    in->q.len = 0;
    free_resumed_list(in->q.resumed);
    in->q.resumed = NULL;
    free_notices(in->q.notices);
    in->q.notices = NULL;
    free_answers(in->q.answers);
    in->q.answers = NULL;
    unlock(b);
}

/* ---- publish ---------------------------------------------------------- */

static size_t event_size(size_t name_len, const char *event, size_t elen, size_t dlen)
{
    return sizeof(struct bus_event) + dlen + 1 + (event ? elen + 1 : 0) + name_len + 1;
}

static struct bus_event *event_new(uint64_t id, const char *name, size_t name_len,
                                   const char *event, size_t elen,
                                   const char *data, size_t dlen)
{
    struct bus_event *ev = malloc(event_size(name_len, event, elen, dlen));
    if (!ev)
        return NULL;
    ev->refs = 1;
    char *p = ev->bytes;
    ev->src.id = id;
    ev->src.data = p;
    ev->src.data_len = dlen;
    memcpy(p, data, dlen);
    p[dlen] = '\0';
    p += dlen + 1;
    ev->src.name = NULL;
    ev->src.name_len = 0;
    if (event) {
        ev->src.name = p;
        memcpy(p, event, elen);
        p[elen] = '\0';
        ev->src.name_len = elen;
        p += elen + 1;
    }
    memcpy(p, name, name_len);
    p[name_len] = '\0';
    ev->chan = p;
    ev->chan_len = name_len;
    ev->raw = NULL;
    return ev;
}

/* The raw view, framed once for the whole process when first needed (an
 * event nobody subscribes to costs only its source in history). Under the
 * lock: a worker reads ev->raw only after taking the event from the bus.
 * Returns the bytes it added, 0 if framed before; false when out of
 * memory. */
static bool frame_raw(struct bus_event *ev, size_t *added)
{
    *added = 0;
    if (ev->raw)
        return true;
    char idtext[24];
    size_t n = fmt_dec(idtext, ev->src.id);
    struct sse_event sse = { .id = idtext, .id_len = n,
                             .event = ev->src.name, .event_len = ev->src.name_len,
                             .data = ev->src.data, .data_len = ev->src.data_len,
                             .retry_ms = -1 };
    struct frame *f = frame_sse(&sse);
    if (!f)
        return false;
    f->flags |= FRAME_EVENT;
    f->id = ev->src.id;
    frame_make_shared(f);
    ev->raw = f;
    *added = sizeof *f + f->len;
    return true;
}

static bool batch_push(struct bus_batch *q, struct bus_event *ev)
{
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        struct bus_event **evs = realloc(q->evs, sizeof *evs * cap);
        if (!evs)
            return false;
        q->evs = evs;
        q->cap = cap;
    }
    q->evs[q->len++] = event_ref(ev);
    return true;
}

/* Hands e (a new event with its id) to every worker that wants it and
 * keeps it in ch's history: the ordering path of both a local publish and
 * an event that came back from Redis. Under the lock. */
static void append(struct bus *cs, struct bchan *ch, struct hist_entry e)
{
    /* In id order into every inbox that wants it: under the lock, so no
     * later id can be queued before this one anywhere. */
    size_t framed = 0;
    if (ch->nsubs && !frame_raw(e.ev, &framed))
        log_warn("out of memory framing event %llu", (unsigned long long)e.ev->src.id);
    e.bytes += framed;
    if (ch->nsubs && e.ev->raw) {
        for (unsigned w = 0; w < cs->nworkers; w++) {
            struct inbox *in = &cs->inboxes[w];
            if (!ch->wsubs[w] || !in->loop)
                continue;
            bool was_empty = inbox_empty(in);
            if (!batch_push(&in->q, e.ev)) {
                log_warn("out of memory: worker %u misses event %llu", w,
                         (unsigned long long)e.ev->src.id);
                continue;
            }
            /* An inbox with items has a wake-up pending already. */
            if (was_empty)
                ev_async_send(in->loop, in->wake);
        }
    }

    /* An event larger than the whole bound is not kept: keeping it would
     * first push every other channel's history out. */
    bool fits = !cs->max_history_bytes || e.bytes <= cs->max_history_bytes;
    if (ch->history_len && fits && ring_reserve(ch) &&
        (ch->heap_pos != NOT_IN_HEAP || heap_reserve(cs))) {
        if (ch->count == ch->cap)
            evict_oldest(cs, ch);
        *ring_at(ch, ch->count) = e;
        ch->count++;
        cs->nevents++;
        cs->history_bytes += e.bytes;
        if (ch->heap_pos == NOT_IN_HEAP) {   /* its only event: the heap's newest */
            heap_set(cs, cs->oldest_len++, ch);
            heap_up(cs, ch->heap_pos);
        }
        recount(cs, ch);   /* ring and heap slot */
        evict_expired(cs, ch, e.at);
        trim_history(cs, ch);
    } else {
        ch->complete_from = e.ev->src.id + 1;   /* nothing kept to resume from */
        entry_free(&e);
    }
    release_if_unused(cs, ch);
}

/* Cluster mode: the event goes to Redis, which gives it its id and sends
 * it back to every node (this one too) through bus_deliver. */
static int publish_upstream(struct bus *cs, unsigned wid, const char *name, size_t name_len,
                            const char *event, size_t event_len,
                            const char *data, size_t data_len,
                            struct publish_result *out)
{
    lock(cs);
    const struct history_rule *r = rule_for(cs, name, name_len);
    size_t history_len = r->history_len;
    double history_ttl = r->history_ttl;
    unlock(cs);
    out->id = 0;
    out->reached = 0;
    int rc = cs->upstream.publish(cs->upstream.ctx, wid, out->ticket, name, name_len,
                                  event, event_len,
                                  data, data_len, history_len, history_ttl);
    if (rc == 0)
        __atomic_add_fetch(&cs->queued_upstream, 1, __ATOMIC_RELAXED);
    return rc < 0 ? rc : BUS_QUEUED;
}

int bus_publish(struct bus *cs, unsigned wid, const char *name, size_t name_len,
                const char *event, size_t event_len,
                const char *data, size_t data_len,
                struct publish_result *out)
{
    if (cs->upstream.publish)
        return publish_upstream(cs, wid, name, name_len, event, event_len, data, data_len,
                                out);
    lock(cs);
    struct bchan *ch = get(cs, name, name_len);
    if (!ch) {
        unlock(cs);
        return -1;
    }
    struct hist_entry e = { 0 };
    e.ev = event_new(cs->last_id + 1, name, name_len, event, event_len, data, data_len);
    if (!e.ev) {
        release_if_unused(cs, ch);
        unlock(cs);
        return -1;
    }
    e.bytes = sizeof e + event_size(name_len, event, event_len, data_len);
    cs->last_id++;
    cs->published++;
    e.at = cs->clock();
    out->id = e.ev->src.id;
    out->reached = ch->nsubs - ch->wsubs[wid];
    append(cs, ch, e);
    unlock(cs);
    return 0;
}

int bus_deliver(struct bus *cs, const char *name, size_t name_len, uint64_t id,
                const char *event, size_t event_len,
                const char *data, size_t data_len)
{
    lock(cs);
    struct bchan *ch = get(cs, name, name_len);
    if (!ch) {
        unlock(cs);
        return -1;
    }
    struct hist_entry e = { 0 };
    e.ev = event_new(id, name, name_len, event, event_len, data, data_len);
    if (!e.ev) {
        release_if_unused(cs, ch);
        unlock(cs);
        return -1;
    }
    e.bytes = sizeof e + event_size(name_len, event, event_len, data_len);
    if (id > cs->last_id)
        cs->last_id = id;
    cs->published++;
    e.at = cs->clock();
    append(cs, ch, e);
    unlock(cs);
    return 0;
}

struct bus_event *bus_event_make(const char *chan, size_t chan_len, uint64_t id,
                                 const char *event, size_t event_len,
                                 const char *data, size_t data_len)
{
    struct bus_event *ev = event_new(id, chan, chan_len, event, event_len, data, data_len);
    size_t added;
    if (ev && !frame_raw(ev, &added)) {
        bus_event_unref(ev);
        return NULL;
    }
    return ev;
}

int bus_resume(struct bus *b, unsigned wid, uint64_t token, const char *const *names,
               const size_t *lens, int n, uint64_t last_id)
{
    if (!b->upstream.resume || n > BUS_MAX_RESUME)
        return -1;
    return b->upstream.resume(b->upstream.ctx, wid, token, names, lens, n, last_id);
}

/* Under the lock: worker wid's inbox, or NULL when there is no such
 * worker or it has stopped (its loop detached). */
static struct inbox *worker_inbox(struct bus *b, unsigned wid)
{
    struct inbox *in = wid < b->nworkers ? &b->inboxes[wid] : NULL;
    return in && in->loop ? in : NULL;
}

void bus_resumed_push(struct bus *b, unsigned wid, struct bus_resumed *r)
{
    lock(b);
    struct inbox *in = worker_inbox(b, wid);
    if (!in) {
        unlock(b);
        bus_resumed_free(r);
        return;
    }
    bool was_empty = inbox_empty(in);
    r->next = in->q.resumed;   /* order among answers does not matter */
    in->q.resumed = r;
    if (was_empty)
        ev_async_send(in->loop, in->wake);
    unlock(b);
}

void bus_answer_push(struct bus *b, unsigned wid, uint64_t ticket, bool ok, uint64_t id,
                     uint32_t reached)
{
    struct bus_answer *a = malloc(sizeof *a);
    if (!a) {   /* the request waits on: its client's timeout ends it */
        log_warn("out of memory: worker %u misses the answer to a publish", wid);
        return;
    }
    *a = (struct bus_answer){ .ticket = ticket, .id = id, .reached = reached, .ok = ok };
    lock(b);
    struct inbox *in = worker_inbox(b, wid);
    if (!in) {
        unlock(b);
        free(a);
        return;
    }
    bool was_empty = inbox_empty(in);
    a->next = in->q.answers;   /* each answer stands alone: order does not matter */
    in->q.answers = a;
    if (was_empty)
        ev_async_send(in->loop, in->wake);
    unlock(b);
}

void bus_notice_lost(struct bus *b, const char *name, size_t len, uint64_t last_id)
{
    lock(b);
    struct bchan *ch = find(b, name, len);
    for (unsigned w = 0; ch && w < b->nworkers; w++) {
        struct inbox *in = &b->inboxes[w];
        if (!ch->wsubs[w] || !in->loop)
            continue;
        struct bus_notice *n = malloc(sizeof *n + len);
        if (!n) {
            log_warn("out of memory: worker %u misses a history-lost notice", w);
            continue;
        }
        n->last_id = last_id;
        n->chan_len = len;
        memcpy(n->chan, name, len);
        bool was_empty = inbox_empty(in);
        n->next = in->q.notices;   /* one per channel: order does not matter */
        in->q.notices = n;
        if (was_empty)
            ev_async_send(in->loop, in->wake);
    }
    unlock(b);
}

void bus_take(struct bus *b, unsigned wid, struct bus_batch *batch)
{
    lock(b);
    struct bus_batch q = b->inboxes[wid].q;
    b->inboxes[wid].q = *batch;
    unlock(b);
    *batch = q;
}

/* ---- subscribe -------------------------------------------------------- */

/* First ring position with an id above last_id (ids grow along the ring). */
static uint32_t first_after(struct bchan *ch, uint64_t last_id)
{
    uint32_t lo = 0, hi = ch->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ring_at(ch, mid)->ev->src.id <= last_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

bool bus_replay_push(struct bus_replay *r, struct bus_event *ev, int req)
{
    if (r->len == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        struct bus_replay_item *items = realloc(r->items, sizeof *items * cap);
        if (!items)
            return false;
        r->items = items;
        r->cap = cap;
    }
    r->items[r->len++] = (struct bus_replay_item){ event_ref(ev), req };
    return true;
}

static void count_sub(struct bus *cs, struct bchan *ch, unsigned wid, int delta)
{
    bool was_unused = ch->nsubs == 0;
    ch->wsubs[wid] += (uint32_t)delta;
    ch->nsubs += (uint32_t)delta;
    cs->nsubs += (size_t)(ssize_t)delta;
    if (was_unused && cs->listener.first)
        cs->listener.first(cs->listener.ctx, ch->name, ch->name_len);
    else if (ch->nsubs == 0 && cs->listener.last)
        cs->listener.last(cs->listener.ctx, ch->name, ch->name_len);
}

#define MAX_SUBSCRIBE 64

int bus_subscribe(struct bus *cs, unsigned wid, const struct subscription_req *reqs,
                  int n, bool has_last, uint64_t last_id,
                  struct bus_batch *pending, struct bus_replay *replay,
                  enum bus_reset *resets)
{
    if (n > MAX_SUBSCRIBE)
        return -1;
    struct bchan *chans[MAX_SUBSCRIBE];
    uint32_t pos[MAX_SUBSCRIBE];
    lock(cs);
    /* What is queued for this worker is older than anything replayed or
     * delivered from now on: the caller delivers it before adding the
     * stream, so the stream sees none of it twice. */
    struct bus_batch q = cs->inboxes[wid].q;
    cs->inboxes[wid].q = *pending;
    *pending = q;
    ev_tstamp now = cs->clock();
    int rc = 0;
    int got = 0;
    for (; got < n; got++) {
        chans[got] = get(cs, reqs[got].name, reqs[got].name_len);
        if (!chans[got]) {
            rc = -1;
            break;
        }
        count_sub(cs, chans[got], wid, +1);
    }
    if (rc < 0) {
        for (int i = 0; i < got; i++) {
            count_sub(cs, chans[i], wid, -1);
            release_if_unused(cs, chans[i]);
        }
        unlock(cs);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        struct bchan *ch = chans[i];
        resets[i] = BUS_RESET_NONE;
        pos[i] = ch->count;   /* nothing to replay */
        if (!has_last)
            continue;
        evict_expired(cs, ch, now);   /* one instant: a channel met twice
                                       * (two views) cannot shift pos[] */
        if (cs->upstream.publish)
            /* Cluster mode: the local history holds only what came while
             * this node followed the channel; the replay is read from the
             * channel's stream in Redis (the caller asks, bus_resume). */
            resets[i] = last_id ? BUS_RESET_REMOTE : BUS_RESET_UNKNOWN_ID;
        else if (last_id <= cs->boot_id || last_id > cs->last_id)
            resets[i] = BUS_RESET_UNKNOWN_ID;
        else if (last_id + 1 < ch->complete_from)
            resets[i] = BUS_RESET_EXPIRED;
        else
            pos[i] = first_after(ch, last_id);
    }
    /* The missed events of all channels merged in id order, so a stream
     * sees them as it would have live. */
    for (;;) {
        int best = -1;
        uint64_t best_id = UINT64_MAX;
        for (int i = 0; i < n; i++) {
            if (pos[i] < chans[i]->count) {
                uint64_t id = ring_at(chans[i], pos[i])->ev->src.id;
                if (id < best_id) {
                    best_id = id;
                    best = i;
                }
            }
        }
        if (best < 0)
            break;
        struct hist_entry *e = ring_at(chans[best], pos[best]);
        size_t framed;
        if (!frame_raw(e->ev, &framed) || !bus_replay_push(replay, e->ev, best)) {
            rc = -1;
            break;
        }
        e->bytes += framed;
        cs->history_bytes += framed;
        pos[best]++;
    }
    if (rc < 0) {   /* nothing counted after all */
        for (int i = 0; i < n; i++) {
            count_sub(cs, chans[i], wid, -1);
            release_if_unused(cs, chans[i]);
        }
    }
    /* Replays may have framed more. Only now: a subscribed channel is not
     * released by the trim, and chans[] is used no more. */
    trim_history(cs, NULL);
    unlock(cs);
    return rc;
}

void bus_unsubscribe(struct bus *cs, unsigned wid, const char *const *names,
                     const size_t *lens, int n)
{
    lock(cs);
    for (int i = 0; i < n; i++) {
        struct bchan *ch = NULL;
        HASH_FIND(hh, cs->by_name, names[i], lens[i], ch);
        if (!ch || !ch->wsubs[wid])
            continue;
        count_sub(cs, ch, wid, -1);
        release_if_unused(cs, ch);
    }
    unlock(cs);
}

/* ---- counts ----------------------------------------------------------- */

uint64_t bus_last_id(struct bus *b)
{
    lock(b);
    uint64_t id = b->last_id;
    unlock(b);
    return id;
}

uint64_t bus_published(struct bus *b)
{
    lock(b);
    uint64_t n = b->published;
    unlock(b);
    return n;
}

uint32_t bus_subscribers(struct bus *b, const char *name, size_t name_len)
{
    struct bchan *ch = NULL;
    lock(b);
    HASH_FIND(hh, b->by_name, name, name_len, ch);
    uint32_t n = ch ? ch->nsubs : 0;
    unlock(b);
    return n;
}

void bus_counts(struct bus *b, size_t *channels, size_t *subs, size_t *events,
                size_t *history_bytes)
{
    lock(b);
    *channels = HASH_COUNT(b->by_name);
    *subs = b->nsubs;
    *events = b->nevents;
    *history_bytes = b->history_bytes;
    unlock(b);
}
