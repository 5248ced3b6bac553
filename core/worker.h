/* One thread, one event loop (ev_loop_new), one Lua state and the
 * connections it accepted: everything a worker owns. Nothing in here is
 * shared with another worker or the process, except the mailbox through
 * which the process tells it what to do (core/process.h). */
#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "config.h"
#include "deadline.h"
#include "buf.h"
#include "http.h"
#include "mailbox.h"
#include "stream.h"

struct conn;
struct luavm;
struct channels;
struct process;

/* Written by the worker only, read by any (sluice.stats() in another
 * worker): counter.h's relaxed atomics. */
struct worker_stats {
    uint64_t accepted;
    uint64_t refused_busy;     /* over --max-conns: 503 */
    uint64_t requests;
    uint64_t streams_opened;
    uint64_t lua_errors;
    uint64_t delivered;        /* times an event was queued on a stream */
    uint64_t admin_disconnected;   /* streams ended by sluice.disconnect */
    uint64_t shed_streams;     /* new streams refused 503: --max-streams */
    uint64_t shed_queued;      /* new streams refused 503: --shed-queued-bytes */
    uint64_t queued_bytes;     /* output queued on its connections, sampled
                                  every QUEUED_SAMPLE_S with --shed-queued-bytes */
    uint32_t connections;      /* open now (a copy of nconns) */
    uint32_t streams;          /* streams open now */
};

/* How often a worker sums its queued output (--shed-queued-bytes only):
 * a walk over its connections, kept off the per-event path. */
#define QUEUED_SAMPLE_S 0.25

struct worker {
    struct ev_loop *loop;      /* this worker's own: ev_loop_new */
    const struct config *cfg;
    struct http_limits limits;
    struct process *proc;
    unsigned id;
    pthread_t thread;
    bool thread_started;
    bool failed;               /* could not start: set before it exits */
    bool drain_asked;          /* a script asked the process to drain */
    struct mailbox inbox;      /* commands from the process */

    int listen_fd;             /* the process's (or its own with SO_REUSEPORT) */
    bool own_listen_fd;        /* closed with the worker */
    /* Open connections of the whole process, for --max-conns (NULL in the
     * test kit's core: its own count). */
    uint32_t *open_conns;
    int spare_fd;              /* given up on EMFILE to shed one client */
    ev_io listener;
    ev_prepare flusher;        /* writes queued output, a slice per loop turn */
    ev_idle flush_pending;     /* active while output remains queued */
    ev_timer shutdown_timer;
    ev_timer queued_sampler;   /* --shed-queued-bytes: sums queued output */
    ev_timer heartbeat;        /* says the loop turns, for /healthz (metrics.h) */

    TAILQ_HEAD(, conn) flush_queue;

    /* Connections by slot, so Lua holds numbers, never pointers. */
    struct conn **slots;
    uint32_t *slot_gen;
    uint32_t *free_slots;
    uint32_t nslots, nfree, nconns;

    struct deadline_list header_timeouts;
    struct deadline_list keepalive_timeouts;
    struct deadline_list send_timeouts;

    struct luavm *vm;
    struct channels *channels;
    const struct conn_handler *handler;   /* what the transport hands requests to */
    struct buf busy_answer;    /* the 503 past --max-conns, built once */

    struct worker_stats stats;   /* and streams', and channels' own counts */
    struct stream_env streams;
    int stopping;
    char readbuf[65536];
};

/* What the process tells a worker (struct mailbox_msg.cmd). */
enum worker_cmd {
    WORKER_RELOAD,   /* reload changed app scripts (lua_api_reload) */
    WORKER_DRAIN,    /* stop accepting, say goodbye to streams, end the loop
                        once the connections are gone or --shutdown-grace */
    WORKER_DISCONNECT,   /* end these streams (arg: struct disconnect_batch,
                            core/disconnect.h; freed by the worker) */
};

/* Any thread: posts a command to worker wid, if it is running (between
 * the end of its setup and the start of its teardown, under a lock that
 * keeps it from being joined meanwhile). 0, or -1: not posted (the
 * caller still owns arg). For commands one worker sends the others. */
int worker_post_peer(unsigned wid, enum worker_cmd cmd, void *arg);

/* The process's thread, for each of N workers in turn: creates the
 * worker's loop and mailbox, then its thread, which creates the Lua state
 * (the CPU budget's timer aims at the thread that creates it), loads the
 * apps, watches listen_fd, tells process_worker_ready and runs the loop.
 * Whether it started or not, the thread ends by freeing what it made and
 * telling process_worker_exited. -1 if the thread could not be created. */
int worker_start(struct worker *w, struct process *proc, unsigned id,
                 const struct config *cfg, int listen_fd, bool own_listen_fd);

/* The process's thread: posts a command to the worker's mailbox (the post
 * itself is thread-safe; that the worker is not being joined meanwhile is
 * what needs the process's thread). A joined worker is skipped. */
void worker_tell(struct worker *w, enum worker_cmd cmd);

/* The process's thread, after process_worker_exited: waits for the thread
 * to return, then frees the loop and mailbox. 0, or -1 (logged). */
int worker_join(struct worker *w);

/* Lua-visible handles: slot and generation packed into one exact double. */
bool worker_register_conn(struct worker *w, struct conn *c);
void worker_conn_released(struct worker *w, struct conn *c);
double worker_handle(const struct worker *w, const struct conn *c);
struct conn *worker_conn(struct worker *w, double handle);

/* The worker's thread (os.exit in a script): asks the process to drain
 * every worker, as SIGTERM does; the process then exits 0. */
void worker_request_drain(struct worker *w);

#endif
