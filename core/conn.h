/* The connection state machine: read, parse, dispatch, respond or stream,
 * write, close. */
#ifndef SLUICE_CONN_H
#define SLUICE_CONN_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "deadline.h"
#include "http.h"
#include "outbuf.h"

struct worker;
struct sub;

enum conn_state {
    CONN_READING,      /* waiting for or parsing a request */
    CONN_DISPATCHING,  /* a Lua handler is deciding */
    CONN_STREAMING,    /* an open SSE stream */
    CONN_CLOSING,      /* write what is queued, then close */
    CONN_DEAD,         /* close at the end of this loop turn */
};

enum slow_policy { SLOW_CLOSE, SLOW_DROP_OLDEST };

struct peer_addr {
    uint8_t family;        /* AF_INET or AF_INET6 */
    uint8_t addr[16];
};

struct conn {
    /* What a fan-out touches for every subscriber comes first, so that it
     * shares as few cache lines as possible. */
    enum conn_state state;
    bool in_flush_queue;
    bool writing;                 /* waiting for EV_WRITE */
    bool chunked;                 /* HTTP/1.1 stream: events are chunks */
    bool stall_armed;             /* stall deadline set (it lives further down) */
    uint8_t slow_policy;
    ev_tstamp last_write;         /* loop time the stream last queued output */
    struct outbuf out;
    TAILQ_ENTRY(conn) flush_link;
    size_t replay_credit;         /* resume bytes not yet written */
    struct worker *w;

    ev_io io;
    int fd;
    uint32_t slot;
    struct peer_addr peer;
    struct http_parser *parser;   /* freed once a stream opens */
    struct deadline timeout;      /* header or keep-alive */
    struct deadline stall;        /* output waiting on a client not reading */
    char *backlog;                /* pipelined input parked while answers drain */
    uint32_t backlog_len;
    bool served;                  /* has answered a request before */
    bool input_closed;            /* read EOF: answer what was read, then close */
    bool keep_alive;
    bool sent_continue;
    /* Streams only. */
    bool stream;
    bool lua_watch;               /* Lua asked to hear when it closes */
    struct sub *subs;
    /* Its own timer, not a shared fixed-interval list: the next heartbeat
     * is due one interval after the last write, which differs per stream. */
    ev_timer heartbeat;
    double heartbeat_s;           /* 0: none */
    char *reset_event;            /* name of the missed-events event */
    struct frame *gap_marker;     /* queued gap notice, while unsent */
    uint32_t gap_dropped;         /* events that notice accounts for */
};

struct sockaddr;
void conn_accept(struct worker *w, int fd, const struct sockaddr *peer);

/* The client's address as text ("127.0.0.1", "::1"). */
void conn_peer_text(const struct conn *c, char *out, size_t size);
void conn_on_flush(struct conn *c);          /* from the worker's flusher */
void conn_free(struct conn *c);              /* close now and free */

/* Answering (from Lua or C). head is the status line and headers, ending
 * with the blank line; body may be NULL. */
void conn_respond(struct conn *c, const char *head, size_t head_len,
                  const char *body, size_t body_len);
void conn_respond_error(struct conn *c, int status, const char *extra_headers);

/* Opens an SSE stream: head is the response head, first the opening
 * event (retry hint or comment) so the client's open event fires at once. */
bool conn_stream_open(struct conn *c, const char *head, size_t head_len,
                      struct frame *first, double heartbeat);

/* Queues one framed event on a stream, applying the slow-consumer policy.
 * False if the stream is gone or was closed by the policy. */
bool conn_stream_send(struct conn *c, struct frame *f);

/* Queues an event replayed from history on resume. History holds these
 * frames anyway, so a replay may exceed the queue cap: the cap then grows
 * by what is replayed until the client has read it. */
bool conn_stream_replay(struct conn *c, struct frame *f);

/* Ends a stream cleanly after what is queued (terminating chunk). */
void conn_stream_end(struct conn *c);

/* Ends a stream with a reconnect hint (shutdown). */
void conn_stream_goodbye(struct conn *c, long retry_ms);

/* Closes at the end of this loop turn; safe in the middle of a fan-out. */
void conn_abort(struct conn *c);

bool conn_is_stream(const struct conn *c);

/* For a fan-out: fetch what queueing an event on c touches (the hot part
 * of struct conn), then, once that has arrived, the output slot. */
static inline void conn_prefetch(const struct conn *c)
{
    __builtin_prefetch(c, 1);
    __builtin_prefetch((const char *)c + 64, 1);
}

static inline void conn_prefetch_queue(const struct conn *c)
{
    outbuf_prefetch_tail(&c->out);
}

/* Deadline expiries, routed here by the worker. */
void conn_timed_out(struct conn *c);    /* header or keep-alive timeout */
void conn_stalled(struct conn *c);      /* no write progress for --send-timeout */

#endif
