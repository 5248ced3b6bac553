#include "disconnect.h"

#include <stdio.h>
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

/* The streams found for m, grouped by worker: self's (NULL: none, the
 * main loop's call) ended here at once, the others posted. */
static long fan_out(struct worker *self, const struct tags_match *m,
                    const char *event, size_t event_len,
                    const char *data, size_t data_len)
{
    struct tags_found *found;
    long n = tags_find(m, &found);
    if (n <= 0)
        return n;
    unsigned nworkers = 0;
    for (long i = 0; i < n; i++)
        if (found[i].wid >= nworkers)
            nworkers = found[i].wid + 1;
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
        if (self && wid == self->id)
            mine = b;
        else if (worker_post_peer(wid, WORKER_DISCONNECT, b) < 0)
            free(b);   /* that worker is gone (draining): its streams with it */
    }
    free(found);
    /* Our own at once: a revoked user is cut off before the caller returns. */
    if (mine)
        disconnect_apply(self, mine);
    return n;
}

static void match_of(const struct disconnect_req *r, struct tags_match *m)
{
    memset(m, 0, sizeof *m);
    for (size_t i = 0; i < r->ntags; i++)
        tags_criterion(m, r->name[i], r->name_len[i], r->value[i], r->value_len[i]);
    if (r->channel)
        tags_criterion_channel(m, r->channel, r->channel_len);
}

long disconnect_streams(struct worker *w, const struct disconnect_req *r)
{
    struct tags_match m;
    match_of(r, &m);
    return fan_out(w, &m, r->event, r->event_len, r->data, r->data_len);
}

long disconnect_streams_posted(const struct disconnect_req *r)
{
    struct tags_match m;
    match_of(r, &m);
    return fan_out(NULL, &m, r->event, r->event_len, r->data, r->data_len);
}

/* ---- the control message body -------------------------------------------- */

/* Appends "<len>:" a b ",": a netstring of a and b together. */
static char *put_netstring(char *p, const char *a, size_t alen, const char *b, size_t blen)
{
    p += sprintf(p, "%zu:", alen + blen);
    memcpy(p, a, alen);
    memcpy(p + alen, b, blen);
    p += alen + blen;
    *p++ = ',';
    return p;
}

/* Room for a netstring beyond its bytes: up to 20 digits, ':' and ','. */
#define NETSTRING_OVERHEAD 22

char *disconnect_encode(const struct disconnect_req *r, size_t *len)
{
    size_t room = 3 * 2 * NETSTRING_OVERHEAD + 7 + r->channel_len + 5 + r->event_len + 4 +
                  r->data_len + 1;
    for (size_t i = 0; i < r->ntags; i++)
        room += 2 * NETSTRING_OVERHEAD + 2 + r->name_len[i] + r->value_len[i];
    char *buf = malloc(room);
    if (!buf)
        return NULL;
    char *p = buf;
    for (size_t i = 0; i < r->ntags; i++) {
        p = put_netstring(p, "t:", 2, r->name[i], r->name_len[i]);
        p = put_netstring(p, r->value[i], r->value_len[i], "", 0);
    }
    if (r->channel) {
        p = put_netstring(p, "channel", 7, "", 0);
        p = put_netstring(p, r->channel, r->channel_len, "", 0);
    }
    p = put_netstring(p, "event", 5, "", 0);
    p = put_netstring(p, r->event, r->event_len, "", 0);
    p = put_netstring(p, "data", 4, "", 0);
    p = put_netstring(p, r->data, r->data_len, "", 0);
    *len = (size_t)(p - buf);
    return buf;
}

/* The netstring at *p (before end): its bytes, and *p past it. */
static bool get_netstring(const char **p, const char *end, const char **s, size_t *n)
{
    const char *q = *p;
    size_t v = 0, digits = 0;
    while (q < end && *q >= '0' && *q <= '9' && digits < 10) {
        v = v * 10 + (size_t)(*q++ - '0');
        digits++;
    }
    if (!digits || q == end || *q++ != ':' || (size_t)(end - q) < v + 1 || q[v] != ',')
        return false;
    *s = q;
    *n = v;
    *p = q + v + 1;
    return true;
}

static bool key_is(const char *k, size_t klen, const char *want)
{
    return klen == strlen(want) && memcmp(k, want, klen) == 0;
}

bool disconnect_decode(const char *body, size_t len, struct disconnect_req *r)
{
    memset(r, 0, sizeof *r);
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *k, *v;
        size_t klen, vlen;
        if (!get_netstring(&p, end, &k, &klen) || !get_netstring(&p, end, &v, &vlen))
            return false;
        if (klen > 2 && k[0] == 't' && k[1] == ':') {
            if (r->ntags == DISCONNECT_TAGS_MAX)
                return false;
            r->name[r->ntags] = k + 2;
            r->name_len[r->ntags] = klen - 2;
            r->value[r->ntags] = v;
            r->value_len[r->ntags++] = vlen;
        } else if (key_is(k, klen, "channel") && !r->channel && vlen) {
            r->channel = v;
            r->channel_len = vlen;
        } else if (key_is(k, klen, "event") && !r->event && vlen) {
            r->event = v;
            r->event_len = vlen;
        } else if (key_is(k, klen, "data") && !r->data) {
            r->data = v;
            r->data_len = vlen;
        } else {
            return false;   /* unknown, or twice */
        }
    }
    /* As sluice.disconnect insists: a tag at least, an event without line
     * breaks (it goes into the stream as is). */
    if (!r->ntags || !r->event || !r->data || memchr(r->event, '\n', r->event_len) ||
        memchr(r->event, '\r', r->event_len))
        return false;
    return true;
}
