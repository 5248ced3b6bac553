#include "deadline.h"

#include <math.h>

#include "clock.h"

static struct deadline *first_of(struct deadline_list *l)
{
    return l->ring.next == &l->ring ? NULL : l->ring.next;
}

static void unlink_entry(struct deadline *d)
{
    d->prev->next = d->next;
    d->next->prev = d->prev;
    d->next = d->prev = NULL;
}

static void schedule(struct deadline_list *l)
{
    struct deadline *first = first_of(l);
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
    while ((d = first_of(l)) && d->due <= now) {
        unlink_entry(d);
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
    l->ring.next = l->ring.prev = &l->ring;
    ev_timer_init(&l->timer, on_timer, 0, 0);
    l->timer.data = l;
}

void deadline_list_stop(struct deadline_list *l)
{
    ev_timer_stop(l->loop, &l->timer);
}

/* The list's timer stays set: it fires for an entry gone or later and
 * re-arms for the first one left, if any. */
void deadline_cancel(struct deadline *d)
{
    if (deadline_armed(d))
        unlink_entry(d);
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
    d->prev = l->ring.prev;
    d->next = &l->ring;
    l->ring.prev->next = d;
    l->ring.prev = d;
    if (!ev_is_active(&l->timer))   /* else it fires for an earlier one */
        schedule(l);
}
