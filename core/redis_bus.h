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

/* In loop's thread, after every worker has stopped. */
void redis_bus_free(struct redis_bus *rb);

#endif
