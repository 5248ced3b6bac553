/* Admin disconnects: ending the tagged streams sluice.disconnect{...}
 * matches, on every worker. The calling worker finds and counts them in
 * the tag registry (core/tags.h), ends its own at once and posts the
 * others to their workers' mailboxes (WORKER_DISCONNECT): no worker ever
 * waits for another. In cluster mode the request also goes to the other
 * nodes (core/redis_bus.c, the control channel), encoded here, and a
 * request from another node is applied here the same way from the main
 * loop (every worker's streams through their mailboxes). */
#ifndef SLUICE_DISCONNECT_H
#define SLUICE_DISCONNECT_H

#include <stdbool.h>
#include <stddef.h>

#include "tags.h"

struct worker;

/* What one worker is asked to end: the final event and the streams. */
struct disconnect_batch {
    char *event;              /* the final event's name */
    size_t event_len;
    char *data;               /* its data (JSON) */
    size_t data_len;
    size_t n;
    double handles[];
};

#define DISCONNECT_TAGS_MAX TAGS_CRITERIA_MAX

/* A request as the app made it: the text of its criteria (every tag
 * must match; channel NULL: any) and the final event. Nothing owned. */
struct disconnect_req {
    size_t ntags;
    const char *name[DISCONNECT_TAGS_MAX], *value[DISCONNECT_TAGS_MAX];
    size_t name_len[DISCONNECT_TAGS_MAX], value_len[DISCONNECT_TAGS_MAX];
    const char *channel;
    size_t channel_len;
    const char *event;        /* its name */
    size_t event_len;
    const char *data;         /* its data (JSON) */
    size_t data_len;
};

/* From worker w's thread: ends every stream of this process matching r,
 * each with r's event first. Returns how many were found (and are ended
 * now, or within their worker's next loop turn), or -1 when out of memory. */
long disconnect_streams(struct worker *w, const struct disconnect_req *r);

/* From a thread that is no worker's (the main loop: a request from
 * another node): the same, every worker's streams through its mailbox. */
long disconnect_streams_posted(const struct disconnect_req *r);

/* r as the bytes of a control message body (malloc'd, *len its length),
 * or NULL when out of memory. Netstrings ("<len>:<bytes>,"), in pairs of
 * a key and its value: "t:<name>" a tag criterion, "channel", "event",
 * "data"; any key unknown to the reader refuses the whole request (a
 * criterion it would skip would widen the match). */
char *disconnect_encode(const struct disconnect_req *r, size_t *len);

/* The reverse: r points into body. False when it is malformed. */
bool disconnect_decode(const char *body, size_t len, struct disconnect_req *r);

/* In w's thread: ends b's streams, then frees b. */
void disconnect_apply(struct worker *w, struct disconnect_batch *b);

#endif
