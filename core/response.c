#include "response.h"

#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "http.h"
#include "numfmt.h"

void head_status_line(struct buf *b, int status)
{
    char num[24];
    buf_puts(b, "HTTP/1.1 ");
    buf_put(b, num, fmt_dec(num, (uint64_t)status));
    buf_puts(b, " ");
    buf_puts(b, http_reason(status));
    buf_puts(b, "\r\n");
}

void head_field(struct buf *b, const char *name, size_t name_len,
                const char *value, size_t value_len)
{
    buf_put(b, name, name_len);
    buf_put(b, ": ", 2);
    buf_put(b, value, value_len);
    buf_put(b, "\r\n", 2);
}

void head_finish(struct buf *b, enum body_framing framing, size_t length,
                 bool keep_alive, bool http_1_0)
{
    char num[24];
    switch (framing) {
    case BODY_NONE:
        break;
    case BODY_LENGTH:
        buf_puts(b, "Content-Length: ");
        buf_put(b, num, fmt_dec(num, length));
        buf_puts(b, "\r\n");
        break;
    case BODY_CHUNKED:
        buf_puts(b, "Transfer-Encoding: chunked\r\n");
        break;
    case BODY_TO_CLOSE:
        keep_alive = false;   /* the close is what ends the body */
        break;
    }
    if (!keep_alive)
        buf_puts(b, "Connection: close\r\n");
    else if (http_1_0)
        buf_puts(b, "Connection: keep-alive\r\n");
    buf_puts(b, "\r\n");
}

void response_plain(struct buf *b, int status, const char *extra_fields,
                    bool keep_alive, size_t *body_off)
{
    char body[128];
    int blen = snprintf(body, sizeof body, "%d %s\n", status, http_reason(status));
    head_status_line(b, status);
    buf_puts(b, "Content-Type: text/plain; charset=utf-8\r\n");
    if (extra_fields)
        buf_puts(b, extra_fields);
    head_finish(b, BODY_LENGTH, (size_t)blen, keep_alive, false);
    *body_off = b->len;
    buf_put(b, body, (size_t)blen);
}
