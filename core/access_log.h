/* The access log (--access-log FILE, or - for stdout): one JSON line per
 * answered request and one per stream when it ends. Lines are built per
 * worker thread into that thread's buffer and written once per loop turn
 * (or when the buffer fills), one write(2) per batch of whole lines on an
 * O_APPEND descriptor, so lines of several workers never interleave and a
 * slow disk costs a loop one write per batch, not one per line. A failed
 * write loses its batch: counted, reported once, never retried. SIGUSR1
 * reopens the file on the same descriptor number (dup3), so the workers
 * need no message. Never a token, a cookie or a header but the ids. */
#ifndef SLUICE_ACCESS_LOG_H
#define SLUICE_ACCESS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "reqid.h"
#include "stream.h"

struct ev_loop;
struct buf;

/* What a request carries from dispatch to its log line. */
struct access_rec {
    struct request_ids ids;      /* always: answers carry them */
    double start;                /* monotonic, when it was dispatched */
    uint64_t written_at_open;    /* the connection's bytes written before its stream */
    char *request;               /* JSON members: method, path, query, remote
                                    (NULL when the access log is off) */
    char *app;                   /* JSON members the runtime adds: route, variant,
                                    fields, last_event_id (NULL: none) */
    bool resumed;                /* a stream was given a Last-Event-ID */
};

/* ---- the process (main thread, before workers start / signals) ---- */

/* Opens path ("-": stdout) for appending. 0, or -1 (logged). */
int access_log_open(const char *path);

/* True once access_log_open succeeded: constant while workers run. */
bool access_log_enabled(void);

/* SIGUSR1: opens the path again (after logrotate renamed it) and puts
 * the new file on the same descriptor number. */
void access_log_reopen(void);

/* At exit, after the workers: closes the file. */
void access_log_close(void);

/* ---- a worker's thread -------------------------------------------- */

/* A record for a request: ids from its X-Request-ID and traceparent values
 * (each may be NULL); with the access log on, also the request's members
 * (method and url may be NULL when unknown). NULL when out of memory. */
struct access_rec *access_rec_new(const char *method, const char *url, size_t url_len,
                                  const char *peer, const char *xrid, size_t xrid_len,
                                  const char *traceparent, size_t tp_len);
void access_rec_free(struct access_rec *r);

/* Replaces the runtime's members with the NUL-terminated members (a
 * malloc'd string r now owns, freed at once if over the bound). */
void access_rec_set_app(struct access_rec *r, char *members, size_t len);

/* The line of an answered request (no-op with the access log off). */
void access_log_answer(struct ev_loop *loop, const struct access_rec *r, int status,
                       uint64_t bytes);

/* The line of a stream that ended (no-op with the access log off). */
void access_log_stream(struct ev_loop *loop, const struct access_rec *r,
                       const struct sse_stream *s);

/* Writes what this thread has buffered and stops its flush timer: at
 * the end of a worker's thread. */
void access_log_thread_end(void);

/* Lines lost to failed writes, process-wide. */
uint64_t access_log_lost(void);

/* Names of stream ends ("client_gone", ...) and back (-1: unknown). */
const char *access_log_end_name(enum stream_end why);
int access_log_end_parse(const char *name);

/* Appends "<escaped s>" (with the quotes) to b: valid JSON for any bytes. */
void access_log_json_string(struct buf *b, const char *s, size_t n);

#endif
