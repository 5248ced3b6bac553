#include "channel.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "buf.h"
#include "bus.h"
#include "counter.h"
#include "frame.h"
#include "log.h"
#include "metrics.h"
#include "sse.h"
#include "stream.h"

struct resume_wait;

/* One stream on one channel. Idle streams are most of a server's memory:
 * 40 bytes (a 48-byte malloc chunk, 80 before), with what only a cluster
 * resume needs apart. */
struct sub {
    struct sub *next_in_stream;
    struct sse_stream *stream;
    struct lchan *chan;
    int view;
    uint32_t index;               /* in its chan_view's arrays */
    struct sub_resume *resume;    /* a cluster resume in progress, else NULL */
};

/* Cluster resume: the sub is not in the view's arrays yet but on its
 * channel's resuming list; while wait is set its live events are kept for
 * the answer from Redis, then those up to floor are ones it got in the
 * replay (dropped) and the first one past it moves it to the view. */
#if UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(sizeof(struct sub) + 8 <= 48, "struct sub outgrew its 48-byte malloc chunk");
#endif

struct sub_resume {
    struct sub *next;             /* on the channel's resuming list */
    struct resume_wait *wait;
    int req;                      /* its index in the wait's request */
    uint64_t floor;
};

/* A stream waiting for its replay from Redis: the live events of its
 * channels that came meanwhile, to merge with the replay. */
struct resume_wait {
    struct resume_wait *next;
    uint64_t token;
    struct sse_stream *stream;
    char *last_raw;
    int n;
    struct sub *subs[BUS_MAX_RESUME];
    struct bus_replay kept;       /* req: the sub's index */
};

/* A channel's subscribers on one view. Delivery walks streams[] front to
 * back, so the next streams can be prefetched: with thousands of
 * subscribers each one is a cache miss, and a linked list would expose
 * every one of them in turn. subs[i] is the record behind streams[i]. */
struct chan_view {
    int view;
    uint32_t nsubs, cap;
    struct sse_stream **streams;
    struct sub **subs;
};

/* A channel as this worker sees it: its local subscribers. It exists while
 * it has some; the history is the bus's. */
struct lchan {
    UT_hash_handle hh;
    struct sub *resuming;         /* cluster resumes not in a view yet */
    struct chan_view *views;
    uint32_t nviews;
    uint32_t nsubs;
    size_t name_len;
    char name[];
};

struct channels {
    struct bus *bus;
    bool own_bus;                 /* channels_new: a bus of its own */
    unsigned wid;
    struct ev_loop *loop;
    struct lchan *by_name;
    size_t nsubs;
    uint64_t own_delivered;
    uint64_t *delivered;          /* times an event was queued on a stream */
    view_framer framer;
    void *framer_ctx;
    bool framing;                 /* inside a script's transform */
    bool draining;
    ev_async wake;                /* the bus queued events for this worker */
    struct bus_batch batch;       /* taken from the inbox */
    struct resume_wait *waits;    /* cluster resumes waiting for Redis */
    uint64_t next_token;
    struct replay_slot *replay_cache;   /* made on the first masked replay */
    size_t replay_cache_bytes;
    /* Cluster mode: Redis's answers to publishes a script waits for,
     * handed to answer_fn from the wake-up only, never from inside a
     * script's own call (a subscribe drains the inbox too). */
    struct bus_answer *answers;
    bool in_wake;
    publish_answer_fn answer_fn;
    void *answer_ctx;
};

/* ---- framing ---------------------------------------------------------- */

/* Masked frames made for replays, per worker: a resume storm (a deploy
 * reconnecting thousands of clients with one Last-Event-ID) runs a view's
 * transform once per (event, view), not once per resuming stream. Ids are
 * unique, so (id, view) names one frame. Direct-mapped and bounded in
 * bytes; emptied on reload, when a view's transform may change. Live
 * delivery frames once per view anyway and neither reads nor fills it (a
 * live frame carries its publish stamp, a replay none). */
#define REPLAY_CACHE_SLOTS 512
#define REPLAY_CACHE_BYTES (1u << 20)

struct replay_slot {
    uint64_t id;                  /* 0: empty */
    int view;
    bool dropped;                 /* the view's transform dropped the event */
    struct frame *frame;
};

/* The frame of ev for a view, new for the caller: the raw view is a local
 * header on the bus's shared bytes (framed once per process); a masked
 * view is the script's transform, run in this worker's own Lua state. */
static struct frame *frame_for(struct channels *cs, struct bus_event *ev, int view)
{
    if (view == 0)
        return frame_local(ev->raw);
    if (!cs->framer)
        return NULL;
    cs->framing = true;
    struct frame *f = cs->framer(cs->framer_ctx, view, &ev->src);
    cs->framing = false;
    if (f)
        f->id = ev->src.id;   /* a new frame of ours: no one else holds it yet */
    return f;
}

static void replay_slot_clear(struct channels *cs, struct replay_slot *slot)
{
    if (slot->frame) {
        cs->replay_cache_bytes -= slot->frame->len;
        frame_unref(slot->frame);
    }
    *slot = (struct replay_slot){ 0 };
}

/* frame_for for a replay: a masked view's frame of ev from the cache, or
 * framed and kept there. */
static struct frame *replay_frame_for(struct channels *cs, struct bus_event *ev, int view)
{
    uint64_t id = ev->src.id;
    if (view == 0 || id == 0)
        return frame_for(cs, ev, view);
    if (!cs->replay_cache) {
        cs->replay_cache = calloc(REPLAY_CACHE_SLOTS, sizeof *cs->replay_cache);
        if (!cs->replay_cache)
            return frame_for(cs, ev, view);
    }
    struct replay_slot *slot =
        &cs->replay_cache[(id * 31u + (unsigned)view) % REPLAY_CACHE_SLOTS];
    if (slot->id == id && slot->view == view)
        return slot->dropped ? NULL : frame_ref(slot->frame);
    struct frame *f = frame_for(cs, ev, view);
    if (!cs->framer)
        return f;   /* no transform ran: nothing to remember */
    replay_slot_clear(cs, slot);
    if (f && cs->replay_cache_bytes + f->len > REPLAY_CACHE_BYTES)
        return f;   /* over the bound: framed, not kept */
    *slot = (struct replay_slot){ .id = id, .view = view, .dropped = f == NULL,
                                  .frame = f ? frame_ref(f) : NULL };
    if (f)
        cs->replay_cache_bytes += f->len;
    return f;
}

void channels_views_changed(struct channels *cs)
{
    if (!cs || !cs->replay_cache)
        return;
    for (size_t i = 0; i < REPLAY_CACHE_SLOTS; i++)
        replay_slot_clear(cs, &cs->replay_cache[i]);
}

/* ---- delivery ----------------------------------------------------------- */

/* How many subscribers ahead delivery asks the CPU to fetch: enough to
 * cover a memory access with the work of the ones in between. */
#define PREFETCH_AHEAD 8

static struct lchan *find(struct channels *cs, const char *name, size_t len)
{
    struct lchan *ch = NULL;
    HASH_FIND(hh, cs->by_name, name, len, ch);
    return ch;
}

static bool add_to_view(struct lchan *ch, struct sub *s);

/* A live event of a channel with resuming subscribers: kept for the ones
 * still waiting for Redis, dropped for the ones that had it in their
 * replay, and the first one past the replay moves the subscriber into
 * its view (the fan-out then gives it this event). */
static void deliver_resuming(struct channels *cs, struct lchan *ch, struct bus_event *ev)
{
    (void)cs;
    struct sub **link = &ch->resuming;
    while (*link) {
        struct sub *s = *link;
        struct sub_resume *r = s->resume;
        if (r->wait) {
            if (!bus_replay_push(&r->wait->kept, ev, r->req))
                stream_abort(s->stream);   /* never a silent hole */
        } else if (ev->src.id > r->floor) {
            if (add_to_view(ch, s)) {
                *link = r->next;
                s->resume = NULL;
                free(r);
                continue;
            }
            stream_abort(s->stream);   /* stays on the list till it is freed */
        }
        link = &r->next;
    }
}

/* One event to this worker's subscribers of its channel, framed once per
 * view. Returns the streams that took it. */
static uint64_t deliver(struct channels *cs, struct bus_event *ev)
{
    struct lchan *ch = find(cs, ev->chan, ev->chan_len);
    if (!ch)
        return 0;   /* its last local subscriber left meanwhile */
    if (ch->resuming)
        deliver_resuming(cs, ch, ev);
    uint64_t n = 0;
    uint32_t stamp = metrics_stamp_now();   /* one clock read per event */
    for (uint32_t v = 0; v < ch->nviews; v++) {
        struct chan_view *cv = &ch->views[v];
        struct frame *f = frame_for(cs, ev, cv->view);
        if (!f)
            continue;
        f->queued_us = stamp;   /* a frame of this worker's own: nobody reads it yet */
        struct sse_stream **streams = cv->streams;
        uint32_t ns = cv->nsubs;
        for (uint32_t i = 0; i < ns; i++) {
            if (i + PREFETCH_AHEAD < ns)
                stream_prefetch(streams[i + PREFETCH_AHEAD]);
            if (i + PREFETCH_AHEAD / 2 < ns)
                stream_prefetch_queue(streams[i + PREFETCH_AHEAD / 2]);
            if (stream_send(streams[i], f))
                n++;
        }
        frame_unref(f);
    }
    counter_add(cs->delivered, n);
    return n;
}

static void resumed(struct channels *cs, struct bus_resumed *r);
static void notice_lost(struct channels *cs, const struct bus_notice *n);

/* Delivers b in order; returns the streams that took event id. */
static uint64_t deliver_batch(struct channels *cs, struct bus_batch *b, uint64_t id)
{
    uint64_t reached = 0;
    /* Before the events: they come after what was lost. */
    while (b->notices) {
        struct bus_notice *n = b->notices;
        b->notices = n->next;
        notice_lost(cs, n);
        free(n);
    }
    for (size_t i = 0; i < b->len; i++) {
        uint64_t n = deliver(cs, b->evs[i]);
        if (b->evs[i]->src.id == id)
            reached = n;
        bus_event_unref(b->evs[i]);
    }
    b->len = 0;
    if (b->answers) {
        struct bus_answer **tail = &cs->answers;
        while (*tail)
            tail = &(*tail)->next;
        *tail = b->answers;
        b->answers = NULL;
        if (!cs->in_wake)   /* handled in the wake-up, in this loop turn */
            ev_feed_event(cs->loop, &cs->wake, EV_ASYNC);
    }
    while (b->resumed) {
        struct bus_resumed *r = b->resumed;
        b->resumed = r->next;
        resumed(cs, r);
    }
    return reached;
}

static uint64_t drain(struct channels *cs, uint64_t id)
{
    if (cs->draining)
        return 0;   /* the outer drain takes the rest in its turn */
    cs->draining = true;
    bus_take(cs->bus, cs->wid, &cs->batch);
    uint64_t reached = deliver_batch(cs, &cs->batch, id);
    cs->draining = false;
    return reached;
}

void channels_drain(struct channels *cs)
{
    drain(cs, 0);
}

static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    struct channels *cs = a->data;
    cs->in_wake = true;
    channels_drain(cs);
    cs->in_wake = false;
    while (cs->answers) {
        struct bus_answer *ans = cs->answers;
        cs->answers = ans->next;
        if (cs->answer_fn)
            cs->answer_fn(cs->answer_ctx, ans);
        free(ans);
    }
}

/* ---- life --------------------------------------------------------------- */

struct channels *channels_new_on(struct bus *bus, unsigned wid, struct ev_loop *loop,
                                 uint64_t *delivered)
{
    struct channels *cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    cs->bus = bus;
    cs->wid = wid;
    cs->loop = loop;
    cs->delivered = delivered ? delivered : &cs->own_delivered;
    ev_async_init(&cs->wake, on_wake);
    cs->wake.data = cs;
    ev_async_start(loop, &cs->wake);
    ev_unref(loop);   /* the wake-up alone must not keep the loop alive */
    bus_attach(bus, wid, loop, &cs->wake);
    return cs;
}

struct channels *channels_new(struct ev_loop *loop, size_t history_len,
                              double history_ttl, size_t history_bytes)
{
    struct bus *bus = bus_new(loop, 1, history_len, history_ttl, history_bytes);
    if (!bus)
        return NULL;
    struct channels *cs = channels_new_on(bus, 0, loop, NULL);
    if (!cs) {
        bus_free(bus);
        return NULL;
    }
    cs->own_bus = true;
    return cs;
}

static void wait_free(struct resume_wait *w)
{
    for (size_t i = 0; i < w->kept.len; i++)
        bus_event_unref(w->kept.items[i].ev);
    free(w->kept.items);
    free(w->last_raw);
    free(w);
}

static void free_lchan(struct channels *cs, struct lchan *ch)
{
    HASH_DEL(cs->by_name, ch);
    for (uint32_t i = 0; i < ch->nviews; i++) {
        free(ch->views[i].streams);
        free(ch->views[i].subs);
    }
    free(ch->views);
    free(ch);
}

void channels_free(struct channels *cs)
{
    if (!cs)
        return;
    bus_detach(cs->bus, cs->wid);
    ev_ref(cs->loop);
    ev_async_stop(cs->loop, &cs->wake);
    struct lchan *ch, *tmp;
    HASH_ITER(hh, cs->by_name, ch, tmp)
        free_lchan(cs, ch);
    for (size_t i = 0; i < cs->batch.len; i++)
        bus_event_unref(cs->batch.evs[i]);
    free(cs->batch.evs);
    while (cs->batch.resumed) {
        struct bus_resumed *r = cs->batch.resumed;
        cs->batch.resumed = r->next;
        bus_resumed_free(r);
    }
    while (cs->batch.notices) {
        struct bus_notice *n = cs->batch.notices;
        cs->batch.notices = n->next;
        free(n);
    }
    struct bus_answer *ans[] = { cs->batch.answers, cs->answers };
    for (int i = 0; i < 2; i++)
        while (ans[i]) {
            struct bus_answer *next = ans[i]->next;
            free(ans[i]);
            ans[i] = next;
        }
    while (cs->waits) {
        struct resume_wait *w = cs->waits;
        cs->waits = w->next;
        wait_free(w);
    }
    channels_views_changed(cs);
    free(cs->replay_cache);
    if (cs->own_bus)
        bus_free(cs->bus);
    free(cs);
}

struct bus *channels_bus(const struct channels *cs)
{
    return cs->bus;
}

void channels_set_framer(struct channels *cs, view_framer fn, void *ctx)
{
    cs->framer = fn;
    cs->framer_ctx = ctx;
}

void channels_set_answer_fn(struct channels *cs, publish_answer_fn fn, void *ctx)
{
    cs->answer_fn = fn;
    cs->answer_ctx = ctx;
}

int channels_configure(struct channels *cs, const char *prefix,
                       size_t history_len, double history_ttl)
{
    return bus_configure(cs->bus, prefix, history_len, history_ttl);
}

/* ---- publish ---------------------------------------------------------- */

int channels_publish(struct channels *cs, const char *name, size_t name_len,
                     const char *event, size_t event_len,
                     const char *data, size_t data_len,
                     struct publish_result *out)
{
    if (cs->framing)
        return -2;   /* a transform publishing would re-enter fan-out */
    int rc = bus_publish(cs->bus, cs->wid, name, name_len, event, event_len, data,
                         data_len, out);
    if (rc != 0)
        return rc;   /* failed, or handed to Redis: it comes back as a delivery */
    /* This worker's own subscribers at once, after whatever other workers
     * published before and is already queued here: the inbox is in id
     * order, so a local id cannot overtake an earlier one. Reached counts
     * the local streams that took it, as with one worker, plus the other
     * workers' subscribers it was queued for. */
    out->reached += (uint32_t)drain(cs, out->id);
    return 0;
}

/* ---- subscribe -------------------------------------------------------- */

static struct lchan *get(struct channels *cs, const char *name, size_t len)
{
    struct lchan *ch = find(cs, name, len);
    if (ch)
        return ch;
    ch = calloc(1, sizeof *ch + len + 1);
    if (!ch)
        return NULL;
    memcpy(ch->name, name, len);
    ch->name_len = len;
    HASH_ADD_KEYPTR(hh, cs->by_name, ch->name, ch->name_len, ch);
    return ch;
}

static int view_index(struct lchan *ch, int view, bool create)
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

/* Into its view's arrays (made if need be). False out of memory. */
static bool add_to_view(struct lchan *ch, struct sub *s)
{
    int vi = view_index(ch, s->view, true);
    if (vi < 0)
        return false;
    struct chan_view *cv = &ch->views[vi];
    if (cv->nsubs == cv->cap) {
        uint32_t cap = cv->cap ? cv->cap * 2 : 4;
        struct sse_stream **streams = realloc(cv->streams, sizeof *streams * cap);
        if (streams)
            cv->streams = streams;
        struct sub **subs = streams ? realloc(cv->subs, sizeof *subs * cap) : NULL;
        if (subs)
            cv->subs = subs;
        if (!streams || !subs) {
            if (cv->nsubs == 0) {   /* a view made for this one: delivery must not frame it */
                free(cv->streams);
                free(cv->subs);
                ch->views[vi] = ch->views[--ch->nviews];
            }
            return false;
        }
        cv->cap = cap;
    }
    s->index = cv->nsubs;
    cv->streams[cv->nsubs] = s->stream;
    cv->subs[cv->nsubs] = s;
    cv->nsubs++;
    return true;
}

/* resuming: onto the channel's resuming list instead of the view. */
static struct sub *add_sub(struct channels *cs, struct sse_stream *st, const char *name,
                           size_t len, int view, bool resuming)
{
    struct lchan *ch = get(cs, name, len);
    if (!ch)
        return NULL;
    struct sub *s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->stream = st;
    s->chan = ch;
    s->view = view;
    if (resuming) {
        s->resume = calloc(1, sizeof *s->resume);
        if (!s->resume)
            goto fail;
        s->resume->next = ch->resuming;
        ch->resuming = s;
    } else if (!add_to_view(ch, s)) {
        goto fail;
    }
    ch->nsubs++;
    cs->nsubs++;
    s->next_in_stream = st->subs;
    st->subs = s;
    return s;
fail:
    free(s);
    if (ch->nsubs == 0)
        free_lchan(cs, ch);
    return NULL;
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

static void send_reset(struct sse_stream *s, const char *chan, size_t chan_len,
                       const char *reason, const char *last_raw)
{
    s->resume_reset = true;   /* for the access log */
    struct buf data = { 0 };
    buf_puts(&data, "{\"channel\":");
    json_string(&data, chan, chan_len);
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

#define MAX_SUBSCRIBE 64

static const char *reset_reason(enum bus_reset r)
{
    return r == BUS_RESET_UNKNOWN_ID ? "unknown-id" :
           r == BUS_RESET_LOST ? "history-lost" : "history-expired";
}

/* Subscribers that cannot get their replay: told, and live from now on. */
static void resume_lost(struct sub **subs, int n, const char *last_raw)
{
    for (int i = 0; i < n; i++) {
        struct sub *s = subs[i];
        s->resume->wait = NULL;
        s->resume->floor = 0;
        send_reset(s->stream, s->chan->name, s->chan->name_len, "history-lost", last_raw);
    }
}

/* Cluster mode: events of a channel are gone for good; every stream of it
 * here that is live (not waiting for its resume answer, which tells it
 * itself) gets the reset event. The streams are listed first: a failed
 * send aborts its stream, which may change the views. */
static void notice_lost(struct channels *cs, const struct bus_notice *n)
{
    struct lchan *ch = find(cs, n->chan, n->chan_len);
    if (!ch)
        return;
    size_t total = 0;
    for (uint32_t v = 0; v < ch->nviews; v++)
        total += ch->views[v].nsubs;
    struct sse_stream **list = total ? malloc(sizeof *list * total) : NULL;
    if (!list) {
        if (total)
            log_warn("out of memory: %zu streams of %.*s miss a history-lost reset",
                     total, (int)ch->name_len, ch->name);
        return;
    }
    size_t k = 0;
    for (uint32_t v = 0; v < ch->nviews; v++)
        for (uint32_t i = 0; i < ch->views[v].nsubs; i++)
            list[k++] = ch->views[v].streams[i];
    char last[24];
    snprintf(last, sizeof last, "%" PRIu64, n->last_id);
    for (size_t i = 0; i < k; i++)   /* n's name: ch may go with an abort */
        send_reset(list[i], n->chan, n->chan_len, "history-lost", last);
    free(list);
}

/* Cluster mode: the replay of subs is read from Redis; meanwhile their
 * live events are kept (deliver_resuming). */
static void ask_resume(struct channels *cs, struct sse_stream *st, struct sub **subs,
                       int n, const char *last_raw, uint64_t last_id)
{
    struct resume_wait *w = calloc(1, sizeof *w);
    char *raw = strdup(last_raw);
    if (!w || !raw) {
        free(w);
        free(raw);
        resume_lost(subs, n, last_raw);
        return;
    }
    w->token = ++cs->next_token;
    w->stream = st;
    w->last_raw = raw;
    w->n = n;
    const char *names[MAX_SUBSCRIBE];
    size_t lens[MAX_SUBSCRIBE];
    for (int i = 0; i < n; i++) {
        w->subs[i] = subs[i];
        subs[i]->resume->wait = w;
        subs[i]->resume->req = i;
        names[i] = subs[i]->chan->name;
        lens[i] = subs[i]->chan->name_len;
    }
    if (bus_resume(cs->bus, cs->wid, w->token, names, lens, n, last_id) < 0) {
        resume_lost(subs, n, last_raw);
        wait_free(w);
        return;
    }
    w->next = cs->waits;
    cs->waits = w;
}

static int by_id_then_req(const void *a, const void *b)
{
    const struct bus_replay_item *x = a, *y = b;
    if (x->ev->src.id != y->ev->src.id)
        return x->ev->src.id < y->ev->src.id ? -1 : 1;
    return x->req < y->req ? -1 : x->req > y->req;
}

/* Redis answered a resume: resets, then the replay merged with the live
 * events that came meanwhile, in id order, each once; after it a
 * subscriber drops live events up to what it got (they may still be on
 * their way) and joins its view with the first one past. */
static void resumed(struct channels *cs, struct bus_resumed *r)
{
    struct resume_wait **link = &cs->waits;
    while (*link && (*link)->token != r->token)
        link = &(*link)->next;
    struct resume_wait *w = *link;
    if (!w) {   /* the stream went meanwhile */
        bus_resumed_free(r);
        return;
    }
    *link = w->next;
    struct sse_stream *st = w->stream;
    if (r->n != w->n) {
        resume_lost(w->subs, w->n, w->last_raw);
        wait_free(w);
        bus_resumed_free(r);
        return;
    }
    uint64_t sent[BUS_MAX_RESUME] = { 0 };
    for (int i = 0; i < w->n; i++)
        if (r->resets[i] != BUS_RESET_NONE) {
            send_reset(st, w->subs[i]->chan->name, w->subs[i]->chan->name_len,
                       reset_reason(r->resets[i]), w->last_raw);
            sent[i] = r->upto[i];   /* what the channel had then is behind the reset */
        }
    /* Both lists into kept (which owns them all), sorted once. */
    bool ok = true;
    for (size_t i = 0; i < r->replay.len && ok; i++)
        ok = bus_replay_push(&w->kept, r->replay.items[i].ev, r->replay.items[i].req);
    if (!ok) {
        stream_abort(st);
    } else {
        if (w->kept.len > 1)
            qsort(w->kept.items, w->kept.len, sizeof *w->kept.items, by_id_then_req);
        for (size_t i = 0; i < w->kept.len && stream_is_open(st); i++) {
            struct bus_replay_item *it = &w->kept.items[i];
            if (it->req < 0 || it->req >= w->n || it->ev->src.id <= sent[it->req])
                continue;   /* had it: live and in the replay */
            sent[it->req] = it->ev->src.id;
            struct frame *f = replay_frame_for(cs, it->ev, w->subs[it->req]->view);
            if (f) {
                stream_replay(st, f);
                frame_unref(f);
            }
        }
    }
    for (int i = 0; i < w->n; i++) {
        struct sub *s = w->subs[i];
        s->resume->wait = NULL;
        s->resume->floor = r->upto[i] > sent[i] ? r->upto[i] : sent[i];
    }
    wait_free(w);
    bus_resumed_free(r);
}

int channels_subscribe(struct channels *cs, struct sse_stream *st,
                       const struct subscription_req *reqs, int n,
                       const char *last_raw, uint64_t last_id)
{
    if (n > MAX_SUBSCRIBE)
        return -1;
    struct subscription_req want[MAX_SUBSCRIBE] = { 0 };
    enum bus_reset resets[MAX_SUBSCRIBE] = { 0 };
    int m = 0;
    for (int i = 0; i < n; i++) {
        bool dup = false;
        for (int j = 0; j < m && !dup; j++)
            dup = want[j].view == reqs[i].view && want[j].name_len == reqs[i].name_len &&
                  memcmp(want[j].name, reqs[i].name, reqs[i].name_len) == 0;
        for (struct sub *s = st->subs; s && !dup; s = s->next_in_stream)   /* subscribed before */
            dup = s->view == reqs[i].view && s->chan->name_len == reqs[i].name_len &&
                  memcmp(s->chan->name, reqs[i].name, reqs[i].name_len) == 0;
        if (!dup)
            want[m++] = reqs[i];
    }
    /* Counted and the replay taken under the bus's lock, with what was
     * queued for this worker till then: delivered here before the stream
     * joins, so it sees the replay, then live events, nothing twice. */
    struct bus_replay replay = { 0 };
    struct bus_batch pending = { 0 };
    int rc = bus_subscribe(cs->bus, cs->wid, want, m, last_raw != NULL, last_id,
                           &pending, &replay, resets);
    deliver_batch(cs, &pending, 0);
    free(pending.evs);
    if (rc == 0) {
        for (int i = 0; i < m; i++) {
            if (resets[i] != BUS_RESET_NONE && resets[i] != BUS_RESET_REMOTE)
                send_reset(st, want[i].name, want[i].name_len, reset_reason(resets[i]),
                           last_raw);
        }
        for (size_t i = 0; i < replay.len && stream_is_open(st); i++) {
            struct bus_replay_item *it = &replay.items[i];
            struct frame *f = replay_frame_for(cs, it->ev, want[it->req].view);
            if (f) {
                stream_replay(st, f);
                frame_unref(f);
            }
        }
    }
    for (size_t i = 0; i < replay.len; i++)
        bus_event_unref(replay.items[i].ev);
    free(replay.items);
    if (rc < 0)
        return -1;   /* the bus counted nothing */
    struct sub *remote[MAX_SUBSCRIBE];
    int nremote = 0;
    for (int i = 0; i < m; i++) {
        struct sub *s = add_sub(cs, st, want[i].name, want[i].name_len, want[i].view,
                                resets[i] == BUS_RESET_REMOTE);
        if (s && s->resume)
            remote[nremote++] = s;
        if (!s) {
            /* Not local, so not counted either. */
            const char *names[MAX_SUBSCRIBE];
            size_t lens[MAX_SUBSCRIBE];
            for (int j = i; j < m; j++) {
                names[j - i] = want[j].name;
                lens[j - i] = want[j].name_len;
            }
            bus_unsubscribe(cs->bus, cs->wid, names, lens, m - i);
            return -1;
        }
    }
    if (nremote)
        ask_resume(cs, st, remote, nremote, last_raw, last_id);
    return 0;
}

/* Removes s from its channel's local lists; frees the channel record when
 * it was the last. */
static void remove_sub(struct channels *cs, struct sub *s)
{
    struct lchan *ch = s->chan;
    if (s->resume) {
        struct sub **link = &ch->resuming;
        while (*link != s)
            link = &(*link)->resume->next;
        *link = s->resume->next;
        free(s->resume);
        ch->nsubs--;
        cs->nsubs--;
        if (ch->nsubs == 0)
            free_lchan(cs, ch);
        free(s);
        return;
    }
    int vi = view_index(ch, s->view, false);
    struct chan_view *cv = &ch->views[vi];
    uint32_t last = --cv->nsubs;   /* the last one fills the hole */
    cv->streams[s->index] = cv->streams[last];
    cv->subs[s->index] = cv->subs[last];
    cv->subs[s->index]->index = s->index;
    ch->nsubs--;
    cs->nsubs--;
    if (cv->nsubs == 0) {   /* keep the view list short: delivery walks it */
        free(cv->streams);
        free(cv->subs);
        ch->views[vi] = ch->views[--ch->nviews];
    }
    if (ch->nsubs == 0)
        free_lchan(cs, ch);
    free(s);
}

void channels_unsubscribe(struct channels *cs, struct sse_stream *st)
{
    for (struct resume_wait **link = &cs->waits; *link;) {
        struct resume_wait *w = *link;
        if (w->stream == st) {   /* its answer will find no one */
            *link = w->next;
            for (int i = 0; i < w->n; i++)
                w->subs[i]->resume->wait = NULL;
            wait_free(w);
        } else {
            link = &w->next;
        }
    }
    /* In groups, one lock of the bus per group: names stay valid until
     * their records go, after the bus has counted them out. */
    while (st->subs) {
        const char *names[MAX_SUBSCRIBE];
        size_t lens[MAX_SUBSCRIBE];
        struct sub *group = st->subs, *s = group;
        int n = 0;
        for (; s && n < MAX_SUBSCRIBE; s = s->next_in_stream, n++) {
            names[n] = s->chan->name;
            lens[n] = s->chan->name_len;
        }
        st->subs = s;
        bus_unsubscribe(cs->bus, cs->wid, names, lens, n);
        while (group != s) {
            struct sub *next = group->next_in_stream;
            remove_sub(cs, group);
            group = next;
        }
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
    return bus_last_id(cs->bus);
}

void channels_traffic(const struct channels *cs, uint64_t *published,
                      uint64_t *delivered)
{
    *published = bus_published(cs->bus);
    *delivered = counter_get(cs->delivered);
}

void channels_set_clock(struct channels *cs, double (*clock)(void))
{
    bus_set_clock(cs->bus, clock);
}

void channels_counts(const struct channels *cs, size_t *channels,
                     size_t *subs, size_t *events, size_t *history_bytes)
{
    bus_counts(cs->bus, channels, subs, events, history_bytes);
}

uint32_t channels_subscribers(struct channels *cs, const char *name,
                              size_t name_len)
{
    return bus_subscribers(cs->bus, name, name_len);
}
