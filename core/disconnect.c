#include "disconnect.h"

#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "counter.h"
#include "frame.h"
#include "log.h"
#include "process.h"
#include "sse.h"
#include "tags.h"
#include "worker.h"

static struct disconnect_batch *batch_new(size_t n, const char *event, size_t elen,
                                          const char *data, size_t dlen)
{
    struct disconnect_batch *b = malloc(sizeof *b + sizeof b->handles[0] * n + elen + dlen);
    if (!b)
        return NULL;
    b->n = 0;
    b->event = (char *)&b->handles[n];
    b->data = b->event + elen;
    memcpy(b->event, event, elen);
    memcpy(b->data, data, dlen);
    b->event_len = elen;
    b->data_len = dlen;
    return b;
}

void disconnect_apply(struct worker *w, struct disconnect_batch *b)
{
    struct sse_event ev = { .event = b->event, .event_len = b->event_len,
                            .data = b->data, .data_len = b->data_len, .retry_ms = -1 };
    struct frame *f = frame_sse(&ev);
    if (f)
        f->flags |= FRAME_EVENT;
    else
        log_warn("out of memory framing a disconnect event; ending the streams without it");
    for (size_t i = 0; i < b->n; i++) {
        struct conn *c = worker_conn(w, b->handles[i]);
        if (!c || c->state != CONN_STREAMING)
            continue;   /* ended meanwhile */
        stream_note_end(&c->st, STREAM_END_ADMIN_DISCONNECT);
        if (f)
            stream_send(&c->st, f);
        stream_end(&c->st);
        counter_add(&w->stats.admin_disconnected, 1);
    }
    frame_unref(f);
    free(b);
}

long disconnect_streams(struct worker *w, const struct tags_match *m,
                        const char *event, size_t event_len,
                        const char *data, size_t data_len)
{
    struct tags_found *found;
    long n = tags_find(m, &found);
    if (n <= 0)
        return n;
    unsigned nworkers = w->proc ? w->proc->nworkers : 1;
    struct disconnect_batch *mine = NULL;
    for (unsigned wid = 0; wid < nworkers; wid++) {
        size_t k = 0;
        for (long i = 0; i < n; i++)
            k += found[i].wid == wid;
        if (!k)
            continue;
        struct disconnect_batch *b = batch_new(k, event, event_len, data, data_len);
        if (!b) {
            log_error("out of memory: %zu stream(s) of worker %u not disconnected", k, wid);
            continue;
        }
        for (long i = 0; i < n; i++)
            if (found[i].wid == wid)
                b->handles[b->n++] = found[i].handle;
        if (wid == w->id)
            mine = b;
        else if (worker_post_peer(wid, WORKER_DISCONNECT, b) < 0)
            free(b);   /* that worker is gone (draining): its streams with it */
    }
    free(found);
    /* Our own at once: a revoked user is cut off before the caller returns. */
    if (mine)
        disconnect_apply(w, mine);
    return n;
}
