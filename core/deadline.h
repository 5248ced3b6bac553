/* Fixed-interval deadline lists: one ev_timer for many connections. Every
 * entry of a list has the same interval, so appending keeps it sorted and
 * arming, re-arming and cancelling are O(1) (libev's "timer list" idiom).
 * Used for header timeouts, keep-alive idle timeouts and send stalls
 * (heartbeats are due a per-stream time after its last write: see
 * heartbeat.h). */
#ifndef SLUICE_DEADLINE_H
#define SLUICE_DEADLINE_H

#include <ev.h>
#include <stdbool.h>

/* 24 bytes, two in every connection: a ring through its list's own node,
 * so taking it out needs no pointer to the list. */
struct deadline {
    struct deadline *next, *prev;   /* NULL when not armed */
    ev_tstamp due;
};

typedef void (*deadline_fn)(struct deadline *d, void *ctx);

struct deadline_list {
    ev_timer timer;
    struct ev_loop *loop;
    ev_tstamp interval;
    struct deadline ring;        /* next: the first due, prev: the last */
    deadline_fn expired;
    void *ctx;
};

void deadline_list_init(struct deadline_list *l, struct ev_loop *loop,
                        ev_tstamp interval, deadline_fn expired, void *ctx);
void deadline_list_stop(struct deadline_list *l);

/* Arms d to expire one interval from now (re-arms if already armed, and
 * moves it to l if it was on another list). */
void deadline_arm(struct deadline_list *l, struct deadline *d);
void deadline_cancel(struct deadline *d);

static inline bool deadline_armed(const struct deadline *d)
{
    return d->next != NULL;
}

#endif
