#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "access_log.h"
#include "channel.h"
#include "clock.h"
#include "conn.h"
#include "counter.h"
#include "disconnect.h"
#include "dispatch.h"
#include "log.h"
#include "lua_api.h"
#include "luavm.h"
#include "metrics.h"
#include "process.h"
#include "response.h"
#include "signals.h"

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
    gauge_set(&w->stats.connections, w->nconns);
    return true;
}

void worker_conn_released(struct worker *w, struct conn *c)
{
    w->slots[c->slot] = NULL;
    /* A new generation makes handles Lua still holds to this slot stale. */
    w->slot_gen[c->slot] = (w->slot_gen[c->slot] + 1) & GEN_MASK;
    w->free_slots[w->nfree++] = c->slot;
    w->nconns--;
    gauge_set(&w->stats.connections, w->nconns);
    if (w->open_conns)
        __atomic_sub_fetch(w->open_conns, 1, __ATOMIC_RELAXED);
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
    counter_add(&w->stats.refused_busy, 1);
    /* Best effort: a fresh socket buffer takes these bytes whole. */
    if (w->busy_answer.len && write(fd, w->busy_answer.data, w->busy_answer.len) < 0)
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
        counter_add(&w->stats.accepted, 1);
        /* --max-conns is for the whole process: a slot is reserved before
         * the connection exists, so workers accepting at once cannot pass
         * the limit together. */
        uint32_t open = __atomic_add_fetch(w->open_conns, 1, __ATOMIC_RELAXED);
        if (open > (uint32_t)w->cfg->max_conns || w->stopping) {
            __atomic_sub_fetch(w->open_conns, 1, __ATOMIC_RELAXED);
            refuse_busy(w, fd);
            continue;
        }
        uint32_t before = w->nconns;
        conn_accept(w, fd, (struct sockaddr *)&peer);
        if (w->nconns == before)   /* not accepted after all */
            __atomic_sub_fetch(w->open_conns, 1, __ATOMIC_RELAXED);
    }
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

/* WORKER_DRAIN, in the worker's thread. */
static void drain(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    log_info("shutting down: %u connections to close", w->nconns);
    ev_io_stop(w->loop, &w->listener);
    lua_api_stop_timers(w->vm);
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

void worker_request_drain(struct worker *w)
{
    if (w->drain_asked || w->stopping)
        return;
    w->drain_asked = true;
    process_request_drain(w->proc);
}

/* ---- workers telling each other --------------------------------------- */

/* The running workers by id: a worker is here from the end of its setup
 * to the start of its teardown, so one found here under the lock cannot
 * be joined (its mailbox freed) before the post is done. */
#define MAX_PEERS 1024
static pthread_mutex_t peers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct worker *peers[MAX_PEERS];

static void peer_set(struct worker *w, struct worker *to)
{
    if (w->id >= MAX_PEERS)
        return;
    pthread_mutex_lock(&peers_lock);
    peers[w->id] = to;
    pthread_mutex_unlock(&peers_lock);
}

int worker_post_peer(unsigned wid, enum worker_cmd cmd, void *arg)
{
    int rc = -1;
    pthread_mutex_lock(&peers_lock);
    if (wid < MAX_PEERS && peers[wid])
        rc = mailbox_post(&peers[wid]->inbox, (int)cmd, arg);
    pthread_mutex_unlock(&peers_lock);
    return rc;
}

void worker_tell(struct worker *w, enum worker_cmd cmd)
{
    if (!w->loop)   /* joined (or never started): nobody to tell */
        return;
    mailbox_post(&w->inbox, (int)cmd, NULL);
}

static void on_command(void *ctx, struct mailbox_msg msg)
{
    struct worker *w = ctx;
    switch ((enum worker_cmd)msg.cmd) {
    case WORKER_RELOAD:
        lua_api_reload(w->vm);
        break;
    case WORKER_DRAIN:
        drain(w);
        break;
    case WORKER_DISCONNECT:
        disconnect_apply(w, msg.arg);
        break;
    }
}

/* --shed-queued-bytes: what this worker's connections have queued, summed
 * every QUEUED_SAMPLE_S (read by any worker deciding whether to shed). */
static void on_queued_sample(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = t->data;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < w->nslots; i++)
        if (w->slots[i])
            sum += w->slots[i]->st.out.bytes;
    __atomic_store_n(&w->stats.queued_bytes, sum, __ATOMIC_RELAXED);
}

/* Once a second, even when idle: the loop turns (/healthz reads it). */
static void on_heartbeat(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    metrics_heartbeat(((struct worker *)t->data)->id, true);
}

/* In the worker's thread: everything that must belong to it. The Lua
 * state above all: the CPU budget's timer signals the thread that creates
 * it, and the current state is a thread-local. */
static int setup(struct worker *w)
{
    const struct config *cfg = w->cfg;
    TAILQ_INIT(&w->flush_queue);
    deadline_list_init(&w->header_timeouts, w->loop, cfg->header_timeout, on_deadline, w);
    deadline_list_init(&w->keepalive_timeouts, w->loop, cfg->keepalive_timeout, on_deadline, w);
    deadline_list_init(&w->send_timeouts, w->loop, cfg->send_timeout, on_stall, w);

    w->streams = (struct stream_env){ .loop = w->loop, .max_queued = cfg->max_queued,
                                      .describe_subs = channels_describe_stream };
    w->channels = channels_new_on(w->proc->bus, w->id, w->loop, &w->stats.delivered);
    w->handler = &worker_handler;
    size_t body_off;
    response_plain(&w->busy_answer, 503, "Retry-After: 5\r\n", false, &body_off);
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
    ev_timer_init(&w->queued_sampler, on_queued_sample, QUEUED_SAMPLE_S, QUEUED_SAMPLE_S);
    w->queued_sampler.data = w;
    if (cfg->shed_queued_bytes)
        ev_timer_start(w->loop, &w->queued_sampler);
    ev_timer_init(&w->heartbeat, on_heartbeat, METRICS_HEARTBEAT_S, METRICS_HEARTBEAT_S);
    w->heartbeat.data = w;
    ev_timer_start(w->loop, &w->heartbeat);
    metrics_heartbeat(w->id, true);
    peer_set(w, w);   /* others may post to it from now on */
    return 0;
}

/* In the worker's thread, whether setup finished or not. */
static void teardown(struct worker *w)
{
    peer_set(w, NULL);   /* before anything goes: see worker_post_peer */
    for (uint32_t i = 0; i < w->nslots; i++)
        if (w->slots[i])
            conn_free(w->slots[i]);
    access_log_thread_end();   /* the lines of those streams too */
    if (w->vm)
        lua_api_stop_timers(w->vm);
    luavm_free(w->vm);
    w->vm = NULL;
    channels_free(w->channels);
    w->channels = NULL;
    buf_free(&w->busy_answer);
    deadline_list_stop(&w->header_timeouts);
    deadline_list_stop(&w->keepalive_timeouts);
    deadline_list_stop(&w->send_timeouts);
    ev_io_stop(w->loop, &w->listener);
    ev_prepare_stop(w->loop, &w->flusher);
    ev_idle_stop(w->loop, &w->flush_pending);
    ev_timer_stop(w->loop, &w->shutdown_timer);
    ev_timer_stop(w->loop, &w->queued_sampler);
    ev_timer_stop(w->loop, &w->heartbeat);
    metrics_heartbeat(w->id, false);   /* gone: no longer a stalled loop */
    if (w->own_listen_fd && close(w->listen_fd) < 0)
        log_warn("close listener: %s", strerror(errno));
    w->own_listen_fd = false;
    if (w->spare_fd >= 0 && close(w->spare_fd) < 0)
        log_warn("close: %s", strerror(errno));
    w->spare_fd = -1;
    free(w->slots);
    free(w->slot_gen);
    free(w->free_slots);
    w->slots = NULL;
    w->slot_gen = w->free_slots = NULL;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    /* The process's signals go to the signal thread only; the CPU budget's
     * SIGVTALRM must reach this thread, whatever it inherited. */
    sigset_t vtalrm;
    sigemptyset(&vtalrm);
    sigaddset(&vtalrm, SIGVTALRM);
    int rc = pthread_sigmask(SIG_UNBLOCK, &vtalrm, NULL);
    if (rc != 0)
        log_warn("pthread_sigmask: %s", strerror(rc));
    if (signals_block() < 0)
        log_warn("worker %u: SIGTERM may reach it instead of the signal thread", w->id);
    if (setup(w) == 0) {
        process_worker_ready(w->proc, w);
        ev_run(w->loop, 0);
    } else {
        w->failed = true;
    }
    teardown(w);
    /* The last thing this thread does with w: the process may join now. */
    process_worker_exited(w->proc, w);
    return NULL;
}

int worker_start(struct worker *w, struct process *proc, unsigned id,
                 const struct config *cfg, int listen_fd, bool own_listen_fd)
{
    /* No memset: w was zeroed with the others before any worker started,
     * and a running worker may already read w->stats (sluice.stats()). */
    w->cfg = cfg;
    w->open_conns = &proc->open_conns;
    w->own_listen_fd = own_listen_fd;
    w->proc = proc;
    w->id = id;
    w->listen_fd = listen_fd;
    w->spare_fd = -1;
    w->limits = (struct http_limits){ cfg->max_head, cfg->max_headers, cfg->max_body };
    /* Created here and its mailbox started here, before the thread exists,
     * so that the process may post to it at once. */
    w->loop = ev_loop_new(EVFLAG_AUTO);
    if (!w->loop) {
        log_error("cannot create the event loop of worker %u", id);
        return -1;
    }
    if (mailbox_init(&w->inbox, w->loop, on_command, w) < 0) {
        log_error("out of memory starting worker %u", id);
        ev_loop_destroy(w->loop);
        w->loop = NULL;
        return -1;
    }
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0) {
        log_error("cannot start the thread of worker %u: %s", id, strerror(rc));
        mailbox_free(&w->inbox);
        ev_loop_destroy(w->loop);
        w->loop = NULL;
        return -1;
    }
    w->thread_started = true;
    /* Seen in top -H, ps -L and /proc/PID/task/TID/comm. */
    char name[16];
    snprintf(name, sizeof name, "worker %u", id);
    rc = pthread_setname_np(w->thread, name);
    if (rc != 0)
        log_debug("naming worker %u's thread: %s", id, strerror(rc));
    return 0;
}

int worker_join(struct worker *w)
{
    if (!w->thread_started)
        return 0;
    w->thread_started = false;
    int rc = pthread_join(w->thread, NULL);
    if (rc != 0) {
        log_error("joining worker %u: %s", w->id, strerror(rc));
        return -1;
    }
    mailbox_free(&w->inbox);
    ev_loop_destroy(w->loop);
    w->loop = NULL;
    return 0;
}
