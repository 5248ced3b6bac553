#include "http.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define PARSER(ll) ((struct http_parser *)(ll))

static bool reserve(char **buf, uint32_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t cap2 = *cap ? *cap : 512;
    while (cap2 < need)
        cap2 *= 2;
    char *b = realloc(*buf, cap2);
    if (!b)
        return false;
    *buf = b;
    *cap = (uint32_t)cap2;
    return true;
}

/* Head bytes are capped; the cap decides between 414 and 431. */
static int head_append(struct http_parser *p, const char *at, size_t n,
                       int status_if_over)
{
    struct http_request *r = &p->req;
    if (n == 0)
        return 0;
    if (r->head_len + n > p->limits->max_head) {
        r->reject_status = status_if_over;
        return -1;
    }
    if (!reserve(&r->head, &r->head_cap, r->head_len + n)) {
        r->reject_status = 503;
        return -1;
    }
    memcpy(r->head + r->head_len, at, n);
    r->head_len += (uint32_t)n;
    return 0;
}

static int on_message_begin(llhttp_t *ll)
{
    PARSER(ll)->started = true;
    return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = PARSER(ll);
    if (head_append(p, at, n, 414))
        return -1;
    p->req.url_len += (uint32_t)n;
    return 0;
}

/* Trailers (fields after a chunked body) never become headers (RFC 9110
 * 6.5.1): an Authorization or Origin trailer must not count as part of a
 * head that was already checked without it. They are dropped, but count
 * toward the head limits so that a flood of them stays bounded. */
static int trailer_seen(struct http_parser *p, size_t n, bool new_field)
{
    struct http_request *r = &p->req;
    if (new_field && (size_t)r->nheaders + ++r->ntrailers > p->limits->max_headers) {
        r->reject_status = 431;
        return -1;
    }
    if ((size_t)r->head_len + r->trailer_bytes + n > p->limits->max_head) {
        r->reject_status = 431;
        return -1;
    }
    r->trailer_bytes += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = PARSER(ll);
    struct http_request *r = &p->req;
    if (p->head_done) {
        bool new_field = r->in_value;
        r->in_value = false;
        return trailer_seen(p, n, new_field);
    }
    bool new_header = r->in_value || r->nheaders == 0;
    if (new_header) {
        if (r->nheaders >= p->limits->max_headers) {
            r->reject_status = 431;
            return -1;
        }
        if (r->nheaders == r->headers_cap) {
            uint32_t cap = r->headers_cap ? r->headers_cap * 2 : 16;
            struct http_header *h = realloc(r->headers, sizeof *h * cap);
            if (!h) {
                r->reject_status = 503;
                return -1;
            }
            r->headers = h;
            r->headers_cap = cap;
        }
        r->headers[r->nheaders++] = (struct http_header){ r->head_len, 0,
                                                          r->head_len, 0 };
        r->in_value = false;
    }
    struct http_header *h = &r->headers[r->nheaders - 1];
    if (head_append(p, at, n, 431))
        return -1;
    for (size_t i = 0; i < n; i++)
        r->head[h->name_off + h->name_len + i] =
            (char)tolower((unsigned char)at[i]);
    h->name_len += (uint32_t)n;
    h->value_off = r->head_len;
    return 0;
}

/* The last byte before at that is not SP or HTAB (at is inside the input
 * llhttp is running on; earlier input left its last such byte behind). */
static char byte_before(const struct http_parser *p, const char *at)
{
    while (at > p->exec_start) {
        at--;
        if (*at != ' ' && *at != '\t')
            return *at;
    }
    return p->byte_before;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = PARSER(ll);
    struct http_request *r = &p->req;
    r->in_value = true;
    if (p->head_done)
        return trailer_seen(p, n, false);
    /* llhttp joins an obs-fold (a line starting with SP or HTAB) to the
     * value before it; a proxy may not, so the two would disagree on a
     * Transfer-Encoding. RFC 9112 5.2 lets a server refuse it: a value's
     * bytes never follow a line break, except across one. */
    if (n && byte_before(p, at) == '\n') {
        r->reject_status = 400;
        return -1;
    }
    if (head_append(p, at, n, 431))
        return -1;
    r->headers[r->nheaders - 1].value_len += (uint32_t)n;
    return 0;
}

/* llhttp drops the whitespace before a value, not after (RFC 9110 OWS). */
static void trim_values(struct http_request *r)
{
    for (uint32_t i = 0; i < r->nheaders; i++) {
        struct http_header *h = &r->headers[i];
        while (h->value_len && (r->head[h->value_off + h->value_len - 1] == ' ' ||
                                r->head[h->value_off + h->value_len - 1] == '\t'))
            h->value_len--;
    }
}

/* Bytes RFC 3986 does not allow and no browser sends unencoded: controls,
 * space, DEL, non-ASCII (strict llhttp refuses these already), the quote
 * and angle brackets. */
static bool target_is_valid(const char *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == '"' || c == '<' || c == '>')
            return false;
    }
    return true;
}

/* RFC 9110 7.2: uri-host [ ":" port ], the characters of RFC 3986 3.2.2. */
static bool host_is_valid(const char *s, uint32_t n)
{
    static const char other[] = "-._~%!$&'()*+,;=:[]";
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && !memchr(other, c, sizeof other - 1))
            return false;
    }
    return true;
}

/* What RFC 9112 says a server must refuse and llhttp, even strict, lets
 * through: each could make sluice and a proxy in front of it read the
 * request differently. (llhttp refuses controls and DEL in values.) */
static bool head_is_valid(const llhttp_t *ll, const struct http_request *r)
{
    if (!target_is_valid(r->head, r->url_len))
        return false;
    bool http_1_0 = ll->http_major == 1 && ll->http_minor == 0;
    int hosts = 0;
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const struct http_header *h = &r->headers[i];
        const char *name = r->head + h->name_off;
        const char *value = r->head + h->value_off;
        if (h->name_len == 0)   /* RFC 9110 5.1: a name is a token */
            return false;
        /* 3.2: more than one Host, or an invalid one, is a 400. */
        if (h->name_len == 4 && memcmp(name, "host", 4) == 0 &&
            (++hosts > 1 || !host_is_valid(value, h->value_len)))
            return false;
        /* 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty. */
        if (http_1_0 && h->name_len == 17 && memcmp(name, "transfer-encoding", 17) == 0)
            return false;
    }
    return true;
}

static int on_headers_complete(llhttp_t *ll)
{
    struct http_parser *p = PARSER(ll);
    struct http_request *r = &p->req;
    p->head_done = true;
    r->in_value = true;   /* a field after this is the first trailer */
    trim_values(r);
    if (!head_is_valid(ll, r)) {
        r->reject_status = 400;
        return -1;
    }
    if ((ll->flags & F_CONTENT_LENGTH) &&
        ll->content_length > p->limits->max_body) {
        r->reject_status = 413;
        return -1;
    }
    uint32_t n;
    const char *expect = http_header(r, "expect", &n);
    r->expect_continue = expect && n == 12 &&
                         strncasecmp(expect, "100-continue", 12) == 0;
    return 0;
}

static int on_body(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = PARSER(ll);
    struct http_request *r = &p->req;
    if (r->body_len + n > p->limits->max_body) {
        r->reject_status = 413;
        return -1;
    }
    if (r->body_len + n > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < r->body_len + n)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b) {
            r->reject_status = 503;
            return -1;
        }
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    return 0;
}

static int on_message_complete(llhttp_t *ll)
{
    PARSER(ll)->req.complete = true;
    return HPE_PAUSED;   /* hand the request over before parsing the next */
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void http_parser_init(struct http_parser *p, const struct http_limits *lim)
{
    memset(p, 0, sizeof *p);
    p->limits = lim;
    llhttp_init(&p->ll, HTTP_REQUEST, &settings);
}

static void request_reset(struct http_request *r, bool keep_buffers)
{
    if (!keep_buffers) {
        free(r->head);
        free(r->headers);
        free(r->body);
        memset(r, 0, sizeof *r);
        return;
    }
    r->head_len = r->url_len = 0;
    r->nheaders = 0;
    r->trailer_bytes = r->ntrailers = 0;
    r->body_len = 0;
    r->reject_status = 0;
    r->in_value = r->expect_continue = r->complete = false;
}

void http_parser_free(struct http_parser *p)
{
    request_reset(&p->req, false);
}

void http_parser_next(struct http_parser *p)
{
    /* Keep small buffers for the next keep-alive request; drop big ones. */
    bool keep = p->req.head_cap <= 4096 && p->req.body_cap <= 16384;
    request_reset(&p->req, keep);
    p->head_done = p->started = false;
    /* An Upgrade offer (h2c, websocket) is declined by answering over
     * HTTP/1.1; the connection goes on as HTTP/1.1 (RFC 9110 7.8). */
    if (p->ll.upgrade)
        llhttp_reset(&p->ll);
    else
        llhttp_resume(&p->ll);
}

/* Remembers the last byte of consumed input that is not SP or HTAB. */
static void note_byte_before(struct http_parser *p, const char *data, size_t used)
{
    while (used) {
        char c = data[--used];
        if (c != ' ' && c != '\t') {
            p->byte_before = c;
            return;
        }
    }
}

enum http_parse_result http_parse(struct http_parser *p, const char *data,
                                  size_t len, size_t *used)
{
    p->exec_start = data;
    llhttp_errno_t err = llhttp_execute(&p->ll, data, len);
    p->exec_start = NULL;
    if (err == HPE_OK) {
        *used = len;
        note_byte_before(p, data, len);
        return HTTP_PARSE_MORE;
    }
    if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && p->req.complete) {
        *used = (size_t)(llhttp_get_error_pos(&p->ll) - data);
        note_byte_before(p, data, *used);
        return HTTP_PARSE_DONE;
    }
    *used = len;
    return HTTP_PARSE_BAD;
}

int http_bad_status(const struct http_parser *p)
{
    return p->req.reject_status ? p->req.reject_status : 400;
}

bool http_keep_alive(const struct http_parser *p)
{
    return llhttp_should_keep_alive(&p->ll);
}

bool http_is_1_0(const struct http_parser *p)
{
    return p->ll.http_major == 1 && p->ll.http_minor == 0;
}

const char *http_method(const struct http_parser *p)
{
    return llhttp_method_name((llhttp_method_t)p->ll.method);
}

bool http_is_head(const struct http_parser *p)
{
    return p->ll.method == HTTP_HEAD;
}

const char *http_header(const struct http_request *r, const char *name,
                        uint32_t *len)
{
    size_t n = strlen(name);
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const struct http_header *h = &r->headers[i];
        if (h->name_len == n && memcmp(r->head + h->name_off, name, n) == 0) {
            *len = h->value_len;
            return r->head + h->value_off;
        }
    }
    return NULL;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}
