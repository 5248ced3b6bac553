#include "frame.h"

#include "numfmt.h"
#include "sse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATIC_REFS (UINT32_MAX / 2)

struct frame *frame_new(size_t len)
{
    if (len > UINT32_MAX - 64)
        return NULL;
    struct frame *f = malloc(sizeof *f + len);
    if (!f)
        return NULL;
    f->refs = 1;
    f->len = (uint32_t)len;
    f->body_off = 0;
    f->body_len = (uint32_t)len;
    f->flags = 0;
    f->queued_us = 0;
    f->id = 0;
    f->data = f->own_data;
    f->shared = NULL;
    return f;
}

struct frame *frame_new_chunk(size_t body_len, char **body)
{
    char head[24];
    size_t hlen = fmt_hex(head, body_len);
    head[hlen++] = '\r';
    head[hlen++] = '\n';
    struct frame *f = frame_new((size_t)hlen + body_len + 2);
    if (!f)
        return NULL;
    memcpy(f->data, head, hlen);
    memcpy(f->data + hlen + body_len, "\r\n", 2);
    f->body_off = (uint32_t)hlen;
    f->body_len = (uint32_t)body_len;
    *body = f->data + hlen;
    return f;
}

struct frame *frame_copy(const void *bytes, size_t len)
{
    struct frame *f = frame_new(len);
    if (f && len)
        memcpy(f->data, bytes, len);
    return f;
}

void frame_unref(struct frame *f)
{
    if (!f || (f->flags & FRAME_STATIC))
        return;
    if (f->flags & FRAME_SHARED) {
        /* The last holder frees: what others wrote before their unref must
         * be seen, hence acquire-release. */
        if (__atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL) == 0)
            free(f);
        return;
    }
    if (--f->refs == 0) {
        if (f->shared)
            frame_unref(f->shared);
        free(f);
    }
}

void frame_make_static(struct frame *f)
{
    f->refs = STATIC_REFS;
    f->flags |= FRAME_STATIC;
}

void frame_make_shared(struct frame *f)
{
    f->flags |= FRAME_SHARED;
}

struct frame *frame_local(struct frame *shared)
{
    struct frame *f = malloc(sizeof *f);
    if (!f)
        return NULL;
    /* Field by field: shared->refs is counted by other threads. */
    f->refs = 1;
    f->len = shared->len;
    f->body_off = shared->body_off;
    f->body_len = shared->body_len;
    f->flags = shared->flags & ~(uint32_t)FRAME_SHARED;
    f->queued_us = 0;
    f->id = shared->id;
    f->data = shared->data;
    f->shared = frame_ref(shared);
    return f;
}

struct frame *frame_sse(const struct sse_event *ev)
{
    char *body;
    struct frame *f = frame_new_chunk(sse_event_size(ev), &body);
    if (f)
        sse_event_write(body, ev);
    return f;
}
