#include "sse.h"

#include "numfmt.h"

#include <string.h>

static int has_line_break(const char *s, size_t n)
{
    return s && (memchr(s, '\n', n) || memchr(s, '\r', n));
}

const char *sse_event_invalid(const struct sse_event *ev)
{
    if (has_line_break(ev->event, ev->event_len))
        return "event name contains a line break";
    if (has_line_break(ev->id, ev->id_len))
        return "event id contains a line break";
    if (ev->id && memchr(ev->id, '\0', ev->id_len))
        return "event id contains a NUL byte (clients ignore such ids)";
    return NULL;
}

/* Calls emit(prefix, line) once per line of text, where CR, LF and CRLF all
 * end a line, exactly as an EventSource client will split it. The output
 * size and the output itself come from the same walk, so they cannot drift. */
typedef void (*line_fn)(void *ctx, const char *prefix, size_t plen,
                        const char *line, size_t len);

static void each_line(const char *text, size_t n, const char *prefix,
                      size_t plen, line_fn emit, void *ctx)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (text[i] != '\n' && text[i] != '\r')
            continue;
        emit(ctx, prefix, plen, text + start, i - start);
        if (text[i] == '\r' && i + 1 < n && text[i + 1] == '\n')
            i++;
        start = i + 1;
    }
    emit(ctx, prefix, plen, text + start, n - start);
}

struct writer {
    char *out;      /* NULL: only count */
    size_t pos;
};

static void put(struct writer *w, const char *s, size_t n)
{
    if (w->out && n)
        memcpy(w->out + w->pos, s, n);
    w->pos += n;
}

static void put_line(void *ctx, const char *prefix, size_t plen,
                     const char *line, size_t len)
{
    struct writer *w = ctx;
    put(w, prefix, plen);
    put(w, line, len);
    put(w, "\n", 1);
}

static void frame(struct writer *w, const struct sse_event *ev)
{
    if (ev->comment)
        each_line(ev->comment, ev->comment_len, ": ", 2, put_line, w);
    if (ev->retry_ms >= 0) {
        char num[24];
        put_line(w, "retry: ", 7, num, fmt_dec(num, (uint64_t)ev->retry_ms));
    }
    if (ev->id)
        put_line(w, "id: ", 4, ev->id, ev->id_len);
    if (ev->event)
        put_line(w, "event: ", 7, ev->event, ev->event_len);
    if (ev->data)
        each_line(ev->data, ev->data_len, "data: ", 6, put_line, w);
    put(w, "\n", 1);
}

size_t sse_event_size(const struct sse_event *ev)
{
    struct writer w = { NULL, 0 };
    frame(&w, ev);
    return w.pos;
}

size_t sse_event_write(char *out, const struct sse_event *ev)
{
    struct writer w = { out, 0 };
    frame(&w, ev);
    return w.pos;
}
