/* SSE event framing (WHATWG EventSource wire format). Pure functions: no
 * allocation, no I/O, so they are easy to test and fuzz. */
#ifndef SLUICE_SSE_H
#define SLUICE_SSE_H

#include <stddef.h>

struct sse_event {
    const char *event;   size_t event_len;   /* NULL: no event: line */
    const char *id;      size_t id_len;      /* NULL: no id: line */
    const char *data;    size_t data_len;    /* NULL: no data: lines */
    const char *comment; size_t comment_len; /* NULL: no comment */
    long retry_ms;                           /* < 0: no retry: line */
};

/* Why an event cannot be framed, or NULL when it can. A line break inside
 * event or id would let one field smuggle in others, so it is refused. */
const char *sse_event_invalid(const struct sse_event *ev);

/* Exact number of bytes sse_event_write() produces. */
size_t sse_event_size(const struct sse_event *ev);

/* Writes the framed event (terminated by the blank line) into out, which
 * has room for sse_event_size(ev) bytes; returns the bytes written. */
size_t sse_event_write(char *out, const struct sse_event *ev);

#endif
