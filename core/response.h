/* HTTP/1.1 response heads, built in one place: the status line, the
 * fields an app or the server adds, and the framing fields (length,
 * chunked, close) that only the transport decides. */
#ifndef SLUICE_RESPONSE_H
#define SLUICE_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>

struct buf;

/* How the body after a head is delimited. */
enum body_framing {
    BODY_NONE,        /* 204, 304: no body, no Content-Length */
    BODY_LENGTH,      /* Content-Length: n */
    BODY_CHUNKED,     /* Transfer-Encoding: chunked (an HTTP/1.1 stream) */
    BODY_TO_CLOSE,    /* until the connection closes (an HTTP/1.0 stream) */
};

/* "HTTP/1.1 <status> <reason>\r\n" */
void head_status_line(struct buf *b, int status);

/* "<name>: <value>\r\n"; the caller has checked name and value. */
void head_field(struct buf *b, const char *name, size_t name_len,
                const char *value, size_t value_len);

/* The framing fields, Connection when it must be said, and the blank
 * line. keep_alive: the connection stays open after this answer;
 * http_1_0: the client speaks HTTP/1.0, where keep-alive must be said. */
void head_finish(struct buf *b, enum body_framing framing, size_t length,
                 bool keep_alive, bool http_1_0);

/* A whole plain-text answer "<status> <reason>\n" with its head, for
 * answers the server gives itself (errors, 503 when busy); extra_fields
 * are complete "Name: value\r\n" lines or NULL. Sets *body_off to where
 * the body starts. */
void response_plain(struct buf *b, int status, const char *extra_fields,
                    bool keep_alive, size_t *body_off);

#endif
