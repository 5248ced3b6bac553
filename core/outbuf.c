#include "outbuf.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/uio.h>

#include "metrics.h"

/* Enough slices per writev to coalesce a backlog of small events into one
 * system call; the kernel accepts up to IOV_MAX. */
#define WRITEV_SLICES 256
#define SMALL_RING 8

static struct slice *ring_of(const struct outbuf *ob)
{
    return (struct slice *)outbuf_ring(ob);
}

/* The i-th queued slice of ring (ring_of(ob), fetched once a loop: it
 * stays where it is until the ring grows). */
static struct slice *nth(struct slice *ring, const struct outbuf *ob, uint32_t i)
{
    return &ring[(ob->head + i) & (ob->cap - 1)];
}

static struct slice *at(const struct outbuf *ob, uint32_t i)
{
    return nth(ring_of(ob), ob, i);
}

/* The first slices live inside the outbuf: a stream that gets an event
 * or two between writes (the common case in a fan-out) never allocates. */
static bool grow(struct outbuf *ob)
{
    if (ob->cap == 0) {
        ob->cap = OUTBUF_INLINE;
        ob->head = 0;
        return true;
    }
    uint32_t cap = ob->cap < SMALL_RING ? SMALL_RING : ob->cap * 2;
    struct slice *ring = malloc(sizeof *ring * cap);
    if (!ring)
        return false;
    for (uint32_t i = 0; i < ob->count; i++)
        ring[i] = *at(ob, i);
    if (ob->cap > OUTBUF_INLINE)
        free(ob->ring.heap);
    ob->ring.heap = ring;   /* (over `small`, copied out just above) */
    ob->cap = cap;
    ob->head = 0;
    return true;
}

bool outbuf_push(struct outbuf *ob, struct out_meter *m, struct frame *frame, uint32_t off,
                 uint32_t len)
{
    if (len == 0)
        return true;
    if (ob->count == ob->cap && !grow(ob))
        return false;
    *at(ob, ob->count) = (struct slice){ frame_ref(frame), off, len };
    ob->count++;
    ob->bytes += len;
    meter_queued(m, len);
    return true;
}

static void pop_front(struct outbuf *ob, struct out_meter *m)
{
    struct slice *s = at(ob, 0);
    ob->bytes -= s->len;
    meter_queued(m, -(int64_t)s->len);
    frame_unref(s->frame);
    ob->head = (ob->head + 1) & (ob->cap - 1);
    ob->count--;
    ob->head_started = false;
}

/* An idle stream should cost no heap ring: free it once drained. */
static void release_ring(struct outbuf *ob)
{
    if (ob->cap > OUTBUF_INLINE)
        free(ob->ring.heap);
    ob->cap = ob->head = ob->count = 0;
}

/* An event whose bytes are all with the kernel now: how long since a
 * channel queued it. One clock read per write that completes one. */
static void observe_written(struct out_meter *meter, const struct frame *f, uint32_t *now)
{
    if (!meter || !f->queued_us || !meter->histograms)
        return;
    if (!*now)
        *now = metrics_stamp_now();
    hist_observe_us(&meter->latency, metrics_latency_bounds_us, (uint32_t)(*now - f->queued_us));
}

enum outbuf_status outbuf_write(struct outbuf *ob, struct out_meter *m, int fd)
{
    struct iovec iov[WRITEV_SLICES];
    uint32_t now = 0;
    struct slice *ring = ring_of(ob);
    while (ob->count) {
        int n = 0;
        for (uint32_t i = 0; i < ob->count && n < WRITEV_SLICES; i++, n++) {
            struct slice *s = nth(ring, ob, i);
            iov[n].iov_base = s->frame->data + s->off;
            iov[n].iov_len = s->len;
        }
        ssize_t wrote = writev(fd, iov, n);
        if (wrote < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return OUTBUF_AGAIN;
            return OUTBUF_ERROR;
        }
        size_t left = (size_t)wrote;
        ob->written += left;
        while (left && ob->count) {
            struct slice *s = nth(ring, ob, 0);
            if (s->frame->id)   /* the client has it, or will before anything else */
                ob->last_event_id = s->frame->id;
            if (left < s->len) {
                s->off += (uint32_t)left;
                s->len -= (uint32_t)left;
                ob->bytes -= left;
                meter_queued(m, -(int64_t)left);
                ob->head_started = true;
                left = 0;
            } else {
                left -= s->len;
                ob->events_written += (s->frame->flags & FRAME_EVENT) != 0;
                observe_written(m, s->frame, &now);
                pop_front(ob, m);
            }
        }
        if (ob->count)   /* short write: the socket buffer is full */
            return OUTBUF_AGAIN;
    }
    release_ring(ob);
    return OUTBUF_DRAINED;
}

uint32_t outbuf_drop_oldest(struct outbuf *ob, struct out_meter *m, size_t keep_bytes)
{
    /* Compacts the ring in place (writes trail reads), oldest first. */
    uint32_t dropped = 0;
    uint32_t keep = ob->head_started ? 1 : 0;
    for (uint32_t i = keep; i < ob->count; i++) {
        struct slice s = *at(ob, i);
        if (ob->bytes > keep_bytes && (s.frame->flags & FRAME_EVENT)) {
            ob->bytes -= s.len;
            meter_queued(m, -(int64_t)s.len);
            frame_unref(s.frame);
            dropped++;
        } else {
            *at(ob, keep++) = s;
        }
    }
    ob->count = keep;
    return dropped;
}

const struct slice *outbuf_first_unstarted(const struct outbuf *ob)
{
    uint32_t first = ob->head_started ? 1 : 0;
    return ob->count > first ? at(ob, first) : NULL;
}

void outbuf_remove_first_unstarted(struct outbuf *ob, struct out_meter *m)
{
    uint32_t first = ob->head_started ? 1 : 0;
    if (ob->count <= first)
        return;
    struct slice *victim = at(ob, first);
    ob->bytes -= victim->len;
    meter_queued(m, -(int64_t)victim->len);
    frame_unref(victim->frame);
    if (first)
        *victim = *at(ob, 0);
    ob->head = (ob->head + 1) & (ob->cap - 1);
    ob->count--;
}

bool outbuf_push_front(struct outbuf *ob, struct out_meter *m, struct frame *frame, uint32_t off,
                       uint32_t len)
{
    if (ob->count == ob->cap && !grow(ob))
        return false;
    ob->head = (ob->head + ob->cap - 1) & (ob->cap - 1);
    ob->count++;
    struct slice s = { frame_ref(frame), off, len };
    if (ob->head_started) {   /* keep the started slice first */
        *at(ob, 0) = *at(ob, 1);
        *at(ob, 1) = s;
    } else {
        *at(ob, 0) = s;
    }
    ob->bytes += len;
    meter_queued(m, len);
    return true;
}

void outbuf_clear(struct outbuf *ob, struct out_meter *m)
{
    while (ob->count)
        pop_front(ob, m);
    release_ring(ob);
    meter_queued(m, -(int64_t)ob->bytes);   /* 0 unless out of step */
    ob->bytes = 0;
}
