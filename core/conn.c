#include "conn.h"

#include "counter.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access_log.h"
#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "response.h"
#include "sse.h"
#include "worker.h"

static void on_io(struct ev_loop *loop, ev_io *io, int revents);

/* What only a connection reading or answering requests needs: allocated
 * with its parser at accept, freed with it once the connection streams or
 * closes, so an idle stream does not carry it. c->parser points at its
 * first member. */
struct conn_request {
    struct http_parser parser;
    char *backlog;                /* pipelined input parked while answers drain */
    uint32_t backlog_len;
    bool sent_continue;
    struct peer_addr peer;        /* a stream's is in its access record, if logged */
    double dispatched_at;         /* monotonic, for the request's duration */
};

/* Every idle stream is one of these: with glibc's 8-byte chunk header it
 * fits a 320-byte malloc chunk (472 bytes and a 480-byte chunk before the
 * request moved out). Growing it costs 16 bytes a stream per step. */
#if UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(sizeof(struct conn) + 8 <= 320, "struct conn outgrew its 320-byte malloc chunk");
#endif

static struct conn_request *request_of(const struct conn *c)
{
    return (struct conn_request *)c->parser;
}

static void drop_request(struct conn *c)
{
    struct conn_request *rq = request_of(c);
    if (!rq)
        return;
    free(rq->backlog);
    http_parser_free(&rq->parser);
    free(rq);
    c->parser = NULL;
}

/* c->timeout is the header timeout or the keep-alive one, or off. */
static void time_header(struct conn *c)
{
    deadline_arm(&c->w->header_timeouts, &c->timeout);
    c->header_timing = true;
}

static void time_keepalive(struct conn *c)
{
    deadline_arm(&c->w->keepalive_timeouts, &c->timeout);
    c->header_timing = false;
}

static void untime(struct conn *c)
{
    deadline_cancel(&c->timeout);
    c->header_timing = false;
}

static void set_events(struct conn *c, int events)
{
    if (c->input_closed)   /* EOF stays readable: polling it would spin */
        events &= ~EV_READ;
    if ((c->io.events & (EV_READ | EV_WRITE)) == events)
        return;
    ev_io_stop(c->w->loop, &c->io);
    ev_io_set(&c->io, c->io.fd, events);
    if (events)
        ev_io_start(c->w->loop, &c->io);
}

/* The one place state changes: the stream takes events exactly while the
 * connection streams. */
static void set_state(struct conn *c, enum conn_state state)
{
    c->state = (uint8_t)state;
    c->st.open = state == CONN_STREAMING;
}

static void schedule_flush(struct conn *c)
{
    if (c->in_flush_queue)
        return;
    c->in_flush_queue = true;
    /* Plain answers go first: a publisher must not wait behind the
     * fan-out its own publish caused. */
    if (conn_is_stream(c))
        TAILQ_INSERT_TAIL(&c->w->flush_queue, c, flush_link);
    else
        TAILQ_INSERT_HEAD(&c->w->flush_queue, c, flush_link);
    /* Queued from inside the flush pass's own loop turn (a pipelined
     * request resumed after its answers drained): the loop must turn
     * again before it sleeps. A started watcher costs nothing here. */
    ev_idle_start(c->w->loop, &c->w->flush_pending);
}

bool conn_is_stream(const struct conn *c)
{
    return c->stream;
}

static void remember_peer(struct peer_addr *p, const struct sockaddr *sa)
{
    if (sa && sa->sa_family == AF_INET) {
        p->family = AF_INET;
        memcpy(p->addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa && sa->sa_family == AF_INET6) {
        p->family = AF_INET6;
        memcpy(p->addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    }
}

void conn_peer_text(const struct conn *c, char *out, size_t size)
{
    const struct peer_addr *p = c->parser ? &request_of(c)->peer : NULL;
    if (!p || !p->family || !inet_ntop(p->family, p->addr, out, (socklen_t)size))
        snprintf(out, size, "unknown");
}

void conn_accept(struct worker *w, int fd, const struct sockaddr *peer)
{
    struct conn *c = calloc(1, sizeof *c);
    struct conn_request *rq = c ? calloc(1, sizeof *rq) : NULL;
    if (c) {
        c->w = w;
        c->parser = rq ? &rq->parser : NULL;
    }
    if (!c || !rq || !worker_register_conn(w, c)) {
        free(rq);
        free(c);
        if (close(fd) < 0)
            log_debug("close: %s", strerror(errno));
        log_warn("out of memory accepting a connection");
        return;
    }
    remember_peer(&rq->peer, peer);
    http_parser_init(c->parser, &w->limits);
    ev_io_init(&c->io, on_io, fd, EV_READ);
    c->io.data = c;
    stream_init(&c->st, &w->streams);
    if (!w->streams.meter) {   /* the worker's, once: its id is known by now */
        struct worker_metrics *m = metrics_worker(w->id);
        w->streams.meter = m ? &m->out : NULL;
    }
    ev_io_start(w->loop, &c->io);
    time_header(c);
}

/* Loop time in ms, modulo 2^32. */
static uint32_t loop_ms(struct ev_loop *loop)
{
    return (uint32_t)(uint64_t)(ev_now(loop) * 1e3);
}

/* A stream's access-log line, while its subscriptions can still be named. */
static void log_stream_end(struct conn *c)
{
    if (!c->stream)
        return;
    if (!c->st.end_reason)
        stream_note_end(&c->st, c->w->stopping ? STREAM_END_SHUTDOWN : STREAM_END_SERVER_ERROR);
    metrics_stream_closed(c->w->id, c->mkey, (enum stream_end)c->st.end_reason,
                          (loop_ms(c->w->loop) - c->stream_opened_ms) / 1e3);
    if (c->rec)
        access_log_stream(c->w->loop, c->rec, &c->st);
}

void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    log_stream_end(c);
    w->handler->gone(c);   /* whatever ended it: what the handler holds goes */
    access_rec_free(c->rec);
    c->rec = NULL;
    set_state(c, CONN_DEAD);   /* on_close handlers may still hold its handle */
    if (c->stream)
        gauge_set(&w->stats.streams, gauge_get(&w->stats.streams) - 1);
    if (c->stream)
        w->handler->stream_gone(c);
    ev_io_stop(w->loop, &c->io);
    untime(c);
    deadline_cancel(&c->stall);
    if (c->in_flush_queue)
        TAILQ_REMOVE(&w->flush_queue, c, flush_link);
    stream_release(&c->st);
    drop_request(c);
    if (close(c->io.fd) < 0)
        log_debug("close: %s", strerror(errno));
    worker_conn_released(w, c);
    free(c);
}

void conn_abort(struct conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    set_state(c, CONN_DEAD);
    schedule_flush(c);
}

/* Writes what the socket takes; keeps the stall deadline: armed while
 * output waits on the client, re-armed whenever it makes progress. */
static enum outbuf_status write_some(struct conn *c)
{
    size_t before = c->st.out.bytes;
    enum outbuf_status st = outbuf_write(&c->st.out, c->w->streams.meter, c->io.fd);
    stream_wrote(&c->st, before);
    if (st == OUTBUF_ERROR)
        stream_note_end(&c->st, STREAM_END_CLIENT_GONE);
    if (st == OUTBUF_AGAIN && (c->st.out.bytes < before || !c->stall_armed)) {
        deadline_arm(&c->w->send_timeouts, &c->stall);
        c->stall_armed = true;
    } else if (st == OUTBUF_DRAINED && c->stall_armed) {
        deadline_cancel(&c->stall);
        c->stall_armed = false;
    }
    return st;
}

void conn_stalled(struct conn *c)
{
    log_debug("client read nothing for %g s; closing", c->w->cfg->send_timeout);
    stream_note_end(&c->st, STREAM_END_SEND_TIMEOUT);
    conn_abort(c);
}

/* Writes what is queued. Returns false if c was freed. */
static bool write_out(struct conn *c)
{
    switch (write_some(c)) {
    case OUTBUF_ERROR:
        conn_free(c);
        return false;
    case OUTBUF_AGAIN:
        c->writing = true;
        set_events(c, EV_READ | EV_WRITE);
        return true;
    case OUTBUF_DRAINED:
        break;
    }
    if (c->state == CONN_CLOSING) {
        conn_free(c);
        return false;
    }
    c->writing = false;
    set_events(c, EV_READ);   /* also resumes reading paused for backpressure */
    if (c->parser && request_of(c)->backlog && c->state == CONN_READING)
        ev_feed_event(c->w->loop, &c->io, EV_READ);
    return true;
}

/* Writes at once, outside the flush pass; never frees c (this may run in
 * the middle of a fan-out), errors abort it for the flush pass to free. */
static void write_now(struct conn *c)
{
    if (c->writing)
        return;   /* the socket is known to be full */
    switch (write_some(c)) {
    case OUTBUF_ERROR:
        conn_abort(c);
        break;
    case OUTBUF_AGAIN:
        c->writing = true;
        set_events(c, EV_READ | EV_WRITE);
        break;
    case OUTBUF_DRAINED:
        break;
    }
}

void conn_on_flush(struct conn *c)
{
    c->in_flush_queue = false;
    if (c->state == CONN_DEAD) {
        conn_free(c);
        return;
    }
    if (!c->writing)   /* else EV_WRITE will tell us when to write */
        write_out(c);
}

static void enqueue(struct conn *c, struct frame *f, uint32_t off, uint32_t len)
{
    if (!outbuf_push(&c->st.out, c->w->streams.meter, f, off, len)) {
        log_warn("out of memory queueing output; closing connection");
        conn_abort(c);
        return;
    }
    schedule_flush(c);
}

static void enqueue_bytes(struct conn *c, const char *bytes, size_t len)
{
    struct frame *f = frame_copy(bytes, len);
    if (!f) {
        conn_abort(c);
        return;
    }
    enqueue(c, f, 0, f->len);
    frame_unref(f);
}

/* After an answer: the next request on this connection, or closing. */
static void finish_request(struct conn *c)
{
    if (c->answer_later) {   /* answered at last: the next request may be parsed */
        c->answer_later = false;
        if (c->parser) {
            request_of(c)->sent_continue = false;
            http_parser_next(c->parser);
        }
    }
    c->served = true;
    /* input_closed: the client half-closed while its answer was awaited. */
    if (c->keep_alive && !c->w->stopping && !c->input_closed) {
        set_state(c, CONN_READING);
        time_keepalive(c);
    } else {
        set_state(c, CONN_CLOSING);
        untime(c);
    }
}

#define ID_HEADERS_MAX (14 + REQID_MAX + 15 + REQID_TRACEPARENT_LEN + 2)

/* The record of the request being answered: made at dispatch, or here
 * for an answer given before (400, 408...), with ids of its own. */
static struct access_rec *current_rec(struct conn *c)
{
    if (!c->rec) {
        char peer[64];
        conn_peer_text(c, peer, sizeof peer);
        bool known = c->parser && c->parser->head_done;
        c->rec = access_rec_new(known ? http_method(c->parser) : NULL,
                                known ? c->parser->req.head : NULL,
                                known ? c->parser->req.url_len : 0, peer, NULL, 0, NULL, 0);
    }
    return c->rec;
}

/* "X-Request-ID" and "traceparent" lines for a response head (at most
 * ID_HEADERS_MAX bytes); their length. *tracestate: the request's, to
 * pass on when it continues a trace. */
static size_t id_headers(struct conn *c, const struct access_rec *r, char *out,
                         const char **tracestate, uint32_t *ts_len)
{
    size_t n = 0;
    memcpy(out, "X-Request-ID: ", 14);
    n += 14;
    memcpy(out + n, r->ids.id, r->ids.id_len);
    n += r->ids.id_len;
    memcpy(out + n, "\r\ntraceparent: ", 15);
    n += 15;
    reqid_traceparent(&r->ids, out + n);
    n += REQID_TRACEPARENT_LEN;
    memcpy(out + n, "\r\n", 2);
    n += 2;
    /* tracestate goes with the trace it belongs to, untouched. */
    *tracestate = NULL;
    *ts_len = 0;
    if (r->ids.has_parent && c->parser)
        *tracestate = http_header(&c->parser->req, "tracestate", ts_len);
    return n;
}

/* A response head with the id headers added after its status line. */
static struct frame *head_frame(struct conn *c, const char *head, size_t head_len,
                                const char *body, size_t body_len)
{
    struct access_rec *r = current_rec(c);
    char ids[ID_HEADERS_MAX];
    const char *ts = NULL;
    uint32_t ts_len = 0;
    size_t ids_len = 0;
    const char *eol = memchr(head, '\n', head_len);
    if (r && eol)
        ids_len = id_headers(c, r, ids, &ts, &ts_len);
    size_t extra = ids_len + (ts ? 12 + ts_len + 2 : 0);
    struct frame *f = frame_new(head_len + extra + body_len);
    if (!f)
        return NULL;
    char *p = f->data;
    size_t status_line = extra ? (size_t)(eol - head) + 1 : head_len;
    memcpy(p, head, status_line);
    p += status_line;
    if (extra) {
        memcpy(p, ids, ids_len);
        p += ids_len;
        if (ts) {
            memcpy(p, "tracestate: ", 12);
            memcpy(p + 12, ts, ts_len);
            memcpy(p + 12 + ts_len, "\r\n", 2);
            p += 12 + ts_len + 2;
        }
        memcpy(p, head + status_line, head_len - status_line);
        p += head_len - status_line;
    }
    if (body_len)
        memcpy(p, body, body_len);
    return f;
}

/* The status of a response head "HTTP/1.1 NNN ...". */
static int head_status(const char *head, size_t len)
{
    if (len < 12)
        return 0;
    return (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
}

static void respond(struct conn *c, const char *head, size_t head_len,
                    const char *body, size_t body_len)
{
    if (c->state != CONN_DISPATCHING && c->state != CONN_READING)
        return;
    struct frame *f = head_frame(c, head, head_len, body, body_len);
    if (!f) {
        conn_abort(c);
        return;
    }
    c->w->handler->answered(c);
    access_log_answer(c->w->loop, c->rec, head_status(head, head_len), f->len);
    if (c->dispatched) {
        c->dispatched = false;
        if (c->parser)   /* (always: dispatching is reading a request) */
            metrics_request_done(c->w->id, c->mkey,
                                 clock_mono() - request_of(c)->dispatched_at);
    }
    access_rec_free(c->rec);
    c->rec = NULL;
    enqueue(c, f, 0, f->len);
    frame_unref(f);
    finish_request(c);
}

static bool is_head_request(const struct conn *c)
{
    return c->parser && c->parser->req.complete && http_is_head(c->parser);
}

void conn_answer(struct conn *c, int status, const char *fields, size_t fields_len,
                 const char *body, size_t body_len)
{
    if (c->state != CONN_DISPATCHING && c->state != CONN_READING)
        return;
    bool no_body = status == 204 || status == 304;
    struct buf head = { 0 };
    head_status_line(&head, status);
    if (fields_len)
        buf_put(&head, fields, fields_len);
    head_finish(&head, no_body ? BODY_NONE : BODY_LENGTH, body_len, c->keep_alive,
                c->parser && http_is_1_0(c->parser));
    if (head.failed) {
        buf_free(&head);
        conn_abort(c);
        return;
    }
    respond(c, head.data, head.len, body, (no_body || is_head_request(c)) ? 0 : body_len);
    buf_free(&head);
}

void conn_respond_error(struct conn *c, int status, const char *extra_headers)
{
    bool keep = c->keep_alive && status < 500 && status != 408 &&
                status != 400 && status != 413 && status != 414 && status != 431;
    /* After a framing error the rest of the input cannot be trusted. */
    c->keep_alive = keep;
    struct buf b = { 0 };
    size_t body_off;
    response_plain(&b, status, extra_headers, keep, &body_off);
    if (b.failed) {
        buf_free(&b);
        conn_abort(c);
        return;
    }
    respond(c, b.data, body_off, b.data + body_off,
            is_head_request(c) ? 0 : b.len - body_off);
    buf_free(&b);
}

bool conn_stream_open(struct conn *c, const char *fields, size_t fields_len,
                      struct frame *first, double heartbeat)
{
    if (c->state != CONN_DISPATCHING)
        return false;
    bool http_1_0 = c->parser && http_is_1_0(c->parser);
    struct buf head = { 0 };
    head_status_line(&head, 200);
    if (fields_len)
        buf_put(&head, fields, fields_len);
    if (is_head_request(c)) {   /* a HEAD request learns the headers, nothing more */
        head_finish(&head, BODY_LENGTH, 0, c->keep_alive, http_1_0);
        if (!head.failed)
            respond(c, head.data, head.len, NULL, 0);
        else
            conn_abort(c);
        buf_free(&head);
        return false;
    }
    c->st.chunked = !http_1_0;
    head_finish(&head, c->st.chunked ? BODY_CHUNKED : BODY_TO_CLOSE, 0, true, http_1_0);
    struct frame *f = head.failed ? NULL : head_frame(c, head.data, head.len, NULL, 0);
    buf_free(&head);
    if (!f) {
        conn_abort(c);
        return false;
    }
    if (c->rec && !c->rec->request) {   /* no access log: the ids were all it needed */
        access_rec_free(c->rec);
        c->rec = NULL;
    }
    if (c->rec)
        c->rec->written_at_open = c->st.out.written;
    enqueue(c, f, 0, f->len);
    frame_unref(f);
    if (c->state == CONN_DEAD)
        return false;
    set_state(c, CONN_STREAMING);
    c->stream = true;
    c->dispatched = false;
    c->stream_opened_ms = loop_ms(c->w->loop);
    metrics_stream_opened(c->w->id, c->mkey);
    counter_add(&c->w->stats.streams_opened, 1);
    gauge_set(&c->w->stats.streams, gauge_get(&c->w->stats.streams) + 1);
    untime(c);
    stream_start(&c->st, first, heartbeat);
    return c->state == CONN_STREAMING;
}

/* ---- what the stream asks of its transport (stream.h) ---------------- */

static struct conn *conn_of(struct sse_stream *s)
{
    return (struct conn *)((char *)s - offsetof(struct conn, st));
}

void stream_owner_flush(struct sse_stream *s)
{
    schedule_flush(conn_of(s));
}

void stream_owner_write_now(struct sse_stream *s)
{
    write_now(conn_of(s));
}

void stream_owner_abort(struct sse_stream *s)
{
    conn_abort(conn_of(s));
}

void stream_owner_ended(struct sse_stream *s)
{
    struct conn *c = conn_of(s);
    set_state(c, CONN_CLOSING);
    schedule_flush(c);
}

void conn_timed_out(struct conn *c)
{
    if (c->state != CONN_READING)
        return;
    bool partial = c->parser && c->parser->started;
    if (c->served && !partial) {
        set_state(c, CONN_DEAD);   /* an idle keep-alive connection: just close */
        schedule_flush(c);
        return;
    }
    c->keep_alive = false;
    conn_respond_error(c, 408, NULL);
}

static void dispatch(struct conn *c)
{
    struct worker *w = c->w;
    counter_add(&w->stats.requests, 1);
    set_state(c, CONN_DISPATCHING);
    c->mkey = 0;   /* until the runtime names the route */
    c->dispatched = true;
    request_of(c)->dispatched_at = clock_mono();
    c->keep_alive = http_keep_alive(c->parser) && !w->stopping;
    untime(c);
    uint32_t n;
    if (!http_is_1_0(c->parser) && !http_header(&c->parser->req, "host", &n)) {
        conn_respond_error(c, 400, NULL);   /* RFC 9112 3.2: Host is required */
        return;
    }
    uint32_t xlen = 0, tlen = 0;
    const char *xrid = http_header(&c->parser->req, "x-request-id", &xlen);
    const char *tp = http_header(&c->parser->req, "traceparent", &tlen);
    char peer[64] = "";
    if (access_log_enabled())   /* else only the ids are needed */
        conn_peer_text(c, peer, sizeof peer);
    access_rec_free(c->rec);
    c->rec = access_rec_new(http_method(c->parser), c->parser->req.head,
                            c->parser->req.url_len, peer, xrid, xlen, tp, tlen);
    w->handler->dispatch(c);
    if (c->state == CONN_DISPATCHING && !c->answer_later) {
        log_error("handler produced no answer for %s; answering 500",
                  http_method(c->parser));
        conn_respond_error(c, 500, NULL);
    }
}

bool conn_answer_later(struct conn *c)
{
    if (c->state != CONN_DISPATCHING)
        return false;
    c->answer_later = true;
    return true;
}

/* Input read after a request whose answer comes later: kept, in order,
 * for when it is answered (write_out feeds it then). */
static void keep_input(struct conn *c, const char *data, size_t len)
{
    char *copy = malloc(len);
    if (!copy) {
        conn_abort(c);
        return;
    }
    memcpy(copy, data, len);
    request_of(c)->backlog = copy;
    request_of(c)->backlog_len = (uint32_t)len;
}

static void park_input(struct conn *c, const char *data, size_t len)
{
    char *copy = malloc(len);
    if (!copy) {
        conn_abort(c);
        return;
    }
    memcpy(copy, data, len);
    request_of(c)->backlog = copy;
    request_of(c)->backlog_len = (uint32_t)len;
    set_events(c, EV_WRITE);
}

/* Parses and answers every complete request in data. */
static void feed(struct conn *c, const char *data, size_t len)
{
    while (len && c->state == CONN_READING) {
        struct http_parser *p = c->parser;
        size_t used = 0;
        enum http_parse_result r = http_parse(p, data, len, &used);
        data += used;
        len -= used;
        if (r == HTTP_PARSE_BAD) {
            c->keep_alive = false;
            conn_respond_error(c, http_bad_status(p), NULL);
            return;
        }
        if (r == HTTP_PARSE_MORE) {
            if (p->started && !(c->header_timing && deadline_armed(&c->timeout)))
                time_header(c);
            if (p->head_done && p->req.expect_continue && !request_of(c)->sent_continue) {
                request_of(c)->sent_continue = true;
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                enqueue_bytes(c, cont, sizeof cont - 1);
            }
            return;
        }
        dispatch(c);
        if (c->answer_later) {   /* keep the parser and the rest of the input */
            if (len)
                keep_input(c, data, len);
            return;
        }
        request_of(c)->sent_continue = false;
        if (c->state != CONN_READING)
            break;
        http_parser_next(p);
        /* Answers the client is not reading pile up: park the rest of the
         * input (at most one read's worth) until they drain. */
        if (len && c->st.out.bytes > c->w->cfg->max_queued) {
            park_input(c, data, len);
            return;
        }
    }
    if (c->state != CONN_READING)   /* a stream or a closing connection parses nothing more */
        drop_request(c);
}

/* A subscriber that closed its end wants nothing more: closing with a
 * reset instead of a FIN skips the FIN/ACK exchange and the LAST_ACK state
 * (on loopback, also the client's TIME_WAIT), which made close() the
 * largest cost of subscription churn. Not for plain answers: a client
 * that half-closed after its request may still be reading the answer. */
static void reset_on_close(struct conn *c)
{
    struct linger abort_close = { .l_onoff = 1, .l_linger = 0 };
    if (setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &abort_close, sizeof abort_close) < 0)
        log_debug("SO_LINGER: %s", strerror(errno));
}

/* Waiting for a later answer: reads nothing (what comes next stays in
 * the socket, in order), only notices a client that hung up. */
static void peek_while_waiting(struct conn *c)
{
    char b;
    ssize_t n = recv(c->io.fd, &b, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n < 0) {   /* reset: nobody will read the answer */
        conn_free(c);
        return;
    }
    /* More input, or an end of input (answered, then closed): either
     * way nothing to read until the answer went out (write_out reads
     * again). */
    if (n == 0)
        c->input_closed = true;
    set_events(c, c->writing ? EV_WRITE : 0);
}

static void on_readable(struct conn *c)
{
    struct worker *w = c->w;
    if (c->answer_later) {
        peek_while_waiting(c);
        return;
    }
    /* Pipelined requests whose answers the client is not reading: stop
     * reading until the answers drain, so memory stays bounded. */
    if (c->state == CONN_READING && c->st.out.bytes > w->cfg->max_queued) {
        set_events(c, EV_WRITE);
        return;
    }
    struct conn_request *rq = request_of(c);
    if (rq && rq->backlog) {   /* parked input first, in order */
        char *data = rq->backlog;
        size_t len = rq->backlog_len;
        rq->backlog = NULL;
        rq->backlog_len = 0;
        if (c->state == CONN_READING)
            feed(c, data, len);
        free(data);
        return;
    }
    ssize_t n = read(c->io.fd, w->readbuf, sizeof w->readbuf);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        stream_note_end(&c->st, STREAM_END_CLIENT_GONE);
        conn_free(c);
        return;
    }
    if (n == 0) {
        if (c->stream) {   /* a subscriber that hung up */
            stream_note_end(&c->st, STREAM_END_CLIENT_GONE);
            reset_on_close(c);
            conn_free(c);
            return;
        }
        /* The client sent all it will (maybe a half-close, as `printf |
         * nc` does): everything it sent has been parsed by now, so write
         * the answers still queued, then close. */
        c->input_closed = true;
        if (c->st.out.bytes == 0 || c->state == CONN_DEAD) {
            conn_free(c);
            return;
        }
        set_state(c, CONN_CLOSING);   /* a partial request is never answered */
        untime(c);   /* --send-timeout still bounds a client not reading */
        set_events(c, c->writing ? EV_WRITE : 0);
        schedule_flush(c);
        return;
    }
    if (c->state == CONN_READING)
        feed(c, w->readbuf, (size_t)n);
    /* Streams ignore input; reading only notices a vanished client. */
}

static void on_io(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct conn *c = io->data;
    if (revents & EV_WRITE) {
        if (c->state == CONN_DEAD) {
            conn_free(c);
            return;
        }
        /* Writable again: write in the flush slices like everything else,
         * so thousands of sockets draining at once cannot hold up the
         * loop (EV_WRITE is off until a write falls short again). */
        c->writing = false;
        set_events(c, EV_READ);
        schedule_flush(c);
    }
    if (revents & EV_READ)
        on_readable(c);
}
