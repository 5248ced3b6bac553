/* A growable byte buffer for building response heads. */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
    char *data;
    size_t len, cap;
    bool failed;   /* an allocation failed; the content is incomplete */
};

void buf_put(struct buf *b, const void *bytes, size_t n);
void buf_puts(struct buf *b, const char *s);
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void buf_printf(struct buf *b, const char *fmt, ...);
void buf_free(struct buf *b);

#endif
