/* Admin disconnects: ending the tagged streams sluice.disconnect{...}
 * matches, on every worker. The calling worker finds and counts them in
 * the tag registry (core/tags.h), ends its own at once and posts the
 * others to their workers' mailboxes (WORKER_DISCONNECT): no worker ever
 * waits for another. */
#ifndef SLUICE_DISCONNECT_H
#define SLUICE_DISCONNECT_H

#include <stddef.h>

struct tags_match;
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

/* From worker w's thread: ends every stream matching m, each with the
 * event (event, data) first. Returns how many were found (and are ended
 * now, or within their worker's next loop turn), or -1 when out of memory. */
long disconnect_streams(struct worker *w, const struct tags_match *m,
                        const char *event, size_t event_len,
                        const char *data, size_t data_len);

/* In w's thread: ends b's streams, then frees b. */
void disconnect_apply(struct worker *w, struct disconnect_batch *b);

#endif
