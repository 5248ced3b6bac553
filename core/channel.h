/* A worker's channels (its hub): its own subscribers grouped by view,
 * fan-out of what the bus hands it (core/bus.h: the id order and the
 * history of the whole process), masked views framed in this worker's Lua
 * state once per event, and Last-Event-ID resume from the bus's history. */
#ifndef SLUICE_CHANNEL_H
#define SLUICE_CHANNEL_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct frame;
struct sse_stream;

/* An event as published, kept so it can be framed for a view that had no
 * subscriber when it was published (a resuming client's). */
struct event_src {
    uint64_t id;
    char *name;         /* NULL: no event: line */
    size_t name_len;
    size_t data_len;
    const char *data;
};

/* Frames src for a masked view (view > 0): the script's transform. NULL
 * drops the event for that view. */
typedef struct frame *(*view_framer)(void *ctx, int view,
                                     const struct event_src *src);

struct channels;
struct bus;

/* The hub of worker wid on a shared bus, created in the worker's thread
 * (its wake-up runs on loop). delivered: the worker's counter of
 * deliveries (NULL: its own). */
struct channels *channels_new_on(struct bus *bus, unsigned wid, struct ev_loop *loop,
                                 uint64_t *delivered);

/* Delivers what the bus queued for this worker (the wake-up does it). */
void channels_drain(struct channels *cs);

struct bus *channels_bus(const struct channels *cs);

/* A hub on a bus of its own (one worker; tests and the test kit).
 * history_bytes bounds the history of all channels together: past it the
 * oldest events (by id, whatever their channel) are dropped first. loop
 * runs the sweeper that drops expired history of quiet channels. */
struct channels *channels_new(struct ev_loop *loop, size_t history_len,
                              double history_ttl, size_t history_bytes);
void channels_free(struct channels *cs);
void channels_set_framer(struct channels *cs, view_framer fn, void *ctx);

/* A view's transform may have changed (a reload): masked frames kept for
 * replays are forgotten. */
void channels_views_changed(struct channels *cs);

struct bus_answer;
/* Cluster mode: Redis answered a publish that asked for a ticket (struct
 * publish_result). Called from the hub's wake-up, outside any script. */
typedef void (*publish_answer_fn)(void *ctx, const struct bus_answer *a);
void channels_set_answer_fn(struct channels *cs, publish_answer_fn fn, void *ctx);

/* History limits for channels whose name starts with prefix ("" = all),
 * longest prefix wins; applies to channels created from now on and to
 * existing ones. */
int channels_configure(struct channels *cs, const char *prefix,
                       size_t history_len, double history_ttl);

struct publish_result {
    uint64_t id;
    /* Subscribers of the whole process the event was queued for: counted
     * when it is published, on every worker. */
    uint32_t reached;
    /* In, cluster mode only: not 0, the caller waits for Redis's answer,
     * which comes back to the hub's answer handler under this number. */
    uint64_t ticket;
};

int channels_publish(struct channels *cs, const char *name, size_t name_len,
                     const char *event, size_t event_len,
                     const char *data, size_t data_len,
                     struct publish_result *out);

struct subscription_req {
    const char *name;
    size_t name_len;
    int view;
};

/* Subscribes a stream to n channels at once. With a Last-Event-ID
 * (last_raw as the client sent it, last_id its value, 0 if it is not a
 * number of ours), first replays what it missed on every channel, merged
 * in id order; a channel whose history no longer covers it gets the reset
 * event instead. */
int channels_subscribe(struct channels *cs, struct sse_stream *s,
                       const struct subscription_req *reqs, int n,
                       const char *last_raw, uint64_t last_id);

void channels_unsubscribe(struct channels *cs, struct sse_stream *s);

struct buf;

/* Appends the JSON members naming the channels s subscribes to, each
 * once: "channel":"a","channels":["a"] for one, "channels":[...] for
 * several. (A stream_env's describe_subs.) */
void channels_describe_stream(const struct sse_stream *s, struct buf *b);

/* True while a script's view transform runs: publishing or subscribing
 * then would change the lists being walked. */
bool channels_framing(const struct channels *cs);

/* The last id assigned (0 before the first event). */
uint64_t channels_last_id(const struct channels *cs);

/* Counts for stats: channels, subscriptions, history entries and the
 * bytes they hold. */
void channels_counts(const struct channels *cs, size_t *channels,
                     size_t *subs, size_t *events, size_t *history_bytes);

/* Events published, and deliveries (times an event was queued on a
 * stream), since the start. */
void channels_traffic(const struct channels *cs, uint64_t *published,
                      uint64_t *delivered);

/* The clock history ages are measured with (monotonic seconds; default
 * clock_mono): for tests. */
void channels_set_clock(struct channels *cs, double (*clock)(void));

/* Subscribers of a channel (0 if it does not exist). */
uint32_t channels_subscribers(struct channels *cs, const char *name,
                              size_t name_len);

#endif
