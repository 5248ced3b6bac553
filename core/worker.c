#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "clock.h"
#include "conn.h"
#include "log.h"
#include "lua_api.h"
#include "luavm.h"
#include "reload.h"

/* How long one flush slice may write before the loop looks for input. */
#define FLUSH_SLICE_SECONDS 0.00025

#define SLOT_BITS 24
#define SLOT_MASK ((1u << SLOT_BITS) - 1)
#define GEN_MASK ((1u << 28) - 1)

static void on_deadline(struct deadline *d, void *ctx)
{
    (void)ctx;
    struct conn *c = (struct conn *)((char *)d - offsetof(struct conn, timeout));
    conn_timed_out(c);
}

static void on_stall(struct deadline *d, void *ctx)
{
    (void)ctx;
    conn_stalled((struct conn *)((char *)d - offsetof(struct conn, stall)));
}

/* ---- connection slots ------------------------------------------------- */

bool worker_register_conn(struct worker *w, struct conn *c)
{
    if (w->nfree == 0) {
        uint32_t n = w->nslots ? w->nslots * 2 : 1024;
        if (n > SLOT_MASK)
            return false;
        struct conn **slots = realloc(w->slots, sizeof *slots * n);
        if (!slots)
            return false;
        w->slots = slots;
        uint32_t *gen = realloc(w->slot_gen, sizeof *gen * n);
        if (!gen)
            return false;
        w->slot_gen = gen;
        uint32_t *fr = realloc(w->free_slots, sizeof *fr * n);
        if (!fr)
            return false;
        w->free_slots = fr;
        for (uint32_t i = n; i > w->nslots; i--) {
            w->slots[i - 1] = NULL;
            w->slot_gen[i - 1] = 0;
            w->free_slots[w->nfree++] = i - 1;
        }
        w->nslots = n;
    }
    c->slot = w->free_slots[--w->nfree];
    w->slots[c->slot] = c;
    w->nconns++;
    return true;
}

void worker_conn_released(struct worker *w, struct conn *c)
{
    w->slots[c->slot] = NULL;
    /* A new generation makes handles Lua still holds to this slot stale. */
    w->slot_gen[c->slot] = (w->slot_gen[c->slot] + 1) & GEN_MASK;
    w->free_slots[w->nfree++] = c->slot;
    w->nconns--;
}

double worker_handle(const struct worker *w, const struct conn *c)
{
    return (double)w->slot_gen[c->slot] * (double)(1u << SLOT_BITS) + c->slot;
}

struct conn *worker_conn(struct worker *w, double handle)
{
    if (handle < 0 || handle > 9007199254740991.0)
        return NULL;
    uint64_t h = (uint64_t)handle;
    uint32_t slot = (uint32_t)(h & SLOT_MASK);
    uint32_t gen = (uint32_t)(h >> SLOT_BITS);
    if (slot >= w->nslots || w->slot_gen[slot] != gen)
        return NULL;
    return w->slots[slot];
}

/* ---- accepting -------------------------------------------------------- */

static void refuse_busy(struct worker *w, int fd)
{
    static const char busy[] =
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 28\r\n"
        "Connection: close\r\n\r\n"
        "503 too many connections\r\n\r\n";
    w->stats.refused_busy++;
    /* Best effort: a fresh socket buffer takes these bytes whole. */
    if (write(fd, busy, sizeof busy - 1) < 0)
        log_debug("503 write: %s", strerror(errno));
    /* Deferred accept means the request is already here; closing with it
     * unread would send a reset, and some clients drop the 503 on a reset. */
    char discard[4096];
    while (recv(fd, discard, sizeof discard, MSG_DONTWAIT) == (ssize_t)sizeof discard)
        continue;
    if (close(fd) < 0)
        log_debug("close: %s", strerror(errno));
}

/* Out of descriptors: free the spare, accept and drop one client so it
 * is not left retrying against a listener that stays readable. */
static void shed_one(struct worker *w)
{
    if (w->spare_fd < 0)
        return;
    if (close(w->spare_fd) < 0)
        log_debug("close: %s", strerror(errno));
    int fd = accept(w->listen_fd, NULL, NULL);
    if (fd >= 0 && close(fd) < 0)
        log_debug("close: %s", strerror(errno));
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    log_warn("out of file descriptors: dropped a new connection");
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = io->data;
    /* Bounded, so a connect storm cannot starve established clients. */
    for (int i = 0; i < 256; i++) {
        struct sockaddr_in6 peer;
        socklen_t plen = sizeof peer;
        int fd = accept4(w->listen_fd, (struct sockaddr *)&peer, &plen,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                shed_one(w);
                return;
            }
            log_warn("accept: %s", strerror(errno));
            return;
        }
        w->stats.accepted++;
        if (w->nconns >= (uint32_t)w->cfg->max_conns || w->stopping) {
            refuse_busy(w, fd);
            continue;
        }
        conn_accept(w, fd, (struct sockaddr *)&peer);
    }
}

static int listen_on(const char *spec, int backlog)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof host) {
        log_error("--listen wants HOST:PORT, got \"%s\"", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {   /* [::1]:8080 */
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res;
    int rc = getaddrinfo(h, colon + 1, &hints, &res);
    if (rc != 0) {
        log_error("--listen %s: %s", spec, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    /* Accepted sockets inherit TCP_NODELAY from the listener (Linux): one
     * system call here instead of one per connection. */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        log_error("cannot listen on %s: %s", spec, strerror(errno));
        if (fd >= 0 && close(fd) < 0)
            log_warn("close: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    /* Accept once the first bytes are in (or after ~1 s of silence): the
     * request is then ready to read, and a connect that says nothing costs
     * no slot, timer or wake-up meanwhile. An optimisation only. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one) < 0)
        log_warn("TCP_DEFER_ACCEPT: %s", strerror(errno));
    return fd;
}

/* The address really bound: with port 0 the kernel picks one, and tests
 * read it from this log line. */
static const char *bound_address(int fd)
{
    static char text[80];
    struct sockaddr_in6 sa;
    socklen_t len = sizeof sa;
    char host[INET6_ADDRSTRLEN] = "?";
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return "?";
    if (sa.sin6_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(text, sizeof text, "%s:%u", host, ntohs(in->sin_port));
    } else {
        inet_ntop(AF_INET6, &sa.sin6_addr, host, sizeof host);
        snprintf(text, sizeof text, "[%s]:%u", host, ntohs(sa.sin6_port));
    }
    return text;
}

/* ---- the loop --------------------------------------------------------- */

/* Keeps the loop from sleeping while output is still queued. */
static void on_flush_pending(struct ev_loop *loop, ev_idle *idle, int revents)
{
    (void)loop;
    (void)idle;
    (void)revents;
}

/* Writes queued output, one writev per connection, in time slices: a
 * fan-out to thousands of sockets takes milliseconds, and a publisher
 * (or any request) arriving meanwhile is read and answered between
 * slices instead of waiting for the whole pass. A connection already in
 * the queue picks up new events in the write it is waiting for. */
static void on_flush(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)revents;
    struct worker *w = p->data;
    double deadline = clock_mono() + FLUSH_SLICE_SECONDS;
    struct conn *c;
    int n = 0;
    while ((c = TAILQ_FIRST(&w->flush_queue))) {
        TAILQ_REMOVE(&w->flush_queue, c, flush_link);
        conn_on_flush(c);
        if (++n % 16 == 0 && clock_mono() > deadline)
            break;
    }
    if (TAILQ_EMPTY(&w->flush_queue))
        ev_idle_stop(loop, &w->flush_pending);
    else
        ev_idle_start(loop, &w->flush_pending);
    if (w->stopping && w->nconns == 0)
        ev_break(w->loop, EVBREAK_ALL);
}

static void on_shutdown_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    (void)t;
    log_warn("shutdown grace period over; closing remaining connections");
    ev_break(loop, EVBREAK_ALL);
}

void worker_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    log_info("shutting down: %u connections to close", w->nconns);
    ev_io_stop(w->loop, &w->listener);
    lua_api_stop_timers(w->vm);
    reloader_stop(w->reloader);
    /* Close every connection cleanly: streams get a reconnect hint and
     * the terminating chunk, idle keep-alive connections just close. */
    for (uint32_t i = 0; i < w->nslots; i++) {
        struct conn *c = w->slots[i];
        if (!c)
            continue;
        if (c->state == CONN_STREAMING)
            stream_goodbye(&c->st, w->cfg->retry_ms);
        else if (c->state == CONN_READING && !(c->parser && c->parser->started))
            conn_abort(c);
    }
    ev_timer_init(&w->shutdown_timer, on_shutdown_timeout, w->cfg->shutdown_grace, 0);
    ev_timer_start(w->loop, &w->shutdown_timer);
    ev_feed_event(w->loop, &w->flusher, EV_PREPARE);
}

static void on_signal(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = s->data;
    if (s->signum == SIGHUP) {
        log_info("SIGHUP: reloading apps");
        if (w->reloader)
            reloader_reload(w->reloader);   /* also re-resolves a linked --apps */
        else
            lua_api_reload(w->vm);
        return;
    }
    worker_stop(w);
}

int worker_init(struct worker *w, const struct config *cfg)
{
    memset(w, 0, sizeof *w);
    w->cfg = cfg;
    w->listen_fd = w->spare_fd = -1;
    w->limits = (struct http_limits){ cfg->max_head, cfg->max_headers, cfg->max_body };
    w->loop = ev_default_loop(EVFLAG_AUTO);
    if (!w->loop) {
        log_error("cannot create the event loop");
        return -1;
    }
    TAILQ_INIT(&w->flush_queue);
    deadline_list_init(&w->header_timeouts, w->loop, cfg->header_timeout, on_deadline, w);
    deadline_list_init(&w->keepalive_timeouts, w->loop, cfg->keepalive_timeout, on_deadline, w);
    deadline_list_init(&w->send_timeouts, w->loop, cfg->send_timeout, on_stall, w);

    w->streams = (struct stream_env){ .loop = w->loop, .max_queued = cfg->max_queued,
                                      .describe_subs = channels_describe_stream };
    w->channels = channels_new(w->loop, cfg->history_len, cfg->history_ttl, cfg->history_bytes);
    w->vm = luavm_new(w, cfg->lua_dir, cfg->lua_mem, cfg->lua_cpu_ms);
    if (!w->channels || !w->vm) {
        log_error("out of memory starting the worker");
        return -1;
    }
    int problems = lua_api_start(w->vm, cfg->apps_dir, false);
    if (problems < 0)
        return -1;
    if (problems > 0)
        log_warn("%d problem(s) loading apps; serving the rest", problems);

    w->listen_fd = listen_on(cfg->listen, cfg->backlog);
    if (w->listen_fd < 0)
        return -1;
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (w->spare_fd < 0)
        log_warn("cannot reserve a spare descriptor: %s", strerror(errno));
    ev_io_init(&w->listener, on_accept, w->listen_fd, EV_READ);
    w->listener.data = w;
    ev_io_start(w->loop, &w->listener);
    ev_prepare_init(&w->flusher, on_flush);
    w->flusher.data = w;
    ev_prepare_start(w->loop, &w->flusher);
    ev_idle_init(&w->flush_pending, on_flush_pending);

    ev_signal_init(&w->sig_int, on_signal, SIGINT);
    ev_signal_init(&w->sig_term, on_signal, SIGTERM);
    ev_signal_init(&w->sig_hup, on_signal, SIGHUP);
    w->sig_int.data = w->sig_term.data = w->sig_hup.data = w;
    ev_signal_start(w->loop, &w->sig_int);
    ev_signal_start(w->loop, &w->sig_term);
    ev_signal_start(w->loop, &w->sig_hup);

    if (cfg->watch)
        w->reloader = reloader_new(w, cfg->apps_dir, cfg->reload_debounce);
    log_info("sluice listening on %s, apps from %s", bound_address(w->listen_fd),
             cfg->apps_dir);
    return 0;
}

int worker_run(struct worker *w)
{
    ev_run(w->loop, 0);
    return 0;
}

void worker_free(struct worker *w)
{
    for (uint32_t i = 0; i < w->nslots; i++)
        if (w->slots[i])
            conn_free(w->slots[i]);
    if (w->vm)
        lua_api_stop_timers(w->vm);
    reloader_free(w->reloader);
    luavm_free(w->vm);
    channels_free(w->channels);
    deadline_list_stop(&w->header_timeouts);
    deadline_list_stop(&w->keepalive_timeouts);
    deadline_list_stop(&w->send_timeouts);
    if (w->listen_fd >= 0 && close(w->listen_fd) < 0)
        log_warn("close listener: %s", strerror(errno));
    if (w->spare_fd >= 0 && close(w->spare_fd) < 0)
        log_warn("close: %s", strerror(errno));
    free(w->slots);
    free(w->slot_gen);
    free(w->free_slots);
    if (w->loop)
        ev_loop_destroy(w->loop);
}
