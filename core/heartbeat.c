#include "heartbeat.h"

#include <stdlib.h>

#define SLOT_MASK (HB_SLOTS - 1)

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents);

static void link_into(struct hb_node **head, struct hb_node *n)
{
    n->next = *head;
    if (n->next)
        n->next->pprev = &n->next;
    n->pprev = head;
    *head = n;
}

static void unlink_node(struct hb_node *n)
{
    *n->pprev = n->next;
    if (n->next)
        n->next->pprev = n->pprev;
    n->next = NULL;
    n->pprev = NULL;
}

static void arm(struct hb_wheel *wh, int64_t tick)
{
    ev_tstamp after = (double)tick / HB_TICKS_PER_S - ev_now(wh->loop);
    ev_timer_stop(wh->loop, &wh->timer);
    ev_timer_set(&wh->timer, after > 0 ? after : 0, 0);
    ev_timer_start(wh->loop, &wh->timer);
    wh->armed = tick;
}

/* An empty wheel holds no memory and no timer. */
static void release_if_empty(struct hb_wheel *wh)
{
    if (wh->count || wh->busy || !wh->slots)
        return;
    ev_timer_stop(wh->loop, &wh->timer);
    free(wh->slots);
    wh->slots = NULL;
}

bool hb_add(struct hb_wheel *wh, struct ev_loop *loop, hb_fire_fn fire,
            struct hb_node *n, ev_tstamp at)
{
    if (hb_linked(n)) {
        unlink_node(n);
        wh->count--;
    }
    if (!wh->slots) {
        wh->slots = calloc(HB_SLOTS, sizeof *wh->slots);
        if (!wh->slots)
            return false;
        wh->loop = loop;
        wh->fire = fire;
        ev_timer_init(&wh->timer, on_timer, 0, 0);
        wh->timer.data = wh;
        wh->cur = hb_tick(ev_now(loop));
    }
    int64_t due = hb_tick(at);
    if (due < wh->cur)
        due = wh->cur;
    link_into(&wh->slots[due & SLOT_MASK], n);
    wh->count++;
    if (!ev_is_active(&wh->timer) || due < wh->armed)
        arm(wh, due);
    return true;
}

void hb_remove(struct hb_wheel *wh, struct hb_node *n)
{
    if (!hb_linked(n))
        return;
    unlink_node(n);
    wh->count--;
    release_if_empty(wh);
}

/* Passes every slot up to now's tick: their nodes go on a list of their
 * own first, so that a fire callback re-filing its node (or taking out
 * another) never meets a slot being walked. */
static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct hb_wheel *wh = t->data;
    ev_tstamp now = ev_now(loop);
    int64_t to = hb_tick(now + 0.001);   /* rounding must not skip the tick it fired for */
    /* The loop's clock stepped back (it is the wall clock): every node
     * fires, and its owner files it again from now. A step forward past a
     * revolution passes every slot. */
    bool stepped_back = hb_tick(now) + 1 < wh->cur;
    if (stepped_back)
        to = hb_tick(now);
    else if (to < wh->armed)
        to = wh->armed;
    int64_t span = stepped_back || to - wh->cur >= HB_SLOTS ? HB_SLOTS : to - wh->cur + 1;
    struct hb_node *fired = NULL;
    for (int64_t k = wh->cur; k < wh->cur + span; k++) {
        struct hb_node *n;
        while ((n = wh->slots[k & SLOT_MASK])) {
            unlink_node(n);
            link_into(&fired, n);
        }
    }
    wh->cur = to + 1;
    wh->busy = true;
    struct hb_node *n;
    while ((n = fired)) {
        unlink_node(n);
        wh->count--;
        wh->fire(wh, n, now);
    }
    wh->busy = false;
    if (!wh->count) {
        release_if_empty(wh);
        return;
    }
    /* The next slot holding a node: no node's tick comes before it. */
    for (int64_t j = 0; j < HB_SLOTS; j++) {
        if (wh->slots[(wh->cur + j) & SLOT_MASK]) {
            arm(wh, wh->cur + j);
            return;
        }
    }
}
