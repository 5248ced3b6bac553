/* Heartbeats for many streams on one timer: a wheel of coarse slots
 * (HB_TICKS_PER_S per second) per worker instead of an ev_timer per
 * stream. A stream's node costs 16 bytes and no slot in libev's timer heap;
 * the wheel's timer is armed for the next slot holding a node, so an idle
 * worker does not wake up for empty slots.
 *
 * Nodes fire at the start of the tick their time falls in: early by less
 * than a tick, never late (a heartbeat bounds silence for a proxy). A node
 * keeps no time of its own (16 bytes): every node of a slot the wheel
 * passes fires, and its owner, which knows when it is due, files it again
 * if it is not yet (one due more than a revolution ahead comes round once
 * a revolution). */
#ifndef SLUICE_HEARTBEAT_H
#define SLUICE_HEARTBEAT_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#define HB_TICKS_PER_S 16
#define HB_SLOTS 512            /* a power of two: 32 s a revolution */

struct hb_node {
    struct hb_node *next, **pprev;   /* pprev NULL: not in the wheel */
};

struct hb_wheel;
/* The wheel passed n's slot (n is out of the wheel): now is the loop
 * time; hb_passed says whether n's own time came. */
typedef void (*hb_fire_fn)(struct hb_wheel *wh, struct hb_node *n, ev_tstamp now);

struct hb_wheel {
    ev_timer timer;
    struct ev_loop *loop;
    struct hb_node **slots;   /* HB_SLOTS heads while any node is in, else NULL */
    uint32_t count;           /* nodes in */
    bool busy;                /* firing: keep the slots even if it empties */
    int64_t cur;              /* the first tick not yet passed */
    int64_t armed;            /* the tick the timer is set for, while active */
    hb_fire_fn fire;
};

/* The tick a loop time falls in. */
static inline int64_t hb_tick(ev_tstamp t)
{
    double k = t * HB_TICKS_PER_S;
    int64_t i = (int64_t)k;
    return (double)i > k ? i - 1 : i;
}

/* Whether the wheel has passed the tick t falls in: a node due at t
 * fires now (for a fire callback deciding whether its time came). */
static inline bool hb_passed(const struct hb_wheel *wh, ev_tstamp t)
{
    return hb_tick(t) < wh->cur;
}

static inline bool hb_linked(const struct hb_node *n)
{
    return n->pprev != NULL;
}

/* Files n to fire at the tick `at` falls in (a past time: the next tick
 * the wheel passes). The wheel's memory comes with its first node and
 * goes with its last. False if out of memory (n is then not in). */
bool hb_add(struct hb_wheel *wh, struct ev_loop *loop, hb_fire_fn fire,
            struct hb_node *n, ev_tstamp at);

/* Takes n out, if it is in. */
void hb_remove(struct hb_wheel *wh, struct hb_node *n);

#endif
