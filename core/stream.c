#include "stream.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "counter.h"
#include "frame.h"
#include "log.h"
#include "sse.h"

static void on_heartbeat(struct hb_wheel *wh, struct hb_node *n, ev_tstamp now);

/* Frames every stream shares; they live as long as the process. */
static struct frame *shared_chunk(const char *sse_text)
{
    char *body;
    size_t n = strlen(sse_text);
    struct frame *f = frame_new_chunk(n, &body);
    if (!f)
        return NULL;
    memcpy(body, sse_text, n);
    frame_make_static(f);
    return f;
}

static struct frame *heartbeat, *last_chunk;
static pthread_once_t constants_once = PTHREAD_ONCE_INIT;

/* Once per process, whichever worker needs them first: static frames are
 * then read by every thread and never counted. */
static void build_constants(void)
{
    heartbeat = shared_chunk(":\n\n");
    last_chunk = frame_copy("0\r\n\r\n", 5);
    if (last_chunk)
        frame_make_static(last_chunk);
}

static struct frame *heartbeat_frame(void)
{
    pthread_once(&constants_once, build_constants);
    return heartbeat;
}

static struct frame *last_chunk_frame(void)
{
    pthread_once(&constants_once, build_constants);
    return last_chunk;
}

void stream_init(struct sse_stream *s, struct stream_env *env)
{
    s->env = env;
}

static struct stream_extra *extra_of(struct sse_stream *s)
{
    if (!s->extra)
        s->extra = calloc(1, sizeof *s->extra);
    return s->extra;
}

static struct frame *gap_marker(const struct sse_stream *s)
{
    return s->extra ? s->extra->gap_marker : NULL;
}

bool stream_set_policy(struct sse_stream *s, enum slow_policy policy,
                       const char *reset, size_t reset_len)
{
    s->slow_policy = (uint8_t)policy;
    if (!reset)
        return true;
    struct stream_extra *x = extra_of(s);
    char *name = x ? strndup(reset, reset_len) : NULL;
    if (!name)
        return false;
    free(x->reset_event);
    x->reset_event = name;
    return true;
}

void stream_release(struct sse_stream *s)
{
    hb_remove(&s->env->heartbeats, &s->heartbeat);
    outbuf_clear(&s->out, s->env->meter);
    if (s->extra) {
        free(s->extra->reset_event);
        frame_unref(s->extra->gap_marker);
        free(s->extra);
        s->extra = NULL;
    }
}

void stream_abort(struct sse_stream *s)
{
    stream_owner_abort(s);
}

void stream_wrote(struct sse_stream *s, size_t before)
{
    size_t written = before > s->out.bytes ? before - s->out.bytes : 0;
    s->replay_credit = written >= s->replay_credit ? 0 : s->replay_credit - (uint32_t)written;
}

/* The whole chunk on an HTTP/1.1 stream, the event's text alone else. */
static void enqueue(struct sse_stream *s, struct frame *f)
{
    uint32_t off = s->chunked ? 0 : f->body_off;
    uint32_t len = s->chunked ? f->len : f->body_len;
    if (!outbuf_push(&s->out, s->env->meter, f, off, len)) {
        log_warn("out of memory queueing output; closing connection");
        stream_owner_abort(s);
        return;
    }
    stream_owner_flush(s);
}

/* Drops the oldest queued events and puts one notice where they were, so
 * the client learns of the gap before any event after it. A notice still
 * queued from an earlier drop is replaced by one with the sum, never
 * counted as a dropped event itself. */
static void drop_oldest(struct sse_stream *s, size_t keep_bytes)
{
    const struct slice *front = outbuf_first_unstarted(&s->out);
    struct frame *marker = gap_marker(s);
    if (front && marker && front->frame == marker)
        outbuf_remove_first_unstarted(&s->out, s->env->meter);
    else
        s->gap_dropped = 0;   /* the previous notice went out */
    if (marker) {
        frame_unref(marker);
        s->extra->gap_marker = NULL;
    }
    s->gap_dropped += outbuf_drop_oldest(&s->out, s->env->meter, keep_bytes);
    if (s->replay_credit > s->out.bytes)   /* dropped replays are not owed */
        s->replay_credit = (uint32_t)s->out.bytes;

    /* Like the other reset events: which channels, and the id to resume
     * from (the last event the client gets before the gap) to fetch what
     * was dropped from history. */
    struct buf data = { 0 };
    buf_puts(&data, "{");
    if (s->env->describe_subs) {
        s->env->describe_subs(s, &data);
        buf_puts(&data, ",");
    }
    buf_printf(&data, "\"reason\":\"slow-consumer\",\"dropped\":%u,\"last_event_id\":",
               s->gap_dropped);
    if (s->out.last_event_id)
        buf_printf(&data, "\"%" PRIu64 "\"}", s->out.last_event_id);
    else
        buf_puts(&data, "null}");
    const char *name = stream_reset_event(s);
    struct sse_event ev = { .event = name, .event_len = strlen(name),
                            .data = data.data, .data_len = data.len, .retry_ms = -1 };
    struct frame *f = data.failed || !extra_of(s) ? NULL : frame_sse(&ev);
    buf_free(&data);
    if (!f || !outbuf_push_front(&s->out, s->env->meter, f, s->chunked ? 0 : f->body_off,
                                 s->chunked ? f->len : f->body_len)) {
        frame_unref(f);
        stream_owner_abort(s);
        return;
    }
    s->extra->gap_marker = f;   /* keeps the reference frame_sse gave us */
}

static bool send(struct sse_stream *s, struct frame *f, bool replay)
{
    if (!s->open || !f)
        return false;
    uint32_t len = s->chunked ? f->len : f->body_len;
    if (replay)   /* (a cap 4 GiB over --max-queued-bytes is as good as none) */
        s->replay_credit = len > UINT32_MAX - s->replay_credit ? UINT32_MAX
                                                               : s->replay_credit + len;
    size_t cap = s->env->max_queued + s->replay_credit;
    /* Output queued this loop turn is not a backlog yet: write it before
     * judging. An empty queue takes any one event, so an event larger than
     * the cap is still deliverable; memory stays bounded by cap + one. */
    if (s->out.bytes && s->out.bytes + len > cap)
        stream_owner_write_now(s);
    if (!s->open)
        return false;
    if (s->out.bytes && s->out.bytes + len > cap) {
        if (s->slow_policy == SLOW_CLOSE) {
            /* Ids and history let it reconnect and resume without loss. */
            counter_add(&s->env->slow_closed, 1);
            stream_note_end(s, STREAM_END_SLOW_CONSUMER);
            log_debug("slow consumer closed (%zu bytes queued)", s->out.bytes);
            stream_owner_abort(s);
            return false;
        }
        counter_add(&s->env->slow_gapped, 1);
        drop_oldest(s, cap / 2);
        if (!s->open)
            return false;
    }
    s->last_write = ev_now(s->env->loop);   /* all an event costs the heartbeat */
    enqueue(s, f);
    return s->open;
}

bool stream_send(struct sse_stream *s, struct frame *f)
{
    return send(s, f, false);
}

bool stream_replay(struct sse_stream *s, struct frame *f)
{
    return send(s, f, true);
}

void stream_start(struct sse_stream *s, struct frame *first, double heartbeat)
{
    stream_send(s, first);   /* sets last_write: the interval starts now */
    if (heartbeat > 0 && s->open) {
        s->heartbeat_s = (float)heartbeat;
        if (!hb_add(&s->env->heartbeats, s->env->loop, on_heartbeat, &s->heartbeat,
                    s->last_write + heartbeat)) {
            log_warn("out of memory starting a heartbeat; closing connection");
            stream_owner_abort(s);
        }
    }
}

void stream_end(struct sse_stream *s)
{
    if (!s->open)
        return;
    if (s->chunked) {
        struct frame *f = last_chunk_frame();
        if (f)
            enqueue(s, f);
    }
    /* Subscriptions go when the owner frees the stream: this may run in
     * the middle of a fan-out (a view transform closing a stream), and
     * the open check in send already keeps events out. */
    hb_remove(&s->env->heartbeats, &s->heartbeat);
    if (s->open)
        stream_owner_ended(s);
}

void stream_goodbye(struct sse_stream *s, long retry_ms)
{
    stream_note_end(s, STREAM_END_SHUTDOWN);
    struct sse_event ev = { .retry_ms = retry_ms, .comment = "server shutting down",
                            .comment_len = 20 };
    struct frame *f = frame_sse(&ev);
    if (f) {
        stream_send(s, f);
        frame_unref(f);
    }
    stream_end(s);
}

/* ev.pod's "be smart about timeouts" (technique 2): events only note the
 * time; when its tick comes, a stream silent for the interval gets a
 * comment, and one that wrote since is filed again one interval after its
 * last write. So no stream is silent for longer than the interval, and an
 * event costs one store. */
static void on_heartbeat(struct hb_wheel *wh, struct hb_node *n, ev_tstamp now)
{
    struct sse_stream *s = (struct sse_stream *)((char *)n - offsetof(struct sse_stream, heartbeat));
    if (!s->open)
        return;
    ev_tstamp interval = s->heartbeat_s;
    ev_tstamp due = s->last_write + interval;
    if (due > now + interval)   /* the loop's clock stepped back */
        due = now + interval;
    if (!hb_passed(wh, due)) {   /* wrote since (cannot fail: a firing wheel keeps its slots) */
        hb_add(wh, s->env->loop, on_heartbeat, n, due);
        return;
    }
    /* A heartbeat behind queued output would tell the proxy nothing new. */
    if (s->out.bytes == 0) {
        struct frame *f = heartbeat_frame();
        if (f)
            enqueue(s, f);
    }
    if (!s->open)
        return;
    s->last_write = now;
    hb_add(wh, s->env->loop, on_heartbeat, n, now + interval);
}
