/* Built-in metrics: histograms, per-route and per-variant counts, closes by
 * reason, resumes, reloads, script errors. Each worker writes only its own
 * struct worker_metrics (counter.h's relaxed single-writer atomics); the
 * admin listener (core/admin.c, on the process's main loop) sums them at
 * scrape time and renders the Prometheus text format, never touching a
 * worker's Lua state. Labels are bounded: route patterns the apps declare
 * (at most METRICS_MAX_ROUTES, then "other") and their variants (at most
 * METRICS_MAX_KEYS pairs), never a user, tenant or channel. */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "counter.h"
#include "stream.h"

struct buf;
struct config;
struct process;
struct worker;

/* ---- histograms: fixed buckets, counts per bucket (not cumulative:
 * one store per observation), summed and made cumulative when rendered --- */

#define HIST_BUCKETS 16

struct hist {
    uint64_t counts[HIST_BUCKETS + 1];   /* the last one: above every bound */
    uint64_t sum_us;                     /* microseconds, exact in an integer */
};

/* Bucket upper bounds in microseconds (Prometheus "le", in seconds); in
 * the header so outbuf.c needs nothing else of metrics.c (unit tests). */

/* 100 us .. 10 s: a write handed to the kernel within the loop turn that
 * queued it takes well under a millisecond; a backed-up loop, seconds. */
static const uint64_t metrics_latency_bounds_us[HIST_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
    500000, 1000000, 2500000, 5000000, 10000000,
};

/* 1 s .. 1 day: reconnect storms show up left, long-lived streams right. */
static const uint64_t metrics_lifetime_bounds_us[HIST_BUCKETS] = {
    1000000ull, 5000000ull, 10000000ull, 30000000ull, 60000000ull, 120000000ull,
    300000000ull, 600000000ull, 1200000000ull, 1800000000ull, 3600000000ull,
    7200000000ull, 14400000000ull, 28800000000ull, 43200000000ull, 86400000000ull,
};

static inline void hist_observe_us(struct hist *h, const uint64_t *bounds, uint64_t us)
{
    unsigned i = 0;
    while (i < HIST_BUCKETS && us > bounds[i])
        i++;
    counter_add(&h->counts[i], 1);
    counter_add(&h->sum_us, us);
}

/* ---- what a connection's output queue touches (outbuf.h) --------------- */

struct out_meter {
    int64_t queued_bytes;   /* queued on this worker's connections now */
    struct hist latency;    /* publish-to-written */
    bool histograms;        /* --no-histograms turns them off */
};

/* Microseconds of the monotonic clock, modulo 2^32 (wraps every 71
 * minutes; differences stay right below that), never 0: 0 means "not
 * stamped" on a frame. One stamp per event and worker, not per subscriber. */
static inline uint32_t metrics_stamp_now(void)
{
    uint32_t t = (uint32_t)(uint64_t)(clock_mono() * 1e6);
    return t ? t : 1;
}

static inline void meter_queued(struct out_meter *m, int64_t delta)
{
    if (m)
        __atomic_store_n(&m->queued_bytes,
                         __atomic_load_n(&m->queued_bytes, __ATOMIC_RELAXED) + delta,
                         __ATOMIC_RELAXED);
}

/* ---- per worker ------------------------------------------------------------ */

#define METRICS_MAX_ROUTES 64   /* 0: no route matched; the last: "other" */
#define METRICS_MAX_KEYS 128    /* (route, variant) pairs; 0: none, the last: other */
#define METRICS_END_REASONS (STREAM_END_SERVER_ERROR + 1)

struct worker_metrics {
    struct out_meter out;
    struct hist request[METRICS_MAX_ROUTES];   /* duration per route */
    struct hist lifetime;                      /* of streams */
    uint64_t requests[METRICS_MAX_KEYS];       /* answered or streamed, per key */
    int64_t streams[METRICS_MAX_KEYS];         /* open now, per key (this worker's
                                                  opens minus its closes) */
    uint64_t closes[METRICS_END_REASONS];
    uint64_t resumes_exact, resumes_reset;
    uint64_t lua_errors;                       /* script errors caught (core.run) */
    uint64_t budget_stops;                     /* calls stopped by --lua-cpu-budget */
    uint64_t reloads_ok, reloads_failed;       /* counted by worker 0 only */
    uint64_t heartbeat_ms;                     /* clock_mono() in ms when its loop last
                                                  turned; 0: not running */
};

/* The process, before any worker starts: one struct per worker. */
int metrics_init(unsigned nworkers, bool histograms);
void metrics_free(void);

/* Worker id's metrics; NULL when metrics_init was not called (the test
 * kit's in-process core). */
struct worker_metrics *metrics_worker(unsigned id);

/* The key of (route, variant) (either may be NULL), registering it on
 * first sight: 0 for no route, METRICS_MAX_KEYS - 1 once full. */
uint16_t metrics_key(const char *route, size_t route_len, const char *variant,
                     size_t variant_len);
uint16_t metrics_key_route(uint16_t key);   /* its route index */

/* Hooks (the worker's thread). */
void metrics_request_done(unsigned wid, uint16_t key, double seconds);
void metrics_stream_opened(unsigned wid, uint16_t key);
void metrics_stream_closed(unsigned wid, uint16_t key, enum stream_end why, double seconds);
void metrics_resume(unsigned wid, bool reset);
void metrics_script_error(unsigned wid, const char *msg, bool budget);
void metrics_reload(unsigned wid, int problems);

/* Liveness of the workers' loops: each worker's loop says it turned
 * every METRICS_HEARTBEAT_S (a timer, so an idle worker says so too);
 * /healthz answers 503 while a running worker has not for
 * METRICS_STALL_S plus the CPU budget (a script call may legitimately
 * hold its loop that long). */
#define METRICS_HEARTBEAT_S 1.0
#define METRICS_STALL_S 5.0
void metrics_heartbeat(unsigned wid, bool running);   /* the worker's thread */
/* The first running worker whose loop has not turned for more than stall
 * seconds (*age: for how long), or -1. Any thread. */
int metrics_stalled_worker(double stall, double *age);

/* A route's quota refused a request (core.quota_take): id is the
 * route's "METHOD pattern", verdict a quota.h enum quota_verdict other
 * than QUOTA_OK. Counted process-wide (refusals are rare next to
 * requests: one relaxed atomic add each), per (method, route) registered
 * like the routes (at most METRICS_MAX_ROUTES - 1, then "other"). */
void metrics_quota_refused(const char *id, size_t id_len, int verdict);

/* Why a new stream must be refused now: "streams" (--max-streams),
 * "queued_bytes" (--shed-queued-bytes) or NULL; from the n workers' own
 * counts (relaxed loads), so any thread may ask. */
const char *metrics_shed_reason(const struct config *cfg, struct worker *all, unsigned n);

/* A ring of recent reloads and script errors for the status page. */
struct metrics_note {
    double time;            /* wall clock */
    char kind[16];          /* "reload", "reload_failed", "script_error" */
    char text[160];
};
#define METRICS_NOTES 16
/* Copies the newest notes (oldest first) into out; how many. */
unsigned metrics_recent(struct metrics_note *out, unsigned max);

/* The whole process in the Prometheus text format (version 0.0.4). */
void metrics_render(struct process *p, struct buf *b);

/* The figures the status page follows, as one JSON object. */
void metrics_status_json(struct process *p, struct buf *b);

#endif
