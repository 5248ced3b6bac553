/* Fixed-interval deadline lists: one ev_timer for many connections. Every
 * entry of a list has the same interval, so appending keeps it sorted and
 * arming, re-arming and cancelling are O(1) (libev's "timer list" idiom).
 * Used for header timeouts, keep-alive idle timeouts and send stalls
 * (heartbeats are due a per-stream time after its last write: see conn.c). */
#ifndef SLUICE_DEADLINE_H
#define SLUICE_DEADLINE_H

#include <ev.h>
#include <sys/queue.h>

struct deadline_list;

struct deadline {
    TAILQ_ENTRY(deadline) link;
    struct deadline_list *list;  /* NULL when not armed */
    ev_tstamp due;
};

typedef void (*deadline_fn)(struct deadline *d, void *ctx);

struct deadline_list {
    ev_timer timer;
    struct ev_loop *loop;
    ev_tstamp interval;
    TAILQ_HEAD(, deadline) entries;
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

#endif
