#include "channel.h"

#include <inttypes.h>
#include <sys/queue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uthash.h>

#include "buf.h"
#include "clock.h"
#include "frame.h"
#include "log.h"
#include "numfmt.h"
#include "sse.h"
#include "stream.h"

struct sub {
    struct sub *next_in_stream;
    struct sse_stream *stream;
    struct channel *chan;
    int view;
    uint32_t index;               /* in its chan_view's arrays */
};

/* A channel's subscribers on one view. Publish walks streams[] front to
 * back, so the next streams can be prefetched: with thousands of
 * subscribers each one is a cache miss, and a linked list would expose
 * every one of them in turn. subs[i] is the record behind streams[i]. */
struct chan_view {
    int view;
    uint32_t nsubs, cap;
    struct sse_stream **streams;
    struct sub **subs;
};

struct view_frame {
    int view;
    struct frame *frame;
};

struct hist_entry {
    struct event_src *src;
    size_t bytes;                 /* src and frames, for the global bound */
    ev_tstamp at;
    struct frame *raw;            /* view 0, framed on first use */
    struct view_frame *views;     /* masked views framed so far */
    uint32_t nviews;
};

struct channel {
    UT_hash_handle hh;
    TAILQ_ENTRY(channel) idle_link;   /* on the idle list when unused */
    bool idle;
    struct chan_view *views;
    uint32_t nviews;
    uint32_t nsubs;
    struct hist_entry *ring;
    uint32_t head, count, cap;
    uint32_t heap_pos;            /* in channels.oldest, or NOT_IN_HEAP */
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
 * worker-wide watermark stands in for it (conservative: it may cause a
 * reset that an exact record would not). With --max-history-bytes they
 * also count in it, and may take at most half of it. */
#define MAX_IDLE_CHANNELS 65536

struct channels {
    struct ev_loop *loop;         /* for the sweeper */
    double (*clock)(void);        /* monotonic seconds; a test may set its own */
    uint64_t published, delivered;   /* events, and times one was queued */
    struct channel *by_name;
    TAILQ_HEAD(, channel) idle;
    size_t nidle, idle_bytes;
    uint64_t boot_id;             /* ids of this process are > boot_id */
    uint64_t last_id;
    uint64_t forgotten_upto;      /* ids a freed channel may have dropped */
    size_t nsubs, nevents;
    /* Events and channel records: a channel costs memory of its own (its
     * struct, ring, heap slot, view arrays), which one-event channels
     * would otherwise multiply past the bound unseen. */
    size_t history_bytes, max_history_bytes;   /* max 0: no bound */
    /* Channels with history, as a min-heap on their oldest event's id:
     * the top is where the oldest event of all is, which the global bound
     * drops first. */
    struct channel **oldest;
    uint32_t oldest_len, oldest_cap;
    struct history_rule *rules;
    size_t nrules;
    view_framer framer;
    void *framer_ctx;
    bool framing;                 /* inside a script's transform */
    bool sweeping;                /* iterating by_name: no destroying */
    ev_timer sweeper;
};

/* ---- history ---------------------------------------------------------- */

#define NOT_IN_HEAP UINT32_MAX

/* What malloc adds to a block (header, rounding), and a channel's share of
 * uthash's bucket table: estimates, so the bound holds for RSS too. */
#define ALLOC_OVERHEAD 16
#define HASH_SHARE 16

static size_t channel_cost(const struct channel *ch)
{
    size_t n = sizeof *ch + ch->name_len + 1 + ALLOC_OVERHEAD + HASH_SHARE;
    if (ch->ring)
        n += sizeof *ch->ring * ch->cap + ALLOC_OVERHEAD;
    if (ch->heap_pos != NOT_IN_HEAP)
        n += sizeof(struct channel *);
    if (ch->views)
        n += sizeof *ch->views * ch->nviews + ALLOC_OVERHEAD;
    for (uint32_t i = 0; i < ch->nviews; i++)
        n += (sizeof(struct sse_stream *) + sizeof(struct sub *)) * ch->views[i].cap +
             2 * ALLOC_OVERHEAD;
    return n;
}

/* After anything that changes what ch holds besides its events. */
static void recount(struct channels *cs, struct channel *ch)
{
    size_t cost = channel_cost(ch);
    cs->history_bytes = cs->history_bytes - ch->cost + cost;
    ch->cost = cost;
}

static struct hist_entry *ring_at(struct channel *ch, uint32_t i)
{
    return &ch->ring[(ch->head + i) % ch->cap];
}

static uint64_t oldest_id(struct channel *ch)
{
    return ring_at(ch, 0)->src->id;
}

static void heap_set(struct channels *cs, uint32_t i, struct channel *ch)
{
    cs->oldest[i] = ch;
    ch->heap_pos = i;
}

static void heap_up(struct channels *cs, uint32_t i)
{
    struct channel *ch = cs->oldest[i];
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

static void heap_down(struct channels *cs, uint32_t i)
{
    struct channel *ch = cs->oldest[i];
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
static bool heap_reserve(struct channels *cs)
{
    if (cs->oldest_len < cs->oldest_cap)
        return true;
    uint32_t cap = cs->oldest_cap ? cs->oldest_cap * 2 : 64;
    struct channel **a = realloc(cs->oldest, sizeof *a * cap);
    if (!a)
        return false;
    cs->oldest = a;
    cs->oldest_cap = cap;
    return true;
}

static void heap_remove(struct channels *cs, struct channel *ch)
{
    uint32_t i = ch->heap_pos;
    ch->heap_pos = NOT_IN_HEAP;
    struct channel *last = cs->oldest[--cs->oldest_len];
    if (last == ch)
        return;
    heap_set(cs, i, last);
    heap_up(cs, i);
    heap_down(cs, last->heap_pos);
}

static void entry_free(struct hist_entry *e)
{
    frame_unref(e->raw);
    for (uint32_t i = 0; i < e->nviews; i++)
        frame_unref(e->views[i].frame);
    free(e->views);
    free(e->src);
}

/* False if out of memory: the old ring stays, still correct. */
static bool ring_resize(struct channel *ch, uint32_t cap)
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

static void evict_oldest(struct channels *cs, struct channel *ch)
{
    struct hist_entry *e = ring_at(ch, 0);
    ch->complete_from = e->src->id + 1;
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
static void shrink_ring(struct channels *cs, struct channel *ch)
{
    if (ch->count && ch->cap > 8 && ch->count < ch->cap / 4 &&
        ring_resize(ch, ch->cap / 2))   /* a failed shrink costs nothing */
        recount(cs, ch);
}

static void release_if_unused(struct channels *cs, struct channel *ch);
static void forget_oldest_idle(struct channels *cs);

/* The global bound: drop the oldest events of all; a channel emptied
 * here is released at once (except keep, which the caller still uses and
 * releases itself). Idle records may take up to half the bound: past it,
 * or with no event left to drop, the oldest are forgotten. */
static void trim_history(struct channels *cs, struct channel *keep)
{
    while (cs->max_history_bytes && cs->history_bytes > cs->max_history_bytes) {
        if (!cs->sweeping && !TAILQ_EMPTY(&cs->idle) &&
            (cs->idle_bytes > cs->max_history_bytes / 2 || !cs->oldest_len)) {
            forget_oldest_idle(cs);
            continue;
        }
        if (!cs->oldest_len)
            break;   /* only records of subscribed channels are left */
        struct channel *ch = cs->oldest[0];
        evict_oldest(cs, ch);
        shrink_ring(cs, ch);
        if (ch != keep)
            release_if_unused(cs, ch);
    }
}

static void evict_expired(struct channels *cs, struct channel *ch, ev_tstamp now)
{
    while (ch->count && (ch->count > ch->history_len ||
                         ring_at(ch, 0)->at + ch->history_ttl <= now))
        evict_oldest(cs, ch);
    shrink_ring(cs, ch);
}

static bool ring_reserve(struct channel *ch)
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

static const struct history_rule *rule_for(const struct channels *cs,
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

static void apply_rule(const struct channels *cs, struct channel *ch)
{
    const struct history_rule *r = rule_for(cs, ch->name, ch->name_len);
    ch->history_len = r->history_len;
    ch->history_ttl = r->history_ttl;
}

static void set_busy(struct channels *cs, struct channel *ch)
{
    if (!ch->idle)
        return;
    TAILQ_REMOVE(&cs->idle, ch, idle_link);
    ch->idle = false;
    cs->nidle--;
    cs->idle_bytes -= ch->cost;
}

static struct channel *find(struct channels *cs, const char *name, size_t len)
{
    struct channel *ch = NULL;
    HASH_FIND(hh, cs->by_name, name, len, ch);
    if (ch)
        set_busy(cs, ch);
    return ch;
}

static uint64_t first_unknown(const struct channels *cs)
{
    return (cs->forgotten_upto > cs->boot_id ? cs->forgotten_upto : cs->boot_id) + 1;
}

static void free_views(struct channel *ch)
{
    for (uint32_t i = 0; i < ch->nviews; i++) {
        free(ch->views[i].streams);
        free(ch->views[i].subs);
    }
    free(ch->views);
    ch->views = NULL;
    ch->nviews = 0;
}

static void destroy(struct channels *cs, struct channel *ch)
{
    set_busy(cs, ch);
    while (ch->count)
        evict_oldest(cs, ch);
    HASH_DEL(cs->by_name, ch);
    cs->history_bytes -= ch->cost;
    free_views(ch);
    free(ch->ring);
    free(ch);
}

static struct channel *get(struct channels *cs, const char *name, size_t len)
{
    struct channel *ch = find(cs, name, len);
    if (ch)
        return ch;
    ch = calloc(1, sizeof *ch + len + 1);
    if (!ch)
        return NULL;
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
static void forget_oldest_idle(struct channels *cs)
{
    struct channel *oldest = TAILQ_FIRST(&cs->idle);
    if (oldest->complete_from - 1 > cs->forgotten_upto)
        cs->forgotten_upto = oldest->complete_from - 1;
    destroy(cs, oldest);
}

/* Forgets the oldest idle records past the limit (not while the sweeper
 * iterates: the one it would visit next may be among them). */
static void trim_idle(struct channels *cs)
{
    while (!cs->sweeping && cs->nidle > MAX_IDLE_CHANNELS)
        forget_oldest_idle(cs);
}

static void release_if_unused(struct channels *cs, struct channel *ch)
{
    if (ch->nsubs || ch->count || ch->idle)
        return;
    free_views(ch);
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
    struct channels *cs = t->data;
    struct channel *ch, *tmp;
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
}

/* clock_mono is inline: this gives the default clock an address. */
static double mono_clock(void)
{
    return clock_mono();
}

struct channels *channels_new(struct ev_loop *loop, size_t history_len,
                              double history_ttl, size_t history_bytes)
{
    struct channels *cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    cs->loop = loop;
    cs->clock = mono_clock;
    cs->max_history_bytes = history_bytes;
    TAILQ_INIT(&cs->idle);
    if (channels_configure(cs, "", history_len, history_ttl) < 0) {
        free(cs);
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

void channels_free(struct channels *cs)
{
    if (!cs)
        return;
    ev_ref(cs->loop);
    ev_timer_stop(cs->loop, &cs->sweeper);
    struct channel *ch, *tmp;
    HASH_ITER(hh, cs->by_name, ch, tmp)
        destroy(cs, ch);
    for (size_t i = 0; i < cs->nrules; i++)
        free(cs->rules[i].prefix);
    free(cs->rules);
    free(cs->oldest);
    free(cs);
}

void channels_set_framer(struct channels *cs, view_framer fn, void *ctx)
{
    cs->framer = fn;
    cs->framer_ctx = ctx;
}

int channels_configure(struct channels *cs, const char *prefix,
                       size_t history_len, double history_ttl)
{
    size_t plen = strlen(prefix);
    struct history_rule *r = NULL;
    for (size_t i = 0; i < cs->nrules; i++)
        if (cs->rules[i].prefix_len == plen && memcmp(cs->rules[i].prefix, prefix, plen) == 0)
            r = &cs->rules[i];
    if (!r) {
        struct history_rule *rules = realloc(cs->rules, sizeof *rules * (cs->nrules + 1));
        if (!rules)
            return -1;
        cs->rules = rules;
        r = &rules[cs->nrules];
        r->prefix = strdup(prefix);
        if (!r->prefix)
            return -1;
        r->prefix_len = plen;
        cs->nrules++;
    }
    r->history_len = history_len > UINT32_MAX / 2 ? UINT32_MAX / 2 : history_len;
    r->history_ttl = history_ttl;
    struct channel *ch, *tmp;
    HASH_ITER(hh, cs->by_name, ch, tmp)
        apply_rule(cs, ch);
    return 0;
}

/* ---- framing ---------------------------------------------------------- */

static struct frame *frame_raw(const struct event_src *src)
{
    char id[24];
    size_t n = fmt_dec(id, src->id);
    struct sse_event ev = { .id = id, .id_len = n,
                            .event = src->name, .event_len = src->name_len,
                            .data = src->data, .data_len = src->data_len,
                            .retry_ms = -1 };
    struct frame *f = frame_sse(&ev);
    if (f) {
        f->flags |= FRAME_EVENT;
        f->id = src->id;
    }
    return f;
}

static struct frame *frame_view(struct channels *cs, const struct event_src *src,
                                int view)
{
    if (view == 0)
        return frame_raw(src);
    if (!cs->framer)
        return NULL;
    cs->framing = true;
    struct frame *f = cs->framer(cs->framer_ctx, view, src);
    cs->framing = false;
    if (f)
        f->id = src->id;   /* a new frame of ours: no one else holds it yet */
    return f;
}

static size_t frame_cost(const struct frame *f)
{
    return f ? sizeof *f + f->len : 0;
}

/* The frame of e for a view, framed once and kept with the entry (its
 * size counted in e->bytes; for an entry already in a ring the caller
 * adds the growth to the global count). */
static struct frame *entry_frame(struct channels *cs, struct hist_entry *e, int view)
{
    if (view == 0) {
        if (!e->raw) {
            e->raw = frame_raw(e->src);
            e->bytes += frame_cost(e->raw);
        }
        return e->raw;
    }
    for (uint32_t i = 0; i < e->nviews; i++)
        if (e->views[i].view == view)
            return e->views[i].frame;
    struct frame *f = frame_view(cs, e->src, view);
    struct view_frame *vs = realloc(e->views, sizeof *vs * (e->nviews + 1));
    if (!vs) {
        frame_unref(f);
        return NULL;
    }
    e->views = vs;
    vs[e->nviews++] = (struct view_frame){ view, f };   /* NULL = dropped */
    e->bytes += sizeof *vs + frame_cost(f);
    return f;
}

static size_t src_size(const char *event, size_t elen, size_t dlen)
{
    return sizeof(struct event_src) + dlen + (event ? elen + 1 : 0) + 1;
}

static struct event_src *src_new(uint64_t id, const char *event, size_t elen,
                                 const char *data, size_t dlen)
{
    struct event_src *s = malloc(src_size(event, elen, dlen));
    if (!s)
        return NULL;
    s->id = id;
    s->data_len = dlen;
    memcpy(s->data, data, dlen);
    s->data[dlen] = '\0';
    s->name = NULL;
    s->name_len = 0;
    if (event) {
        s->name = s->data + dlen + 1;
        memcpy(s->name, event, elen);
        s->name[elen] = '\0';
        s->name_len = elen;
    }
    return s;
}

/* ---- publish ---------------------------------------------------------- */

/* How many subscribers ahead publish asks the CPU to fetch: enough to
 * cover a memory access with the work of the ones in between. */
#define PREFETCH_AHEAD 8

int channels_publish(struct channels *cs, const char *name, size_t name_len,
                     const char *event, size_t event_len,
                     const char *data, size_t data_len,
                     struct publish_result *out)
{
    if (cs->framing)
        return -2;   /* a transform publishing would re-enter fan-out */
    struct channel *ch = get(cs, name, name_len);
    if (!ch)
        return -1;
    struct hist_entry e = { 0 };
    e.src = src_new(cs->last_id + 1, event, event_len, data, data_len);
    if (!e.src) {
        release_if_unused(cs, ch);
        return -1;
    }
    e.bytes = sizeof e + src_size(event, event_len, data_len);
    cs->last_id++;
    e.at = cs->clock();
    out->id = e.src->id;
    out->reached = 0;
    cs->published++;

    for (uint32_t v = 0; v < ch->nviews; v++) {
        struct chan_view *cv = &ch->views[v];
        struct frame *f = entry_frame(cs, &e, cv->view);
        if (!f)
            continue;
        struct sse_stream **streams = cv->streams;
        uint32_t n = cv->nsubs;
        for (uint32_t i = 0; i < n; i++) {
            if (i + PREFETCH_AHEAD < n)
                stream_prefetch(streams[i + PREFETCH_AHEAD]);
            if (i + PREFETCH_AHEAD / 2 < n)
                stream_prefetch_queue(streams[i + PREFETCH_AHEAD / 2]);
            if (stream_send(streams[i], f))
                out->reached++;
        }
    }
    cs->delivered += out->reached;

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
        ch->complete_from = e.src->id + 1;   /* nothing kept to resume from */
        entry_free(&e);
    }
    release_if_unused(cs, ch);
    return 0;
}

/* ---- subscribe -------------------------------------------------------- */

static int view_index(struct channel *ch, int view, bool create)
{
    for (uint32_t i = 0; i < ch->nviews; i++)
        if (ch->views[i].view == view)
            return (int)i;
    if (!create)
        return -1;
    struct chan_view *vs = realloc(ch->views, sizeof *vs * (ch->nviews + 1));
    if (!vs)
        return -1;
    ch->views = vs;
    vs[ch->nviews] = (struct chan_view){ .view = view };
    return (int)ch->nviews++;
}

static bool add_sub(struct channels *cs, struct sse_stream *st, struct channel *ch, int view)
{
    int vi = view_index(ch, view, true);
    if (vi < 0)
        return false;
    struct chan_view *cv = &ch->views[vi];
    struct sub *s = NULL;
    if (cv->nsubs == cv->cap) {
        uint32_t cap = cv->cap ? cv->cap * 2 : 4;
        struct sse_stream **streams = realloc(cv->streams, sizeof *streams * cap);
        if (!streams)
            goto fail;
        cv->streams = streams;
        struct sub **subs = realloc(cv->subs, sizeof *subs * cap);
        if (!subs)
            goto fail;
        cv->subs = subs;
        cv->cap = cap;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->stream = st;
    s->chan = ch;
    s->view = view;
    s->index = cv->nsubs;
    cv->streams[cv->nsubs] = st;
    cv->subs[cv->nsubs] = s;
    cv->nsubs++;
    ch->nsubs++;
    cs->nsubs++;
    s->next_in_stream = st->subs;
    st->subs = s;
    recount(cs, ch);
    return true;
fail:
    if (cv->nsubs == 0) {   /* a view made for this one: publish must not frame it */
        free(cv->streams);
        free(cv->subs);
        ch->views[vi] = ch->views[--ch->nviews];
    }
    recount(cs, ch);
    return false;
}

static void json_string(struct buf *b, const char *s, size_t n)
{
    buf_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            buf_printf(b, "\\%c", ch);
        else if (ch < 0x20)
            buf_printf(b, "\\u%04x", ch);
        else
            buf_put(b, &s[i], 1);
    }
    buf_put(b, "\"", 1);
}

static void send_reset(struct sse_stream *s, const struct channel *ch, const char *reason,
                       const char *last_raw)
{
    s->resume_reset = true;   /* for the access log */
    struct buf data = { 0 };
    buf_puts(&data, "{\"channel\":");
    json_string(&data, ch->name, ch->name_len);
    buf_printf(&data, ",\"reason\":\"%s\",\"last_event_id\":", reason);
    json_string(&data, last_raw, strlen(last_raw));
    buf_puts(&data, "}");
    const char *name = stream_reset_event(s);
    struct sse_event ev = { .event = name, .event_len = strlen(name),
                            .data = data.data, .data_len = data.len, .retry_ms = -1 };
    struct frame *f = data.failed ? NULL : frame_sse(&ev);
    buf_free(&data);
    if (!f) {
        stream_abort(s);
        return;
    }
    stream_send(s, f);
    frame_unref(f);
}

/* First ring position with an id above last_id (ids grow along the ring). */
static uint32_t first_after(struct channel *ch, uint64_t last_id)
{
    uint32_t lo = 0, hi = ch->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ring_at(ch, mid)->src->id <= last_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

#define MAX_SUBSCRIBE 64

int channels_subscribe(struct channels *cs, struct sse_stream *st,
                       const struct subscription_req *reqs, int n,
                       const char *last_raw, uint64_t last_id)
{
    bool has_last = last_raw != NULL;
    if (n > MAX_SUBSCRIBE)
        return -1;
    ev_tstamp now = cs->clock();
    struct channel *chans[MAX_SUBSCRIBE];
    uint32_t pos[MAX_SUBSCRIBE];
    int views[MAX_SUBSCRIBE];
    int m = 0;
    for (int i = 0; i < n; i++) {
        struct channel *ch = get(cs, reqs[i].name, reqs[i].name_len);
        if (!ch)
            return -1;
        bool dup = false;
        for (int j = 0; j < m; j++)
            dup |= chans[j] == ch && views[j] == reqs[i].view;
        for (struct sub *s = st->subs; s && !dup; s = s->next_in_stream)
            dup = s->chan == ch && s->view == reqs[i].view;   /* subscribed before */
        if (dup)
            continue;
        chans[m] = ch;
        views[m] = reqs[i].view;
        pos[m] = ch->count;   /* nothing to replay */
        if (has_last) {
            evict_expired(cs, ch, now);   /* one instant: a channel met twice
                                           * (two views) cannot shift pos[] */
            if (last_id <= cs->boot_id || last_id > cs->last_id)
                send_reset(st, ch, "unknown-id", last_raw);
            else if (last_id + 1 < ch->complete_from)
                send_reset(st, ch, "history-expired", last_raw);
            else
                pos[m] = first_after(ch, last_id);
        }
        m++;
    }
    /* Replay the missed events of all channels merged in id order, so a
     * stream sees them as it would have live. */
    for (;;) {
        int best = -1;
        uint64_t best_id = UINT64_MAX;
        for (int i = 0; i < m; i++) {
            if (pos[i] < chans[i]->count) {
                uint64_t id = ring_at(chans[i], pos[i])->src->id;
                if (id < best_id) {
                    best_id = id;
                    best = i;
                }
            }
        }
        if (best < 0 || !stream_is_open(st))
            break;
        struct hist_entry *e = ring_at(chans[best], pos[best]);
        size_t before = e->bytes;
        struct frame *f = entry_frame(cs, e, views[best]);
        cs->history_bytes += e->bytes - before;
        if (f)
            stream_replay(st, f);
        pos[best]++;
    }
    int rc = 0;
    for (int i = 0; i < m && rc == 0; i++)
        if (!add_sub(cs, st, chans[i], views[i]))
            rc = -1;
    /* Replays may have framed more. Only now: a subscribed channel is not
     * released by the trim, and chans[] is used no more. */
    trim_history(cs, NULL);
    return rc;
}

void channels_unsubscribe(struct channels *cs, struct sse_stream *st)
{
    struct sub *s = st->subs;
    st->subs = NULL;
    while (s) {
        struct sub *next = s->next_in_stream;
        struct channel *ch = s->chan;
        int vi = view_index(ch, s->view, false);
        struct chan_view *cv = &ch->views[vi];
        uint32_t last = --cv->nsubs;   /* the last one fills the hole */
        cv->streams[s->index] = cv->streams[last];
        cv->subs[s->index] = cv->subs[last];
        cv->subs[s->index]->index = s->index;
        ch->nsubs--;
        cs->nsubs--;
        if (cv->nsubs == 0) {   /* keep the view list short: publish walks it */
            free(cv->streams);
            free(cv->subs);
            ch->views[vi] = ch->views[--ch->nviews];
        }
        free(s);
        recount(cs, ch);
        release_if_unused(cs, ch);
        s = next;
    }
}

void channels_describe_stream(const struct sse_stream *st, struct buf *b)
{
    size_t n = 0;
    const struct sub *only = NULL;
    for (const struct sub *s = st->subs; s; s = s->next_in_stream) {
        const struct sub *t = st->subs;
        while (t != s && t->chan != s->chan)   /* met before (another view)? */
            t = t->next_in_stream;
        if (t == s) {
            n++;
            only = s;
        }
    }
    if (n == 1) {
        buf_puts(b, "\"channel\":");
        json_string(b, only->chan->name, only->chan->name_len);
        buf_puts(b, ",");
    }
    buf_puts(b, "\"channels\":[");
    n = 0;
    for (const struct sub *s = st->subs; s; s = s->next_in_stream) {
        const struct sub *t = st->subs;
        while (t != s && t->chan != s->chan)
            t = t->next_in_stream;
        if (t != s)
            continue;
        if (n++)
            buf_puts(b, ",");
        json_string(b, s->chan->name, s->chan->name_len);
    }
    buf_puts(b, "]");
}

bool channels_framing(const struct channels *cs)
{
    return cs->framing;
}

uint64_t channels_last_id(const struct channels *cs)
{
    return cs->last_id;
}

void channels_traffic(const struct channels *cs, uint64_t *published,
                      uint64_t *delivered)
{
    *published = cs->published;
    *delivered = cs->delivered;
}

void channels_set_clock(struct channels *cs, double (*clock)(void))
{
    cs->clock = clock;
}

void channels_counts(const struct channels *cs, size_t *channels,
                     size_t *subs, size_t *events, size_t *history_bytes)
{
    *channels = HASH_COUNT(cs->by_name);
    *subs = cs->nsubs;
    *events = cs->nevents;
    *history_bytes = cs->history_bytes;
}

uint32_t channels_subscribers(struct channels *cs, const char *name,
                              size_t name_len)
{
    struct channel *ch = find(cs, name, name_len);
    return ch ? ch->nsubs : 0;
}
