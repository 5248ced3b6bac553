/* A connection's output: a queue of slices of shared frames, written with
 * writev. Queueing never copies payload bytes. */
#ifndef SLUICE_OUTBUF_H
#define SLUICE_OUTBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

struct slice {
    struct frame *frame;
    uint32_t off;
    uint32_t len;
};

#define OUTBUF_INLINE 2

struct outbuf {
    /* The ring: `small` while cap is at most OUTBUF_INLINE, else on the
     * heap (dropped when drained), its pointer where `small` was. */
    union {
        struct slice small[OUTBUF_INLINE];
        struct slice *heap;
    } ring;
    uint32_t head;
    uint32_t count;
    uint32_t cap;        /* power of two */
    bool head_started;   /* the first slice is partly written */
    size_t bytes;        /* bytes still to write */
    uint64_t last_event_id;   /* of the last event written or started, 0: none */
    uint64_t written;         /* bytes handed to the kernel, ever */
    uint64_t events_written;  /* events (FRAME_EVENT) written whole, ever */
};

/* m, in the calls that queue, write or drop: the worker's queued-bytes
 * gauge and publish-to-written histogram (core/metrics.h), passed in
 * rather than kept in every outbuf; NULL: not measured. */
struct out_meter;

static inline const struct slice *outbuf_ring(const struct outbuf *ob)
{
    return ob->cap > OUTBUF_INLINE ? ob->ring.heap : ob->ring.small;
}

/* Asks the CPU to fetch the slot the next push will fill. */
static inline void outbuf_prefetch_tail(const struct outbuf *ob)
{
    if (ob->cap)
        __builtin_prefetch(&outbuf_ring(ob)[(ob->head + ob->count) & (ob->cap - 1)], 1);
}

/* Appends a reference to frame[off, off+len). False when out of memory. */
bool outbuf_push(struct outbuf *ob, struct out_meter *m, struct frame *frame, uint32_t off,
                 uint32_t len);

enum outbuf_status { OUTBUF_DRAINED, OUTBUF_AGAIN, OUTBUF_ERROR };

/* Writes as much as the socket takes, many slices per writev. */
enum outbuf_status outbuf_write(struct outbuf *ob, struct out_meter *m, int fd);

/* Drops queued events (FRAME_EVENT) from the oldest on, never a slice
 * already partly written, until at most keep_bytes remain; returns how
 * many were dropped. */
uint32_t outbuf_drop_oldest(struct outbuf *ob, struct out_meter *m, size_t keep_bytes);

/* The first slice not yet started (the one a drop would take first), or
 * NULL. */
const struct slice *outbuf_first_unstarted(const struct outbuf *ob);

/* Removes the first unstarted slice. */
void outbuf_remove_first_unstarted(struct outbuf *ob, struct out_meter *m);

/* Queues frame[off, off+len) before every unstarted slice. */
bool outbuf_push_front(struct outbuf *ob, struct out_meter *m, struct frame *frame, uint32_t off,
                       uint32_t len);

void outbuf_clear(struct outbuf *ob, struct out_meter *m);

#endif
