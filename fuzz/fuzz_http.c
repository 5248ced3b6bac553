/* libFuzzer target for the request path: core/http.c's http_parse with
 * small limits, driven the way conn.c's feed() drives it (pipelined
 * requests, http_parser_next between them, stop at the first bad one or
 * one that does not keep the connection alive).
 *
 * Oracles: ASan/UBSan; the limits hold for every request handed over;
 * header and URL offsets stay inside the head buffer; names are
 * lower-case, non-empty tokens; values hold no control byte but HTAB;
 * there is at most one Host; the target holds no byte sluice refuses;
 * and feeding the same bytes in one piece or split into arbitrary reads
 * yields exactly the same requests and the same verdict (this is what
 * checks that a read ending mid-value is never taken for an obs-fold).
 *
 *   make fuzz   (or by hand:) clang -g -O1 -fsanitize=fuzzer,address,undefined -Icore \
 *         -DLLHTTP_STRICT_MODE=1 -I/usr/share/include/llhttp fuzz/fuzz_http.c \
 *         core/http.c /usr/share/llhttp/{llhttp,api,http}.c -o fuzz/fuzz_http
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static const struct http_limits limits = { .max_head = 512, .max_headers = 8,
                                           .max_body = 256 };

struct out { char *s; size_t len, cap; };

static void put(struct out *o, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->s = realloc(o->s, o->cap);
    }
    memcpy(o->s + o->len, p, n);
    o->len += n;
}

static void putu(struct out *o, uint64_t v)
{
    char b[32];
    int n = snprintf(b, sizeof b, "%llu|", (unsigned long long)v);
    put(o, b, (size_t)n);
}

/* RFC 9110 5.6.2 tchar, lower-case (names are lower-cased). */
static int is_token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Checks a complete request and appends a canonical description of it. */
static void record(struct out *o, const struct http_parser *p)
{
    const struct http_request *r = &p->req;
    assert(r->complete);
    assert(r->head_len <= limits.max_head);
    assert(r->nheaders <= limits.max_headers);
    assert(r->body_len <= limits.max_body);
    assert(r->url_len <= r->head_len);
    for (uint32_t k = 0; k < r->url_len; k++) {
        unsigned char c = (unsigned char)r->head[k];
        assert(c > ' ' && c < 0x7f && c != '"' && c != '<' && c != '>');
    }
    int hosts = 0;
    const char *m = http_method(p);
    put(o, m, strlen(m));
    put(o, "|", 1);
    put(o, r->head, r->url_len);
    put(o, "|", 1);
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const struct http_header *h = &r->headers[i];
        assert((uint64_t)h->name_off + h->name_len <= r->head_len);
        assert((uint64_t)h->value_off + h->value_len <= r->head_len);
        const char *name = r->head + h->name_off;
        assert(h->name_len > 0);
        for (uint32_t k = 0; k < h->name_len; k++)
            assert(is_token_char((unsigned char)name[k]));
        for (uint32_t k = 0; k < h->value_len; k++) {
            unsigned char c = (unsigned char)r->head[(size_t)h->value_off + k];
            assert(c >= ' ' || c == '\t');
            assert(c != 0x7f);
        }
        if (h->name_len == 4 && memcmp(name, "host", 4) == 0)
            assert(++hosts == 1);
        putu(o, h->name_len);
        if (h->name_len)
            put(o, r->head + h->name_off, h->name_len);
        putu(o, h->value_len);
        if (h->value_len)
            put(o, r->head + h->value_off, h->value_len);
    }
    putu(o, r->body_len);
    if (r->body_len)
        put(o, r->body, r->body_len);
    putu(o, http_keep_alive(p));
    putu(o, http_is_1_0(p));
    putu(o, r->expect_continue);
    put(o, "\n", 1);
}

/* Feeds data in pieces whose sizes come from seed (0: one piece). */
static void run(const uint8_t *data, size_t size, uint32_t seed, struct out *o)
{
    struct http_parser p;
    http_parser_init(&p, &limits);
    size_t off = 0;
    int verdict = 0;   /* 0 more, else the bad status */
    while (off < size && !verdict) {
        size_t piece = size - off;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            piece = 1 + (seed >> 16) % 17;
            if (piece > size - off)
                piece = size - off;
        }
        const char *chunk = (const char *)data + off;
        size_t len = piece;
        off += piece;
        while (len) {
            size_t used = 0;
            enum http_parse_result r = http_parse(&p, chunk, len, &used);
            assert(used <= len);
            chunk += used;
            len -= used;
            if (r == HTTP_PARSE_BAD) {
                verdict = http_bad_status(&p);
                break;
            }
            if (r == HTTP_PARSE_MORE) {
                assert(len == 0);
                break;
            }
            record(o, &p);
            if (!http_keep_alive(&p)) {
                verdict = -1;   /* conn.c closes after this answer */
                break;
            }
            http_parser_next(&p);
        }
    }
    /* Which limit trips first may depend on where reads end (a head both
     * too long and malformed is 431 or 400): compare only the verdict. */
    putu(o, verdict == 0 ? 0 : verdict == -1 ? 1 : 2);
    http_parser_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint32_t seed = (uint32_t)data[0] | (uint32_t)data[1] << 8 |
                    (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24 | 1u;
    data += 4;
    size -= 4;
    struct out whole = { 0 }, split = { 0 };
    run(data, size, 0, &whole);
    run(data, size, seed, &split);
    if (whole.len != split.len || memcmp(whole.s, split.s, whole.len) != 0) {
        fprintf(stderr, "whole: %.*s\nsplit: %.*s\n", (int)whole.len, whole.s,
                (int)split.len, split.s);
        assert(!"splitting the input changed the parse");
    }
    free(whole.s);
    free(split.s);
    return 0;
}
