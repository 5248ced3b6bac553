/* Cluster mode (--redis): several nodes as one service. The process's
 * bus hands every publish to this module, which runs on the process's
 * main loop and is the only code that talks to Redis: one connection
 * sends the publish script (id from Redis, history append and live
 * message in one step), another subscribes to the live channels this
 * node has subscribers for and hands what comes back to the bus's
 * ordering path (bus_deliver), own publishes included, so every node
 * delivers one order. Gaps (a live message whose previous id is not the
 * last one seen) are filled from the channel's stream in Redis. */
#ifndef SLUICE_REDIS_BUS_H
#define SLUICE_REDIS_BUS_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

struct bus;
struct redis_bus;

/* Parses url (redis://[:password@]host:port[/db]), sets itself as bus's
 * upstream and listener, and starts connecting on loop (the main loop).
 * NULL: a bad URL or out of memory (logged). */
struct redis_bus *redis_bus_new(struct ev_loop *loop, struct bus *bus,
                                const char *url, const char *prefix);

/* Whether Redis answers (the publishing connection is up): for
 * readiness. Any thread; NULL: not in cluster mode, true. */
bool redis_bus_reachable(const struct redis_bus *rb);

/* Whether this node runs the app timers (app:every, app:after): in
 * cluster mode only while it holds the timer lease in Redis; true
 * without --redis. Any thread. */
bool redis_bus_timers_active(void);

/* What an operator watches in cluster mode (sluice.stats().redis and
 * the sluice_redis_* metrics). Counters since start. */
struct redis_bus_stats {
    uint64_t queued;              /* publishes waiting for the main loop */
    uint64_t in_flight;           /* commands sent to Redis, not answered */
    uint64_t lost_in_flight;      /* publishes whose connection went first */
    uint64_t gaps_filled;         /* gaps filled from a channel's history */
    uint64_t quiet_fills;         /* of them, found by the quiet-channel check */
    uint64_t history_lost;        /* history-lost notices, one per channel */
    uint64_t reconnects_publish, reconnects_subscriber;
    uint64_t probe_failures;      /* subscriber connection dropped as wedged */
    uint64_t command_timeouts;    /* publish connection dropped: no answer */
    uint64_t channels;            /* channel records held (followed, or going) */
    uint64_t control_sent;        /* control messages Redis took (PUBLISH answered) */
    uint64_t control_applied;     /* control messages from other nodes applied here */
    uint64_t control_failed;      /* not sent (Redis away, an error), or received unreadable */
    bool reachable;
};

/* A request for every other node (kind "disconnect": the body is
 * disconnect_encode's), PUBLISHed on the control channel <prefix>ctl
 * with this node's id, so that this node skips it when it comes back.
 * Any thread. 0: queued for Redis; BUS_UNAVAILABLE: Redis is away, not
 * sent; -1: out of memory. Not replayed: a node whose subscriber
 * connection is down when it goes never gets it. */
int redis_bus_control(struct redis_bus *rb, const char *kind, const char *body, size_t len);

/* Any thread. */
void redis_bus_stats(struct redis_bus *rb, struct redis_bus_stats *out);

/* In loop's thread, after every worker has stopped. */
void redis_bus_free(struct redis_bus *rb);

#endif
