/* What a subscriber is: an SSE stream's queue of frame slices, its
 * slow-consumer policy, replay credit, heartbeat, gap notice and goodbye.
 * Channels queue events here and nowhere else; the transport that carries
 * the stream (conn.c, HTTP/1.1) writes the queue out. Data flows one way,
 * channels -> stream -> transport: the stream reaches its transport only
 * through the stream_owner_* functions at the end of this file. */
#ifndef SLUICE_STREAM_H
#define SLUICE_STREAM_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "heartbeat.h"
#include "outbuf.h"

struct buf;
struct frame;
struct sse_stream;
struct sub;   /* a channel subscription: channel.c's */

enum slow_policy { SLOW_CLOSE, SLOW_DROP_OLDEST };

/* Why a stream ended, for the access log (names in access_log.c). The
 * first cause noted wins: a stream the app closed that then stalls on a
 * gone client still ended because the app closed it. */
enum stream_end {
    STREAM_END_UNKNOWN,
    STREAM_END_CLIENT_GONE,       /* the client closed or reset the connection */
    STREAM_END_SLOW_CONSUMER,     /* over --max-queued-bytes (policy "close") */
    STREAM_END_SEND_TIMEOUT,      /* read nothing for --send-timeout */
    STREAM_END_TOKEN_EXPIRED,     /* its JWT's exp passed */
    STREAM_END_SHUTDOWN,          /* SIGTERM, SIGINT, os.exit */
    STREAM_END_SCRIPT_ERROR,      /* a script error while opening it */
    STREAM_END_CLOSED_BY_APP,     /* s:close() */
    STREAM_END_ADMIN_DISCONNECT,  /* ended by an admin action */
    STREAM_END_SERVER_ERROR,      /* out of memory and the like */
};

/* What every stream of one worker shares. */
struct stream_env {
    struct ev_loop *loop;
    size_t max_queued;            /* bytes a stream may queue (--max-queued-bytes) */
    uint64_t slow_closed;         /* slow consumers closed */
    uint64_t slow_gapped;         /* slow consumers that dropped events */
    /* Appends the JSON members naming s's channels, for the gap notice:
     * the channels' own description, passed down (NULL: none). */
    void (*describe_subs)(const struct sse_stream *s, struct buf *b);
    struct hb_wheel heartbeats;   /* its streams' heartbeats (zeroed: empty) */
    /* The worker's output gauges (core/metrics.h), NULL: not measured;
     * set by the transport (conn.c) as it accepts. */
    struct out_meter *meter;
};

struct sse_stream {
    /* What queueing an event touches comes first (see stream_prefetch). */
    bool open;                    /* takes events; only the owner sets it */
    bool chunked;                 /* events are HTTP/1.1 chunks, else bodies only */
    uint8_t slow_policy : 2;      /* enum slow_policy */
    bool resume_reset : 1;        /* its resume got a reset event (channel.c) */
    uint8_t end_reason;           /* enum stream_end, once known */
    uint32_t gap_dropped;         /* events the queued gap notice accounts for */
    ev_tstamp last_write;         /* loop time the stream last queued output */
    /* The connection's whole output: before a stream opens, its owner
     * queues plain answers here too. */
    struct outbuf out;
    uint32_t replay_credit;       /* resume bytes not yet written (saturates) */
    float heartbeat_s;            /* its heartbeat interval, 0: none */
    struct stream_env *env;
    struct sub *subs;             /* its subscriptions, kept by channel.c */
    /* Due one interval after the last write, which differs per stream:
     * filed on the worker's wheel (core/heartbeat.h), not a timer each. */
    struct hb_node heartbeat;
    struct stream_extra *extra;   /* what few streams need, NULL: none yet */
};

/* Allocated for the streams that name their missed-events event or fall
 * behind with the drop-oldest policy, not carried by every stream. */
struct stream_extra {
    char *reset_event;            /* name of the missed-events event, NULL: default */
    struct frame *gap_marker;     /* queued gap notice, while unsent */
};

void stream_init(struct sse_stream *s, struct stream_env *env);

/* The stream's own settings, before it starts: its slow-consumer policy
 * and the name of its missed-events event (reset NULL: the default).
 * False if out of memory. */
bool stream_set_policy(struct sse_stream *s, enum slow_policy policy,
                       const char *reset, size_t reset_len);

/* Stops the heartbeat, drops what is queued, frees what s holds (not its
 * subscriptions: channels_unsubscribe first). */
void stream_release(struct sse_stream *s);

/* Once the owner has set s->open: queues first (retry hint or comment)
 * and starts the heartbeat (interval in seconds, 0: none). */
void stream_start(struct sse_stream *s, struct frame *first, double heartbeat);

/* Queues one framed event, applying the slow-consumer policy. False if
 * the stream is closed or was closed by the policy. */
bool stream_send(struct sse_stream *s, struct frame *f);

/* Queues an event replayed from history on resume. History holds these
 * frames anyway, so a replay may exceed the queue cap: the cap then grows
 * by what is replayed until the client has read it. */
bool stream_replay(struct sse_stream *s, struct frame *f);

/* Closes at the end of this loop turn; safe in the middle of a fan-out. */
void stream_abort(struct sse_stream *s);

/* Ends cleanly after what is queued (terminating chunk). */
void stream_end(struct sse_stream *s);

/* Ends with a reconnect hint (shutdown). */
void stream_goodbye(struct sse_stream *s, long retry_ms);

/* The owner wrote what was queued down to s->out.bytes from before:
 * written replays are paid off. */
void stream_wrote(struct sse_stream *s, size_t before);

/* Notes why s ends, unless a cause was noted before. */
static inline void stream_note_end(struct sse_stream *s, enum stream_end why)
{
    if (!s->end_reason)
        s->end_reason = (uint8_t)why;
}

static inline bool stream_is_open(const struct sse_stream *s)
{
    return s->open;
}

static inline const char *stream_reset_event(const struct sse_stream *s)
{
    return s->extra && s->extra->reset_event ? s->extra->reset_event : "sluice-reset";
}

/* For a fan-out: fetch what queueing an event touches (the first part of
 * the stream), then, once that has arrived, the output slot. */
static inline void stream_prefetch(const struct sse_stream *s)
{
    __builtin_prefetch(s, 1);
    __builtin_prefetch((const char *)s + 64, 1);
}

static inline void stream_prefetch_queue(const struct sse_stream *s)
{
    outbuf_prefetch_tail(&s->out);
}

/* ---- provided by the owner (conn.c; a fake in the unit tests) ---------
 * Direct calls, not pointers: output to flush is news for every
 * subscriber of every event, and an indirect call there would be paid
 * once per delivery. */

/* Output was queued: write it soon (at most once per loop turn). */
void stream_owner_flush(struct sse_stream *s);
/* The queue is over its cap: write what the socket takes now, before the
 * policy judges; never frees s (this runs in the middle of a fan-out). */
void stream_owner_write_now(struct sse_stream *s);
/* Close at the end of this loop turn (clears s->open). */
void stream_owner_abort(struct sse_stream *s);
/* The stream ended: write what is queued, then close (clears s->open). */
void stream_owner_ended(struct sse_stream *s);

#endif
