/* libFuzzer target for core/sse.c: framing is exact (size == bytes written,
 * no overflow of an exactly-sized buffer) and what an EventSource client
 * parses back from the frame is what was framed.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icore \
 *         fuzz/fuzz_sse.c core/sse.c -o fuzz/fuzz_sse
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"

/* Splits the input into fields at 0xFF bytes: event, id, data, comment. */
static const uint8_t *field(const uint8_t **p, const uint8_t *end, size_t *len,
                            int present)
{
    const uint8_t *start = *p;
    const uint8_t *q = memchr(start, 0xFF, (size_t)(end - start));
    if (!q)
        q = end;
    *len = (size_t)(q - start);
    *p = q < end ? q + 1 : end;
    return present ? start : NULL;
}

/* Data as the client sees it: CR, LF and CRLF all become LF. */
static size_t normalise(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            out[o++] = '\n';
            if (i + 1 < n && s[i + 1] == '\n')
                i++;
        } else {
            out[o++] = s[i];
        }
    }
    return o;
}

struct parsed {
    char *data; size_t data_len; int data_lines;
    char *event; size_t event_len; int has_event;
    char *id; size_t id_len; int has_id;
    long retry; int has_retry;
    int events;   /* blank lines that dispatched */
};

/* A WHATWG EventSource parser (section 9.2.6), minus the BOM. */
static void client_parse(const char *s, size_t n, struct parsed *p)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '\r' && s[i] != '\n')
            continue;
        if (i == n) {   /* an unterminated last line is never processed */
            assert(start == n && "frame must end with a line break");
            break;
        }
        const char *line = s + start;
        size_t len = i - start;
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            i++;
        start = i + 1;
        if (len == 0) {
            p->events++;
            continue;
        }
        if (line[0] == ':')
            continue;
        const char *colon = memchr(line, ':', len);
        size_t flen = colon ? (size_t)(colon - line) : len;
        const char *v = colon ? colon + 1 : line + len;
        size_t vlen = colon ? len - flen - 1 : 0;
        if (vlen && v[0] == ' ') {
            v++;
            vlen--;
        }
        if (flen == 4 && !memcmp(line, "data", 4)) {
            memcpy(p->data + p->data_len, v, vlen);
            p->data_len += vlen;
            p->data[p->data_len++] = '\n';
            p->data_lines++;
        } else if (flen == 5 && !memcmp(line, "event", 5)) {
            p->event = (char *)v; p->event_len = vlen; p->has_event = 1;
        } else if (flen == 2 && !memcmp(line, "id", 2)) {
            p->id = (char *)v; p->id_len = vlen; p->has_id = 1;
        } else if (flen == 5 && !memcmp(line, "retry", 5)) {
            p->retry = strtol(v, NULL, 10); p->has_retry = 1;
        } else {
            assert(!"unexpected field in a framed event");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t flags = in[0];
    long retry = (flags & 16) ? (long)in[1] * 1000 : -1;
    const uint8_t *p = in + 2, *end = in + size;
    struct sse_event ev = { .retry_ms = retry };
    ev.event = (const char *)field(&p, end, &ev.event_len, flags & 1);
    ev.id = (const char *)field(&p, end, &ev.id_len, flags & 2);
    ev.data = (const char *)field(&p, end, &ev.data_len, flags & 4);
    ev.comment = (const char *)field(&p, end, &ev.comment_len, flags & 8);

    if (sse_event_invalid(&ev))
        return 0;
    size_t n = sse_event_size(&ev);
    char *out = malloc(n ? n : 1);   /* exact size: ASan sees any overflow */
    size_t wrote = sse_event_write(out, &ev);
    assert(wrote == n);

    struct parsed got = { 0 };
    got.data = malloc(n + 1);
    client_parse(out, n, &got);
    assert(got.events == 1);   /* exactly one event, no smuggled ones */
    if (ev.data) {
        char *want = malloc(ev.data_len + 1);
        size_t wlen = normalise(ev.data, ev.data_len, want);
        /* The client drops the final LF of its data buffer. */
        assert(got.data_len >= 1 && got.data_len - 1 == wlen);
        assert(memcmp(got.data, want, wlen) == 0);
        free(want);
    } else {
        assert(got.data_lines == 0);
    }
    assert(got.has_event == (ev.event != NULL));
    if (ev.event)
        assert(got.event_len == ev.event_len && !memcmp(got.event, ev.event, ev.event_len));
    assert(got.has_id == (ev.id != NULL));
    if (ev.id)
        assert(got.id_len == ev.id_len && !memcmp(got.id, ev.id, ev.id_len));
    assert(got.has_retry == (retry >= 0));
    if (retry >= 0)
        assert(got.retry == retry);
    free(got.data);
    free(out);
    return 0;
}
