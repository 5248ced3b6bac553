/* The bus: the order of events for the whole process. One id sequence,
 * the history of every channel (events and their raw view, framed once),
 * the history bounds, and per channel how many subscribers each worker
 * has, so that an event is handed to exactly the workers that want it.
 * One mutex guards it all: publishes are ordered anyway, and the work
 * under it is a few allocations and pointer moves, never script code.
 *
 * A worker's hub (channel.c) takes what the bus hands it from its inbox:
 * filled under the bus's lock in id order (so each inbox is FIFO by id),
 * with an ev_async to wake the worker. Local delivery, masked views and
 * the streams are the hub's. This is the local bus; a cluster bus (Redis)
 * would plug in at bus_listener: a channel's first and last subscriber in
 * the process are where it subscribes and unsubscribes upstream. */
#ifndef SLUICE_BUS_H
#define SLUICE_BUS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"

struct bus;
struct frame;

/* An event as published: immutable, counted atomically, since it is held
 * by the history and by the inboxes of several workers at once. */
struct bus_event {
    uint32_t refs;                /* atomic */
    /* The raw view (FRAME_SHARED), id line included: set under the bus's
     * lock before the event is handed to any worker. */
    struct frame *raw;
    struct event_src src;
    const char *chan;             /* its channel's name (NUL-terminated) */
    size_t chan_len;
    char bytes[];
};

void bus_event_unref(struct bus_event *ev);

struct bus_resumed;

/* Cluster mode: a channel whose events this node can no longer vouch for
 * (a gap Redis's history no longer covers, or Redis lost its data): its
 * open streams get the reset event with reason history-lost. last_id: the
 * last id the node had of it (the reset's last_event_id). */
struct bus_notice {
    struct bus_notice *next;
    uint64_t last_id;
    size_t chan_len;
    char chan[];
};

/* What a worker takes from its inbox at once: events in id order, the
 * answers of cluster resumes (order between the two does not matter: a
 * resuming stream drops what it got twice by id) and notices (handled
 * before the events of the same batch). */
struct bus_batch {
    struct bus_event **evs;
    size_t len, cap;
    struct bus_resumed *resumed;
    struct bus_notice *notices;
    struct bus_answer *answers;
};

/* Cluster mode: what Redis answered to a publish a script waits for
 * (ticket: the publishing worker's number for it). ok false: Redis was
 * or became unreachable (the event may or may not have been published). */
struct bus_answer {
    struct bus_answer *next;
    uint64_t ticket;
    uint64_t id;
    uint32_t reached;             /* nodes that received the live message */
    bool ok;
};

/* Told (under the bus's lock) when a channel gets its first subscriber in
 * the process and loses its last: the seam for a cluster bus. */
struct bus_listener {
    void (*first)(void *ctx, const char *name, size_t len);
    void (*last)(void *ctx, const char *name, size_t len);
    void *ctx;
};

/* Cluster mode (core/redis_bus.c): a publish is handed to publish
 * (called without the bus's lock, from any worker's thread) instead of
 * being ordered here; the event comes back through bus_deliver with the id
 * Redis gave it. publish returns 0 when queued, BUS_UNAVAILABLE when the
 * upstream cannot take it (Redis down or too far behind), -1 out of
 * memory. A ticket other than 0: worker wid waits for the id, which comes
 * back through bus_answer_push (always, once queued: an id or a failure). */
struct bus_upstream {
    int (*publish)(void *ctx, unsigned wid, uint64_t ticket,
                   const char *name, size_t name_len,
                   const char *event, size_t event_len,
                   const char *data, size_t data_len,
                   size_t history_len, double history_ttl);
    /* A stream of worker wid resumes after last_id on n channels: the
     * answer comes back later through bus_resumed (token names it). 0
     * when asked, -1 when it cannot be. */
    int (*resume)(void *ctx, unsigned wid, uint64_t token, const char *const *names,
                  const size_t *lens, int n, uint64_t last_id);
    void *ctx;
};

/* bus_publish's answers besides 0 and -1. */
#define BUS_QUEUED 1          /* handed upstream: no id yet */
#define BUS_UNAVAILABLE (-3)  /* upstream down: nothing published */

/* loop runs the sweeper that drops expired history of quiet channels
 * (the process's main loop). */
struct bus *bus_new(struct ev_loop *loop, unsigned nworkers, size_t history_len,
                    double history_ttl, size_t history_bytes);
/* In the thread of loop, once no worker uses the bus any more. */
void bus_free(struct bus *b);

unsigned bus_workers(const struct bus *b);
void bus_set_clock(struct bus *b, double (*clock)(void));
void bus_set_listener(struct bus *b, const struct bus_listener *l);
/* Before any worker publishes. */
void bus_set_upstream(struct bus *b, const struct bus_upstream *u);
int bus_configure(struct bus *b, const char *prefix, size_t history_len,
                  double history_ttl);

/* The worker's thread: events for worker wid will be pushed and wake
 * started on loop (ev_async_send under the bus's lock, so detaching is
 * safe). Detach drops what is still queued. */
void bus_attach(struct bus *b, unsigned wid, struct ev_loop *loop, ev_async *wake);
void bus_detach(struct bus *b, unsigned wid);

/* Assigns the next id, keeps the event in its channel's history and
 * queues it in the inbox of every worker with subscribers of the channel
 * (including wid's own: the caller then drains it and adds what its own
 * streams took). reached: the subscribers of the other workers, when
 * published. -1 out of memory. With an upstream (cluster mode):
 * BUS_QUEUED (out->id 0; with out->ticket set, the answer comes back
 * through the worker's inbox) or BUS_UNAVAILABLE. */
int bus_publish(struct bus *b, unsigned wid, const char *name, size_t name_len,
                const char *event, size_t event_len,
                const char *data, size_t data_len,
                struct publish_result *out);

/* The ordering path for an event whose id was assigned elsewhere (Redis):
 * kept in the channel's history and queued for every worker with
 * subscribers, like a publish. The caller delivers ids in increasing
 * order per channel. -1 out of memory. */
int bus_deliver(struct bus *b, const char *name, size_t name_len, uint64_t id,
                const char *event, size_t event_len,
                const char *data, size_t data_len);

/* Swaps worker wid's inbox with batch (which must be empty): the caller
 * delivers batch->evs in order, then unrefs them and sets len to 0. */
void bus_take(struct bus *b, unsigned wid, struct bus_batch *batch);

/* Reset reasons a subscription can get instead of its replay. */
/* BUS_RESET_LOST: cluster mode, where this node's history is a cache of
 * the channels it followed and cannot tell what it missed. */
/* BUS_RESET_REMOTE: cluster mode, the replay is asked of Redis
 * (bus_resume) and comes back as a bus_resumed in the worker's inbox. */
enum bus_reset { BUS_RESET_NONE, BUS_RESET_UNKNOWN_ID, BUS_RESET_EXPIRED, BUS_RESET_LOST,
                 BUS_RESET_REMOTE };

struct bus_replay_item {
    struct bus_event *ev;         /* a reference the caller drops */
    int req;                      /* which of the requests it is for */
};

struct bus_replay {
    struct bus_replay_item *items;
    size_t len, cap;
};

/* Appends ev (taking a reference of its own) for request req. False out
 * of memory (nothing taken). */
bool bus_replay_push(struct bus_replay *r, struct bus_event *ev, int req);

/* Subscribes n (channel) requests of worker wid at once, atomically with
 * live delivery: under the lock it takes the worker's inbox into pending
 * (to be delivered before the new stream is added), counts the
 * subscriptions, and with has_last collects the events after last_id of
 * every channel merged in id order into replay, or sets resets[i]. Events
 * after these reach the worker's inbox afterwards. -1: out of memory (no
 * subscription counted; pending is still the caller's to deliver). */
int bus_subscribe(struct bus *b, unsigned wid, const struct subscription_req *reqs,
                  int n, bool has_last, uint64_t last_id,
                  struct bus_batch *pending, struct bus_replay *replay,
                  enum bus_reset *resets);

#define BUS_MAX_RESUME 64

/* The answer to a cluster resume: per channel of the request a reset (or
 * none), and the last id the channel had when it was read (live events up
 * to it are in the replay or reset), and the replay of all channels merged
 * in id order (req: the channel's index in the request). */
struct bus_resumed {
    struct bus_resumed *next;
    uint64_t token;
    int n;
    enum bus_reset resets[BUS_MAX_RESUME];
    uint64_t upto[BUS_MAX_RESUME];
    struct bus_replay replay;
};

void bus_resumed_free(struct bus_resumed *r);

/* Asks the upstream for the replay of a resuming stream (cluster mode).
 * -1: no upstream, or it cannot ask. */
int bus_resume(struct bus *b, unsigned wid, uint64_t token, const char *const *names,
               const size_t *lens, int n, uint64_t last_id);

/* From the upstream (any thread): r goes to worker wid's inbox, which
 * owns it from now on (freed if the worker is gone). */
void bus_resumed_push(struct bus *b, unsigned wid, struct bus_resumed *r);

/* From the upstream (any thread): the answer to a publish worker wid
 * waits for (ticket), to its inbox (dropped if the worker is gone). */
void bus_answer_push(struct bus *b, unsigned wid, uint64_t ticket, bool ok, uint64_t id,
                     uint32_t reached);

/* From the upstream (any thread): a history-lost notice for channel name
 * to every worker with subscribers of it. */
void bus_notice_lost(struct bus *b, const char *name, size_t len, uint64_t last_id);

/* A new event (one reference, raw view framed) that is not kept in any
 * history: a replay read from Redis. NULL out of memory. */
struct bus_event *bus_event_make(const char *chan, size_t chan_len, uint64_t id,
                                 const char *event, size_t event_len,
                                 const char *data, size_t data_len);

/* Counts one subscription of worker wid less on each channel. */
void bus_unsubscribe(struct bus *b, unsigned wid, const char *const *names,
                     const size_t *lens, int n);

uint64_t bus_last_id(struct bus *b);
uint64_t bus_published(struct bus *b);
uint32_t bus_subscribers(struct bus *b, const char *name, size_t name_len);
void bus_counts(struct bus *b, size_t *channels, size_t *subs, size_t *events,
                size_t *history_bytes);

#endif
