#include "deadline.h"

#include <math.h>

#include "clock.h"

static void schedule(struct deadline_list *l)
{
    struct deadline *first = TAILQ_FIRST(&l->entries);
    ev_timer_stop(l->loop, &l->timer);
    if (!first)
        return;
    ev_tstamp wait = first->due - clock_mono();
    ev_timer_set(&l->timer, wait > 0 ? wait : 0, 0);
    ev_timer_start(l->loop, &l->timer);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    (void)loop;
    struct deadline_list *l = t->data;
    ev_tstamp now = clock_mono();
    /* Expire only what was due when we started: callbacks may re-arm
     * entries onto this list, and those must wait a full interval. */
    struct deadline *d;
    while ((d = TAILQ_FIRST(&l->entries)) && d->due <= now) {
        TAILQ_REMOVE(&l->entries, d, link);
        d->list = NULL;
        l->expired(d, l->ctx);
    }
    schedule(l);
}

void deadline_list_init(struct deadline_list *l, struct ev_loop *loop,
                        ev_tstamp interval, deadline_fn expired, void *ctx)
{
    l->loop = loop;
    l->interval = interval;
    l->expired = expired;
    l->ctx = ctx;
    TAILQ_INIT(&l->entries);
    ev_timer_init(&l->timer, on_timer, 0, 0);
    l->timer.data = l;
}

void deadline_list_stop(struct deadline_list *l)
{
    ev_timer_stop(l->loop, &l->timer);
}

void deadline_cancel(struct deadline *d)
{
    struct deadline_list *l = d->list;
    if (!l)
        return;
    int was_first = TAILQ_FIRST(&l->entries) == d;
    TAILQ_REMOVE(&l->entries, d, link);
    d->list = NULL;
    /* A later first entry only makes the timer fire early and re-arm. */
    if (was_first && TAILQ_EMPTY(&l->entries))
        ev_timer_stop(l->loop, &l->timer);
}

void deadline_arm(struct deadline_list *l, struct deadline *d)
{
    deadline_cancel(d);
    double now = clock_mono();
    d->due = now + l->interval;
    /* Always strictly later: an entry re-armed while its list expires must
     * not be due again in the same pass (a tiny interval would loop). */
    if (!(d->due > now))
        d->due = nextafter(now, INFINITY);
    d->list = l;
    int was_empty = TAILQ_EMPTY(&l->entries);
    TAILQ_INSERT_TAIL(&l->entries, d, link);
    if (was_empty)
        schedule(l);
}
