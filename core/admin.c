#include "admin.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "process.h"
#include "redis_bus.h"
#include "status_page.h"

#define ADMIN_MAX_CLIENTS 64      /* scrapers, probes, status pages */
#define ADMIN_MAX_REQUEST 4096    /* a probe's request is a few hundred bytes */
#define ADMIN_IDLE_SECONDS 10.0   /* a request not sent whole by then is dropped */
#define ADMIN_MAX_BACKLOG (1u << 20)   /* a status page that stops reading */

struct admin_client {
    struct admin *a;
    ev_io io;
    int fd;
    bool sse;                 /* follows /status/events */
    bool close_after;         /* close once out is written */
    double since;             /* when it connected (loop time) */
    size_t in_len;
    char in[ADMIN_MAX_REQUEST];
    struct buf out;
    size_t out_off;
    LIST_ENTRY(admin_client) link;
};

struct admin {
    struct process *p;
    struct ev_loop *loop;
    int fd;
    ev_io listener;
    ev_timer tick;            /* status events, idle clients */
    unsigned nclients;
    LIST_HEAD(, admin_client) clients;
};

/* The hook for "ready" beyond the workers: in cluster mode, whether Redis
 * is reachable (always, without --redis). */
static bool cluster_ready(const struct process *p)
{
    return redis_bus_reachable(p->redis);
}

static void client_free(struct admin_client *c)
{
    ev_io_stop(c->a->loop, &c->io);
    if (close(c->fd) < 0)
        log_debug("admin close: %s", strerror(errno));
    LIST_REMOVE(c, link);
    c->a->nclients--;
    buf_free(&c->out);
    free(c);
}

/* Writes what is queued; false when c was freed. */
static bool client_write(struct admin_client *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.data + c->out_off, c->out.len - c->out_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_stop(c->a->loop, &c->io);
            ev_io_set(&c->io, c->fd, EV_WRITE);
            ev_io_start(c->a->loop, &c->io);
            return true;
        }
        if (n < 0) {
            client_free(c);
            return false;
        }
        c->out_off += (size_t)n;
    }
    c->out.len = c->out_off = 0;
    if (c->close_after) {
        /* Our FIN, then close on the client's: closing now with anything
         * unread would send a reset, which can discard the answer. */
        if (shutdown(c->fd, SHUT_WR) < 0) {
            client_free(c);
            return false;
        }
    }
    /* An SSE client: nothing to read, but a read event says it left. */
    ev_io_stop(c->a->loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_READ);
    ev_io_start(c->a->loop, &c->io);
    return true;
}

static void answer(struct admin_client *c, bool head_only, int status, const char *reason,
                   const char *type, const char *body, size_t len)
{
    buf_printf(&c->out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Cache-Control: no-store\r\nConnection: close\r\n\r\n", status, reason, type, len);
    if (!head_only)
        buf_put(&c->out, body, len);
    c->close_after = true;
}

static void status_event(struct admin_client *c)
{
    buf_puts(&c->out, "event: status\ndata: ");
    metrics_status_json(c->a->p, &c->out);
    buf_puts(&c->out, "\n\n");
}

static void route(struct admin_client *c, const char *method, const char *path, size_t plen)
{
    struct process *p = c->a->p;
    bool head_only = strcmp(method, "HEAD") == 0;
    if (!head_only && strcmp(method, "GET") != 0) {
        answer(c, false, 405, "Method Not Allowed", "text/plain", "GET or HEAD\n", 12);
        return;
    }
#define IS(lit) (plen == sizeof lit - 1 && memcmp(path, lit, plen) == 0)
    if (IS("/healthz")) {
        /* This loop answers; and every worker's loop must turn too (a
         * script stuck in a loop with no CPU budget hangs its clients). */
        double age = 0;
        int stuck = metrics_stalled_worker(METRICS_STALL_S + p->cfg->lua_cpu_ms / 1000.0, &age);
        if (stuck >= 0) {
            char why[96];
            int n = snprintf(why, sizeof why, "worker %d stalled for %.0f s\n", stuck, age);
            answer(c, head_only, 503, "Service Unavailable", "text/plain", why,
                   n > 0 && (size_t)n < sizeof why ? (size_t)n : strlen(why));
        } else {
            answer(c, head_only, 200, "OK", "text/plain", "ok\n", 3);
        }
    } else if (IS("/readyz")) {
        const char *why = p->draining ? "draining\n"
                          : p->nready < p->nworkers ? "loading apps\n"
                          : !cluster_ready(p) ? "cluster not reachable\n" : NULL;
        if (why)
            answer(c, head_only, 503, "Service Unavailable", "text/plain", why, strlen(why));
        else
            answer(c, head_only, 200, "OK", "text/plain", "ready\n", 6);
    } else if (IS("/metrics")) {
        struct buf body = { 0 };
        metrics_render(p, &body);
        if (body.failed)
            answer(c, head_only, 500, "Internal Server Error", "text/plain", "out of memory\n", 14);
        else
            answer(c, head_only, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                   body.data, body.len);
        buf_free(&body);
    } else if (IS("/status") || IS("/status/")) {
        answer(c, head_only, 200, "OK", "text/html; charset=utf-8", status_page_html,
               strlen(status_page_html));
    } else if (IS("/status/events")) {
        buf_puts(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 "Cache-Control: no-store\r\nConnection: close\r\n\r\nretry: 2000\n\n");
        if (head_only) {
            c->close_after = true;
            return;
        }
        c->sse = true;
        status_event(c);   /* figures at once, then every second */
    } else {
        answer(c, head_only, 404, "Not Found", "text/plain", "404 Not Found\n", 14);
    }
#undef IS
}

/* The request line of a whole head: "GET /path?query HTTP/1.1". */
static void parse_and_route(struct admin_client *c)
{
    char *eol = memchr(c->in, '\n', c->in_len);
    char *sp1 = eol ? memchr(c->in, ' ', (size_t)(eol - c->in)) : NULL;
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp2 || sp1 - c->in > 8 || sp1[1] != '/') {
        answer(c, false, 400, "Bad Request", "text/plain", "bad request\n", 12);
        return;
    }
    char method[9];
    memcpy(method, c->in, (size_t)(sp1 - c->in));
    method[sp1 - c->in] = '\0';
    const char *path = sp1 + 1;
    size_t plen = (size_t)(sp2 - path);
    const char *q = memchr(path, '?', plen);
    if (q)
        plen = (size_t)(q - path);
    route(c, method, path, plen);
}

static bool head_complete(const struct admin_client *c)
{
    for (size_t i = 3; i < c->in_len; i++)   /* bounded by ADMIN_MAX_REQUEST */
        if (c->in[i] == '\n' && (c->in[i - 1] == '\n' ||
                                 (c->in[i - 1] == '\r' && c->in[i - 2] == '\n')))
            return true;
    return c->in_len >= 2 && c->in[c->in_len - 1] == '\n' && c->in[c->in_len - 2] == '\n';
}

static void on_client(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct admin_client *c = io->data;
    if (revents & EV_WRITE) {
        client_write(c);
        return;
    }
    if (c->sse || c->close_after) {   /* a follower or an answered client: until it leaves */
        char sink[256];
        ssize_t n = read(c->fd, sink, sizeof sink);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            client_free(c);
        return;
    }
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        client_free(c);
        return;
    }
    c->in_len += (size_t)n;
    if (head_complete(c)) {
        parse_and_route(c);
        client_write(c);
    } else if (c->in_len == sizeof c->in) {
        answer(c, false, 431, "Request Header Fields Too Large", "text/plain", "too large\n", 10);
        client_write(c);
    }
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    struct admin *a = io->data;
    for (int i = 0; i < 16; i++) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                log_warn("admin accept: %s", strerror(errno));
            return;
        }
        struct admin_client *c = a->nclients < ADMIN_MAX_CLIENTS ? calloc(1, sizeof *c) : NULL;
        if (!c) {
            if (close(fd) < 0)
                log_debug("admin close: %s", strerror(errno));
            continue;
        }
        c->a = a;
        c->fd = fd;
        c->since = ev_now(loop);
        ev_io_init(&c->io, on_client, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        LIST_INSERT_HEAD(&a->clients, c, link);
        a->nclients++;
    }
}

/* Once a second: the status figures to every follower; requests that
 * never came whole are dropped. */
static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct admin *a = t->data;
    struct admin_client *c = LIST_FIRST(&a->clients), *next;
    for (; c; c = next) {
        next = LIST_NEXT(c, link);
        if (c->sse) {
            if (c->out.len - c->out_off > ADMIN_MAX_BACKLOG) {
                client_free(c);
                continue;
            }
            bool idle = c->out.len == 0;
            status_event(c);
            if (idle)
                client_write(c);
        } else if (ev_now(loop) - c->since > ADMIN_IDLE_SECONDS) {
            client_free(c);
        }
    }
}

struct admin *admin_start(struct process *p, const char *spec)
{
    int fd = process_listen_socket(spec, 64, false, "--admin-listen");
    if (fd < 0)
        return NULL;
    struct admin *a = calloc(1, sizeof *a);
    if (!a) {
        if (close(fd) < 0)
            log_warn("close: %s", strerror(errno));
        return NULL;
    }
    a->p = p;
    a->loop = p->loop;
    a->fd = fd;
    LIST_INIT(&a->clients);
    ev_io_init(&a->listener, on_accept, fd, EV_READ);
    a->listener.data = a;
    ev_io_start(a->loop, &a->listener);
    ev_timer_init(&a->tick, on_tick, 1.0, 1.0);
    a->tick.data = a;
    ev_timer_start(a->loop, &a->tick);
    char addr[80];
    process_bound_address(fd, addr, sizeof addr);
    log_info("admin endpoints at %s", addr);
    return a;
}

void admin_free(struct admin *a)
{
    if (!a)
        return;
    while (!LIST_EMPTY(&a->clients))
        client_free(LIST_FIRST(&a->clients));
    ev_io_stop(a->loop, &a->listener);
    ev_timer_stop(a->loop, &a->tick);
    if (close(a->fd) < 0)
        log_warn("close admin listener: %s", strerror(errno));
    free(a);
}
