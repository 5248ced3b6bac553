/* Request ids and W3C trace context: X-Request-ID taken when well-formed,
 * generated otherwise; traceparent continued (a new span id for sluice's
 * span) when valid, started otherwise. Ids come from a per-thread PRNG
 * seeded from getrandom(2): no system call per request. */
#ifndef SLUICE_REQID_H
#define SLUICE_REQID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REQID_MAX 128            /* longest X-Request-ID taken */
#define REQID_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */

struct request_ids {
    uint8_t trace[16];
    uint8_t span[8];             /* sluice's span */
    uint8_t parent[8];           /* the caller's span (has_parent) */
    uint8_t flags;
    bool has_parent;             /* a valid traceparent came in */
    uint8_t id_len;
    char id[REQID_MAX];          /* not NUL-terminated */
};

/* Fills ids from the request's X-Request-ID and traceparent values (each
 * may be NULL), generating what is missing or malformed. */
void reqid_init(struct request_ids *ids, const char *xrid, size_t xrid_len,
                const char *traceparent, size_t tp_len);

/* Well-formed X-Request-ID: 1-128 of [A-Za-z0-9._-]. */
bool reqid_valid_id(const char *s, size_t n);

/* Parses a version-00 traceparent; false if invalid. */
bool reqid_parse_traceparent(const char *s, size_t n, uint8_t trace[16],
                             uint8_t parent[8], uint8_t *flags);

/* sluice's traceparent: "00-<trace>-<span>-<flags>" (55 bytes, no NUL). */
void reqid_traceparent(const struct request_ids *ids, char out[REQID_TRACEPARENT_LEN]);

/* Lower-case hex of n bytes into out (2n bytes, no NUL). */
void reqid_hex(const uint8_t *bytes, size_t n, char *out);

#endif
