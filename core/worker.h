/* One event loop, one Lua state and one listener: everything a worker owns.
 * Nothing in here is shared with another worker. */
#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "config.h"
#include "deadline.h"
#include "http.h"
#include "stream.h"

struct conn;
struct luavm;
struct channels;
struct reloader;

struct worker_stats {
    uint64_t accepted;
    uint64_t refused_busy;     /* over --max-conns: 503 */
    uint64_t requests;
    uint64_t streams_opened;
    uint64_t lua_errors;
};

struct worker {
    struct ev_loop *loop;
    const struct config *cfg;
    struct http_limits limits;

    int listen_fd;
    int spare_fd;              /* given up on EMFILE to shed one client */
    ev_io listener;
    ev_prepare flusher;        /* writes queued output, a slice per loop turn */
    ev_idle flush_pending;     /* active while output remains queued */
    ev_signal sig_int, sig_term, sig_hup;
    ev_timer shutdown_timer;

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
    struct reloader *reloader;

    struct worker_stats stats;   /* and streams', and channels' own counts */
    struct stream_env streams;
    int stopping;
    char readbuf[65536];
};

int worker_init(struct worker *w, const struct config *cfg);
int worker_run(struct worker *w);
void worker_free(struct worker *w);

/* Lua-visible handles: slot and generation packed into one exact double. */
bool worker_register_conn(struct worker *w, struct conn *c);
void worker_conn_released(struct worker *w, struct conn *c);
double worker_handle(const struct worker *w, const struct conn *c);
struct conn *worker_conn(struct worker *w, double handle);

void worker_stop(struct worker *w);

#endif
