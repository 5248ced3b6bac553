/* Integer formatting for hot paths (ids, chunk sizes, Content-Length):
 * printf's format parsing shows up in profiles of the publish path. */
#ifndef SLUICE_NUMFMT_H
#define SLUICE_NUMFMT_H

#include <stddef.h>
#include <stdint.h>

/* Writes v in decimal to out (room for 20 bytes); returns the length. */
static inline size_t fmt_dec(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* Writes v in lower-case hex to out (room for 16 bytes); returns the length. */
static inline size_t fmt_hex(char *out, uint64_t v)
{
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

#endif
