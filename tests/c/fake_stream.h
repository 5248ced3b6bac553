/* A recording stand-in for stream.c, linked into the channel tests in
 * its place: every event a channel queues on a stream is noted, in order,
 * with the frame it was given (so sharing by reference can be checked). */
#ifndef SLUICE_FAKE_STREAM_H
#define SLUICE_FAKE_STREAM_H

#include <stdbool.h>

#include "stream.h"

struct delivery {
    struct sse_stream *stream;
    struct frame *frame;      /* a reference the log holds */
    bool replay;
};

#define FAKE_MAX_DELIVERIES 4096

extern struct delivery fake_log[FAKE_MAX_DELIVERIES];
extern int fake_count;
extern int fake_aborts;

/* An open stream with nothing queued. */
void fake_stream_open(struct sse_stream *s);

/* Forgets (and unrefs) what was delivered. */
void fake_reset(void);

/* The i-th delivery to s, or NULL. */
const struct delivery *fake_nth(const struct sse_stream *s, int i);

/* Deliveries to s. */
int fake_count_for(const struct sse_stream *s);

#endif
