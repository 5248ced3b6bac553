/* JSON string contents for log lines: quotes, backslashes and control
 * bytes escaped, bytes that are not UTF-8 replaced by U+FFFD, so every
 * line parses whatever a client sent. Header-only: the server log
 * (log.c) and the access log both use it. */
#ifndef SLUICE_JSON_ESCAPE_H
#define SLUICE_JSON_ESCAPE_H

#include <stddef.h>
#include <stdint.h>

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if none. */
static inline size_t json_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
    else return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    /* Overlong forms, surrogates and beyond U+10FFFF are not UTF-8. */
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* Writes the escaped form of s[0..n) to out (capacity cap); never splits
 * an escape or a character: stops early instead. Returns bytes written;
 * *used (if not NULL) gets the input bytes consumed. */
static inline size_t json_escape(char *out, size_t cap, const char *s, size_t n, size_t *used)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t elen, step = 1;
        const char *piece = esc;
        if (c == '"' || c == '\\') {
            esc[0] = '\\'; esc[1] = (char)c; elen = 2;
        } else if (c == '\n') {
            esc[0] = '\\'; esc[1] = 'n'; elen = 2;
        } else if (c == '\t') {
            esc[0] = '\\'; esc[1] = 't'; elen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            esc[0] = '\\'; esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = hex[c >> 4]; esc[5] = hex[c & 15]; elen = 6;
        } else if (c < 0x80) {
            piece = (const char *)&s[i]; elen = 1;
        } else {
            step = json_utf8_len((const unsigned char *)s + i, n - i);
            if (step) {
                piece = &s[i]; elen = step;
            } else {
                piece = "\\ufffd"; elen = 6; step = 1;
            }
        }
        if (o + elen > cap)
            break;
        for (size_t k = 0; k < elen; k++)
            out[o + k] = piece[k];
        o += elen;
        i += step;
    }
    if (used)
        *used = i;
    return o;
}

#endif
