/* Immutable, reference-counted byte buffers. A published event is framed
 * into one frame and every subscriber's queue holds a reference to it. */
#ifndef SLUICE_FRAME_H
#define SLUICE_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* An event a slow consumer may lose (with a notice); anything else in a
 * queue (response head, retry hint, reset notices) is never dropped. */
#define FRAME_EVENT 1u
/* Lives for the whole process, shared by every thread: never counted. */
#define FRAME_STATIC 2u
/* Crosses threads (the bus's raw view of an event): counted atomically.
 * A worker's streams never hold one directly but a frame_local() header
 * on it, so a fan-out counts with plain increments only. */
#define FRAME_SHARED 4u

struct frame {
    uint32_t refs;
    uint32_t len;        /* bytes in data */
    uint32_t body_off;   /* the payload inside HTTP chunk framing */
    uint32_t body_len;
    uint32_t flags;
    /* When a channel queued this frame on its subscribers (metrics.h's
     * stamp, in what was padding), 0: not an event to time (replays,
     * answers, notices). */
    uint32_t queued_us;
    uint64_t id;         /* the event's id (FRAME_EVENT from a channel), else 0 */
    char *data;          /* own_data, or a shared frame's bytes */
    struct frame *shared;   /* the frame whose bytes these are, else NULL */
    char own_data[];
};

/* A frame of len raw bytes (no chunk framing); the caller fills data. */
struct frame *frame_new(size_t len);

/* A frame holding "<hex len>\r\n" body "\r\n": one HTTP/1.1 chunk. Returns
 * the frame and sets *body to the body_len bytes the caller must fill. An
 * HTTP/1.0 stream sends only the body part of the same frame. */
struct frame *frame_new_chunk(size_t body_len, char **body);

/* A frame that copies len bytes. */
struct frame *frame_copy(const void *bytes, size_t len);

static inline struct frame *frame_ref(struct frame *f)
{
    if (__builtin_expect(f->flags & (FRAME_STATIC | FRAME_SHARED), 0)) {
        if (f->flags & FRAME_SHARED)
            __atomic_add_fetch(&f->refs, 1, __ATOMIC_RELAXED);
    } else {
        f->refs++;
    }
    return f;
}

void frame_unref(struct frame *f);

/* Frames that live for the whole process: references are not counted, so
 * every thread may queue them. Call before a second thread can see f. */
void frame_make_static(struct frame *f);

/* Makes f, which no other thread holds yet, one that may cross threads. */
void frame_make_shared(struct frame *f);

/* A frame of this thread's own on a shared frame's bytes: it takes one
 * atomic reference to shared, drops it when its own (plain) count ends.
 * NULL when out of memory. */
struct frame *frame_local(struct frame *shared);

struct sse_event;

/* One SSE event framed as an HTTP/1.1 chunk. NULL when out of memory. */
struct frame *frame_sse(const struct sse_event *ev);

#endif
