#include "fake_stream.h"

#include <string.h>

#include "frame.h"

struct delivery fake_log[FAKE_MAX_DELIVERIES];
int fake_count;
int fake_aborts;

void fake_stream_open(struct sse_stream *s)
{
    memset(s, 0, sizeof *s);
    s->open = true;
    s->chunked = true;
}

void fake_reset(void)
{
    for (int i = 0; i < fake_count; i++)
        frame_unref(fake_log[i].frame);
    fake_count = 0;
    fake_aborts = 0;
}

const struct delivery *fake_nth(const struct sse_stream *s, int i)
{
    for (int k = 0; k < fake_count; k++)
        if (fake_log[k].stream == s && i-- == 0)
            return &fake_log[k];
    return NULL;
}

int fake_count_for(const struct sse_stream *s)
{
    int n = 0;
    for (int k = 0; k < fake_count; k++)
        n += fake_log[k].stream == s;
    return n;
}

static bool record(struct sse_stream *s, struct frame *f, bool replay)
{
    if (!s->open || !f || fake_count == FAKE_MAX_DELIVERIES)
        return false;
    fake_log[fake_count++] = (struct delivery){ s, frame_ref(f), replay };
    return true;
}

bool stream_send(struct sse_stream *s, struct frame *f)
{
    return record(s, f, false);
}

bool stream_replay(struct sse_stream *s, struct frame *f)
{
    return record(s, f, true);
}

void stream_abort(struct sse_stream *s)
{
    s->open = false;
    fake_aborts++;
}
