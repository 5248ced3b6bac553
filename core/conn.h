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
#include "stream.h"

struct access_rec;
struct worker;

enum conn_state {
    CONN_READING,      /* waiting for or parsing a request */
    CONN_DISPATCHING,  /* a Lua handler is deciding */
    CONN_STREAMING,    /* an open SSE stream */
    CONN_CLOSING,      /* write what is queued, then close */
    CONN_DEAD,         /* close at the end of this loop turn */
};

struct peer_addr {
    uint8_t family;        /* AF_INET or AF_INET6 */
    uint8_t addr[16];
};

struct conn {
    /* What a fan-out touches for every subscriber comes first: the
     * transport's part of it, then the stream's (see stream_prefetch).
     * Idle streams are most of a server's memory: fields are packed, and
     * what only a request needs lives with its parser (conn.c). */
    uint8_t state;                /* enum conn_state */
    bool in_flush_queue;
    bool writing;                 /* waiting for EV_WRITE */
    bool stall_armed;             /* stall deadline set (it lives further down) */
    bool stream;                  /* has opened a stream */
    bool lua_watch : 1;           /* the handler's: Lua asked to hear when it closes */
    bool served : 1;              /* has answered a request before */
    bool input_closed : 1;        /* read EOF: answer what was read, then close */
    bool keep_alive : 1;
    bool header_timing : 1;       /* timeout is the header timeout (else keep-alive) */
    bool quota_held : 1;          /* holds a stream slot of quota_key */
    bool dispatched : 1;          /* an answer now ends a dispatched request */
    /* The handler answers after dispatch returned (a script waiting for
     * Redis): nothing more is parsed until it has. */
    bool answer_later : 1;
    /* For the built-in metrics (core/metrics.h): the route and variant the
     * runtime noted (0: none), and when its stream opened, loop time in ms
     * modulo 2^32 (lifetimes come out right below 49 days). */
    uint16_t mkey;
    uint32_t stream_opened_ms;
    uint32_t slot;                /* in the worker's table (worker_handle) */
    TAILQ_ENTRY(conn) flush_link;
    struct worker *w;
    /* Its output queue and, once a stream opens, the subscriber; open
     * exactly while state is CONN_STREAMING. */
    struct sse_stream st;

    ev_io io;                     /* io.fd: the socket */
    /* Reading requests: the parser, and what only a request needs with it
     * (struct conn_request in conn.c); freed once a stream opens. */
    struct http_parser *parser;
    struct deadline timeout;      /* header or keep-alive */
    struct deadline stall;        /* output waiting on a client not reading */
    /* The request being answered, or the stream: ids, and what the access
     * log says of it (core/access_log.h). */
    struct access_rec *rec;
    /* Admin actions and quotas (core/tags.h, core/quota.h): its tags once
     * the app tagged the stream, and the quota slot it holds. */
    struct tag_entry *tags;
    uint64_t quota_key;
};

/* What the transport hands the rest of the server: a request to answer,
 * and a connection that carried a stream going away. The worker wires it
 * (core/dispatch.c: the Lua runtime and the channels); the transport
 * knows nothing of either. */
struct conn_handler {
    void (*dispatch)(struct conn *c);       /* a whole request has arrived */
    void (*stream_gone)(struct conn *c);    /* before a stream's conn is freed */
    void (*answered)(struct conn *c);       /* a plain answer is going out */
    void (*gone)(struct conn *c);           /* any conn, before it is freed */
};

struct sockaddr;
void conn_accept(struct worker *w, int fd, const struct sockaddr *peer);

/* The client's address as text ("127.0.0.1", "::1"), while c reads or
 * answers requests ("unknown" once it streams: the access record keeps
 * what the log needs). */
void conn_peer_text(const struct conn *c, char *out, size_t size);
void conn_on_flush(struct conn *c);          /* from the worker's flusher */
void conn_free(struct conn *c);              /* close now and free */

/* Answering (from Lua or C): the transport builds the head (status line,
 * fields, then the framing it alone decides: length, keep-alive, HEAD).
 * fields: complete "Name: value\r\n" lines the caller checked, or NULL. */
void conn_answer(struct conn *c, int status, const char *fields, size_t fields_len,
                 const char *body, size_t body_len);
void conn_respond_error(struct conn *c, int status, const char *extra_headers);

/* During dispatch: the answer comes later, from another callback (a
 * script waiting for Redis). Meanwhile the connection parses nothing
 * more: what the client sends next waits (in the socket), and a client
 * that half-closes still gets its answer. false: not dispatching. */
bool conn_answer_later(struct conn *c);

/* Opens an SSE stream: fields (as for conn_answer) follow the status
 * line, the transport adds the framing (chunked for HTTP/1.1, to the close
 * for HTTP/1.0); first is the opening event (retry hint or comment) so the
 * client's open event fires at once. A HEAD request gets the head alone
 * and false. */
bool conn_stream_open(struct conn *c, const char *fields, size_t fields_len,
                      struct frame *first, double heartbeat);

/* The stream a connection carries (its sink, for the stream's own
 * settings: slow-consumer policy, reset event). */
static inline struct sse_stream *conn_stream(struct conn *c)
{
    return &c->st;
}

/* Closes at the end of this loop turn; safe in the middle of a fan-out. */
void conn_abort(struct conn *c);

bool conn_is_stream(const struct conn *c);

/* Deadline expiries, routed here by the worker. */
void conn_timed_out(struct conn *c);    /* header or keep-alive timeout */
void conn_stalled(struct conn *c);      /* no write progress for --send-timeout */

#endif
