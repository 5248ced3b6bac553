/* HTTP/1.1 requests: llhttp glue that assembles one request at a time, with
 * the size limits enforced while parsing, and plain response heads. */
#ifndef SLUICE_HTTP_H
#define SLUICE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

struct http_limits {
    size_t max_head;      /* request line + headers, bytes */
    size_t max_headers;   /* header count */
    size_t max_body;      /* bytes */
};

struct http_header {
    uint32_t name_off, name_len;   /* names are lower-cased */
    uint32_t value_off, value_len;
};

struct http_request {
    char *head;                    /* URL and header bytes */
    uint32_t head_len, head_cap;
    uint32_t url_len;              /* the URL is at head[0] */
    struct http_header *headers;
    uint32_t nheaders, headers_cap;
    char *body;
    size_t body_len, body_cap;
    uint32_t trailer_bytes;        /* trailers are dropped, but count */
    uint32_t ntrailers;            /* toward the head limits */
    int reject_status;             /* 400/413/414/431 found while parsing */
    bool in_value;                 /* last callback was a header value */
    bool expect_continue;
    bool complete;
};

/* The parser of one connection. */
struct http_parser {
    llhttp_t ll;
    struct http_request req;
    const struct http_limits *limits;
    bool head_done;   /* the current request's head is complete */
    bool started;     /* bytes of a request have arrived */
    /* For telling an obs-fold from a read that ended mid-value: the input
     * llhttp is running on, and the last byte before it that was not SP or
     * HTAB. */
    const char *exec_start;
    char byte_before;
};

void http_parser_init(struct http_parser *p, const struct http_limits *lim);
void http_parser_free(struct http_parser *p);

enum http_parse_result {
    HTTP_PARSE_MORE,     /* consumed everything, request not complete */
    HTTP_PARSE_DONE,    /* a complete request: *used bytes consumed */
    HTTP_PARSE_BAD,           /* malformed or over a limit: answer and close */
};

enum http_parse_result http_parse(struct http_parser *p, const char *data,
                                  size_t len, size_t *used);

/* After HTTP_PARSE_DONE has been handled: ready for the next request. */
void http_parser_next(struct http_parser *p);

/* The status to answer a HTTP_PARSE_BAD with (400, 413, 414, 431, 503). */
int http_bad_status(const struct http_parser *p);

bool http_keep_alive(const struct http_parser *p);
bool http_is_1_0(const struct http_parser *p);
const char *http_method(const struct http_parser *p);
bool http_is_head(const struct http_parser *p);

/* The value of a header by lower-case name, or NULL. */
const char *http_header(const struct http_request *r, const char *name,
                        uint32_t *len);

const char *http_reason(int status);

#endif
