/* Immutable, reference-counted byte buffers. A published event is framed
 * into one frame and every subscriber's queue holds a reference to it. */
#ifndef SLUICE_FRAME_H
#define SLUICE_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* An event a slow consumer may lose (with a notice); anything else in a
 * queue (response head, retry hint, reset notices) is never dropped. */
#define FRAME_EVENT 1u

struct frame {
    uint32_t refs;
    uint32_t len;        /* bytes in data */
    uint32_t body_off;   /* the payload inside HTTP chunk framing */
    uint32_t body_len;
    uint32_t flags;
    uint64_t id;         /* the event's id (FRAME_EVENT from a channel), else 0 */
    char data[];
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
    f->refs++;
    return f;
}

void frame_unref(struct frame *f);

/* Frames that live for the whole process (refs never reach zero). */
void frame_make_static(struct frame *f);

struct sse_event;

/* One SSE event framed as an HTTP/1.1 chunk. NULL when out of memory. */
struct frame *frame_sse(const struct sse_event *ev);

#endif
