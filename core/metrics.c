#include "metrics.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "access_log.h"
#include "buf.h"
#include "bus.h"
#include "config.h"
#include "process.h"
#include "quota.h"
#include "redis_bus.h"
#include "tags.h"
#include "worker.h"

/* ---- the registry of routes and (route, variant) pairs ------------------
 * Appended under a mutex, never changed after: a reader takes the count
 * with an acquire load and reads the entries below it without the lock. */

#define ROUTE_TEXT 128
#define VARIANT_TEXT 64

struct key_entry {
    char variant[VARIANT_TEXT];
    uint16_t route;
};

static struct {
    pthread_mutex_t lock;
    uint32_t nroutes;
    char routes[METRICS_MAX_ROUTES][ROUTE_TEXT];
    uint32_t nkeys;
    struct key_entry keys[METRICS_MAX_KEYS];
} reg = { .lock = PTHREAD_MUTEX_INITIALIZER };

static struct worker_metrics *per_worker;
static unsigned nper_worker;

/* The ring of recent notes, for the status page. */
static struct {
    pthread_mutex_t lock;
    struct metrics_note ring[METRICS_NOTES];
    uint64_t next;
} notes = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void init_registry(void)
{
    /* Index 0 of each: no route matched (404, 405, a 400 before routing). */
    strcpy(reg.routes[0], "none");
    strcpy(reg.routes[METRICS_MAX_ROUTES - 1], "other");
    strcpy(reg.keys[0].variant, "none");
    reg.keys[0].route = 0;
    strcpy(reg.keys[METRICS_MAX_KEYS - 1].variant, "other");
    reg.keys[METRICS_MAX_KEYS - 1].route = METRICS_MAX_ROUTES - 1;
    __atomic_store_n(&reg.nroutes, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&reg.nkeys, 1, __ATOMIC_RELEASE);
}

int metrics_init(unsigned nworkers, bool histograms)
{
    per_worker = calloc(nworkers, sizeof *per_worker);
    if (!per_worker)
        return -1;
    nper_worker = nworkers;
    for (unsigned i = 0; i < nworkers; i++)
        per_worker[i].out.histograms = histograms;
    init_registry();
    return 0;
}

void metrics_free(void)
{
    free(per_worker);
    per_worker = NULL;
    nper_worker = 0;
}

struct worker_metrics *metrics_worker(unsigned id)
{
    return per_worker && id < nper_worker ? &per_worker[id] : NULL;
}

static bool same(const char *stored, const char *s, size_t n)
{
    return strncmp(stored, s, n) == 0 && stored[n] == '\0';
}

static uint16_t find_route(const char *route, size_t n, uint32_t count)
{
    for (uint32_t i = 1; i < count; i++)
        if (same(reg.routes[i], route, n))
            return (uint16_t)i;
    return 0;
}

static uint16_t find_key(uint16_t route, const char *variant, size_t n, uint32_t count)
{
    for (uint32_t i = 1; i < count; i++)
        if (reg.keys[i].route == route && same(reg.keys[i].variant, variant, n))
            return (uint16_t)i;
    return 0;
}

uint16_t metrics_key(const char *route, size_t route_len, const char *variant,
                     size_t variant_len)
{
    if (!per_worker || !route)
        return 0;
    if (route_len >= ROUTE_TEXT)
        route_len = ROUTE_TEXT - 1;
    if (!variant) {
        variant = "none";
        variant_len = 4;
    }
    if (variant_len >= VARIANT_TEXT)
        variant_len = VARIANT_TEXT - 1;
    uint32_t nr = __atomic_load_n(&reg.nroutes, __ATOMIC_ACQUIRE);
    uint32_t nk = __atomic_load_n(&reg.nkeys, __ATOMIC_ACQUIRE);
    uint16_t r = find_route(route, route_len, nr);
    uint16_t k = r ? find_key(r, variant, variant_len, nk) : 0;
    if (k)
        return k;
    /* First sight: register under the lock (rare: once per route). */
    pthread_mutex_lock(&reg.lock);
    nr = reg.nroutes;
    r = find_route(route, route_len, nr);
    if (!r) {
        if (nr < METRICS_MAX_ROUTES - 1) {
            memcpy(reg.routes[nr], route, route_len);
            reg.routes[nr][route_len] = '\0';
            r = (uint16_t)nr;
            __atomic_store_n(&reg.nroutes, nr + 1, __ATOMIC_RELEASE);
        } else {
            r = METRICS_MAX_ROUTES - 1;
        }
    }
    nk = reg.nkeys;
    k = find_key(r, variant, variant_len, nk);
    if (!k) {
        if (nk < METRICS_MAX_KEYS - 1 && r != METRICS_MAX_ROUTES - 1) {
            memcpy(reg.keys[nk].variant, variant, variant_len);
            reg.keys[nk].variant[variant_len] = '\0';
            reg.keys[nk].route = r;
            k = (uint16_t)nk;
            __atomic_store_n(&reg.nkeys, nk + 1, __ATOMIC_RELEASE);
        } else {
            k = METRICS_MAX_KEYS - 1;
        }
    }
    pthread_mutex_unlock(&reg.lock);
    return k;
}

uint16_t metrics_key_route(uint16_t key)
{
    return key < METRICS_MAX_KEYS ? reg.keys[key].route : 0;
}

/* ---- quota refusals per (method, route) ---------------------------------
 * Registered like the routes (appended under the lock, read below the
 * count without it); the counts are process-wide atomics. Entry 0 is
 * "other" (past QUOTA_IDS entries). */

#define QUOTA_IDS METRICS_MAX_ROUTES
#define QUOTA_REASONS 3   /* QUOTA_STREAMS, QUOTA_RATE, QUOTA_FULL */

static struct {
    pthread_mutex_t lock;
    uint32_t n;
    char method[QUOTA_IDS][16];
    char route[QUOTA_IDS][ROUTE_TEXT];
    uint64_t refused[QUOTA_IDS][QUOTA_REASONS];
} qreg = { .lock = PTHREAD_MUTEX_INITIALIZER, .n = 1, .method = { "other" },
           .route = { "other" } };

static void copy_text(char *to, size_t size, const char *s, size_t n)
{
    if (n >= size)
        n = size - 1;
    memcpy(to, s, n);
    to[n] = '\0';
}

static uint32_t find_quota_id(const char *m, size_t mlen, const char *r, size_t rlen,
                              uint32_t count)
{
    if (mlen >= sizeof qreg.method[0])
        mlen = sizeof qreg.method[0] - 1;
    if (rlen >= ROUTE_TEXT)
        rlen = ROUTE_TEXT - 1;
    for (uint32_t i = 1; i < count; i++)
        if (same(qreg.method[i], m, mlen) && same(qreg.route[i], r, rlen))
            return i;
    return 0;
}

void metrics_quota_refused(const char *id, size_t id_len, int verdict)
{
    if (verdict < QUOTA_STREAMS || verdict > QUOTA_FULL)
        return;
    /* "METHOD pattern": the method is everything before the first space. */
    const char *space = memchr(id, ' ', id_len);
    size_t mlen = space ? (size_t)(space - id) : 0;
    const char *route = space ? space + 1 : id;
    size_t rlen = id_len - (size_t)(route - id);
    uint32_t i = find_quota_id(id, mlen, route, rlen, __atomic_load_n(&qreg.n, __ATOMIC_ACQUIRE));
    if (!i) {
        pthread_mutex_lock(&qreg.lock);
        uint32_t n = qreg.n;
        i = find_quota_id(id, mlen, route, rlen, n);
        if (!i && n < QUOTA_IDS) {
            copy_text(qreg.method[n], sizeof qreg.method[n], id, mlen);
            copy_text(qreg.route[n], sizeof qreg.route[n], route, rlen);
            i = n;
            __atomic_store_n(&qreg.n, n + 1, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&qreg.lock);
    }
    __atomic_fetch_add(&qreg.refused[i][verdict - QUOTA_STREAMS], 1, __ATOMIC_RELAXED);
}

/* ---- liveness of the workers' loops --------------------------------------- */

void metrics_heartbeat(unsigned wid, bool running)
{
    struct worker_metrics *m = metrics_worker(wid);
    if (m) {
        uint64_t ms = (uint64_t)(clock_mono() * 1000.0);
        __atomic_store_n(&m->heartbeat_ms, running ? (ms ? ms : 1) : 0, __ATOMIC_RELAXED);
    }
}

int metrics_stalled_worker(double stall, double *age)
{
    double now_ms = clock_mono() * 1000.0;
    for (unsigned i = 0; i < nper_worker; i++) {
        uint64_t beat = __atomic_load_n(&per_worker[i].heartbeat_ms, __ATOMIC_RELAXED);
        if (beat && now_ms - (double)beat > stall * 1000.0) {
            *age = (now_ms - (double)beat) / 1000.0;
            return (int)i;
        }
    }
    return -1;
}

/* ---- load shedding --------------------------------------------------------- */

const char *metrics_shed_reason(const struct config *cfg, struct worker *all, unsigned n)
{
    if (!cfg->max_streams && !cfg->shed_queued_bytes)
        return NULL;
    uint64_t streams = 0, queued = 0;
    for (unsigned i = 0; i < n; i++) {
        streams += gauge_get(&all[i].stats.streams);
        queued += counter_get(&all[i].stats.queued_bytes);
    }
    if (cfg->max_streams && streams >= cfg->max_streams)
        return "streams";
    if (cfg->shed_queued_bytes && queued >= cfg->shed_queued_bytes)
        return "queued_bytes";
    return NULL;
}

/* ---- hooks -------------------------------------------------------------- */

static uint64_t to_us(double seconds)
{
    return seconds > 0 ? (uint64_t)(seconds * 1e6) : 0;
}

void metrics_request_done(unsigned wid, uint16_t key, double seconds)
{
    struct worker_metrics *m = metrics_worker(wid);
    if (!m || key >= METRICS_MAX_KEYS)
        return;
    counter_add(&m->requests[key], 1);
    if (m->out.histograms)
        hist_observe_us(&m->request[reg.keys[key].route], metrics_latency_bounds_us,
                        to_us(seconds));
}

void metrics_stream_opened(unsigned wid, uint16_t key)
{
    struct worker_metrics *m = metrics_worker(wid);
    if (!m || key >= METRICS_MAX_KEYS)
        return;
    counter_add(&m->requests[key], 1);
    __atomic_store_n(&m->streams[key], __atomic_load_n(&m->streams[key], __ATOMIC_RELAXED) + 1,
                     __ATOMIC_RELAXED);
}

void metrics_stream_closed(unsigned wid, uint16_t key, enum stream_end why, double seconds)
{
    struct worker_metrics *m = metrics_worker(wid);
    if (!m || key >= METRICS_MAX_KEYS)
        return;
    __atomic_store_n(&m->streams[key], __atomic_load_n(&m->streams[key], __ATOMIC_RELAXED) - 1,
                     __ATOMIC_RELAXED);
    counter_add(&m->closes[(unsigned)why < METRICS_END_REASONS ? why : STREAM_END_UNKNOWN], 1);
    if (m->out.histograms)
        hist_observe_us(&m->lifetime, metrics_lifetime_bounds_us, to_us(seconds));
}

void metrics_resume(unsigned wid, bool reset)
{
    struct worker_metrics *m = metrics_worker(wid);
    if (m)
        counter_add(reset ? &m->resumes_reset : &m->resumes_exact, 1);
}

static void note(const char *kind, const char *text)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    pthread_mutex_lock(&notes.lock);
    struct metrics_note *n = &notes.ring[notes.next++ % METRICS_NOTES];
    n->time = (double)tv.tv_sec + tv.tv_usec * 1e-6;
    snprintf(n->kind, sizeof n->kind, "%s", kind);
    /* The first line: where and what, without the traceback. */
    size_t len = strcspn(text, "\n");
    if (len >= sizeof n->text)
        len = sizeof n->text - 1;
    memcpy(n->text, text, len);
    n->text[len] = '\0';
    pthread_mutex_unlock(&notes.lock);
}

void metrics_script_error(unsigned wid, const char *msg, bool budget)
{
    struct worker_metrics *m = metrics_worker(wid);
    if (!m)
        return;
    counter_add(&m->lua_errors, 1);
    if (budget)
        counter_add(&m->budget_stops, 1);
    note("script_error", msg ? msg : "?");
}

void metrics_reload(unsigned wid, int problems)
{
    struct worker_metrics *m = metrics_worker(wid);
    if (!m || wid != 0)   /* every worker reloads; one counts for the process */
        return;
    counter_add(problems ? &m->reloads_failed : &m->reloads_ok, 1);
    char text[64] = "ok";
    if (problems)
        snprintf(text, sizeof text, "%d problem(s), see the log", problems);
    note(problems ? "reload_failed" : "reload", text);
}

unsigned metrics_recent(struct metrics_note *out, unsigned max)
{
    pthread_mutex_lock(&notes.lock);
    uint64_t n = notes.next < METRICS_NOTES ? notes.next : METRICS_NOTES;
    if (n > max)
        n = max;
    for (uint64_t i = 0; i < n; i++)
        out[i] = notes.ring[(notes.next - n + i) % METRICS_NOTES];
    pthread_mutex_unlock(&notes.lock);
    return (unsigned)n;
}

/* ---- rendering ------------------------------------------------------------ */

static void label_value(struct buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            buf_put(b, "\\", 1);
        if (*s == '\n')
            buf_puts(b, "\\n");
        else
            buf_put(b, s, 1);
    }
}

static void head(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP sluice_%s %s\n# TYPE sluice_%s %s\n", name, help, name, type);
}

static void one(struct buf *b, const char *name, const char *type, const char *help,
                double v)
{
    head(b, name, type, help);
    buf_printf(b, "sluice_%s %.17g\n", name, v);
}

/* A histogram's samples; labels: "" or `route="..."` (no braces). */
static void hist_samples(struct buf *b, const char *name, const char *labels,
                         const uint64_t *bounds, const struct hist *h)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (unsigned i = 0; i <= HIST_BUCKETS; i++) {
        cum += h->counts[i];
        if (i < HIST_BUCKETS)
            buf_printf(b, "sluice_%s_bucket{%s%sle=\"%.6g\"} %" PRIu64 "\n", name, labels, sep,
                       (double)bounds[i] / 1e6, cum);
        else
            buf_printf(b, "sluice_%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, sep,
                       cum);
    }
    buf_printf(b, "sluice_%s_sum%s%s%s %.6f\n", name, labels[0] ? "{" : "", labels,
               labels[0] ? "}" : "", (double)h->sum_us / 1e6);
    buf_printf(b, "sluice_%s_count%s%s%s %" PRIu64 "\n", name, labels[0] ? "{" : "", labels,
               labels[0] ? "}" : "", cum);
}

static void hist_add(struct hist *into, const struct hist *h)
{
    for (unsigned i = 0; i <= HIST_BUCKETS; i++)
        into->counts[i] += counter_get(&h->counts[i]);
    into->sum_us += counter_get(&h->sum_us);
}

/* Everything summed over the workers: a snapshot, so one scrape is
 * consistent with itself as far as relaxed loads allow. */
struct totals {
    uint64_t accepted, refused, requests, opened, slow_closed, slow_gapped, delivered;
    uint64_t conns, streams;
    int64_t queued;
    struct hist latency, lifetime;
    struct hist request[METRICS_MAX_ROUTES];
    uint64_t key_requests[METRICS_MAX_KEYS];
    int64_t key_streams[METRICS_MAX_KEYS];
    uint64_t closes[METRICS_END_REASONS];
    uint64_t resumes_exact, resumes_reset, lua_errors, budget_stops, reloads_ok, reloads_failed;
    size_t channels, subs, hevents, hbytes;
    uint64_t published;
    uint64_t shed_streams, shed_queued, admin_disconnects;
};

static void sum(struct process *p, struct totals *t)
{
    memset(t, 0, sizeof *t);
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        t->accepted += counter_get(&w->stats.accepted);
        t->refused += counter_get(&w->stats.refused_busy);
        t->requests += counter_get(&w->stats.requests);
        t->opened += counter_get(&w->stats.streams_opened);
        t->slow_closed += counter_get(&w->streams.slow_closed);
        t->slow_gapped += counter_get(&w->streams.slow_gapped);
        t->delivered += counter_get(&w->stats.delivered);
        t->conns += gauge_get(&w->stats.connections);
        t->streams += gauge_get(&w->stats.streams);
        t->shed_streams += counter_get(&w->stats.shed_streams);
        t->shed_queued += counter_get(&w->stats.shed_queued);
        t->admin_disconnects += counter_get(&w->stats.admin_disconnected);
        struct worker_metrics *m = metrics_worker(i);
        if (!m)
            continue;
        t->queued += __atomic_load_n(&m->out.queued_bytes, __ATOMIC_RELAXED);
        hist_add(&t->latency, &m->out.latency);
        hist_add(&t->lifetime, &m->lifetime);
        for (unsigned r = 0; r < METRICS_MAX_ROUTES; r++)
            hist_add(&t->request[r], &m->request[r]);
        for (unsigned k = 0; k < METRICS_MAX_KEYS; k++) {
            t->key_requests[k] += counter_get(&m->requests[k]);
            t->key_streams[k] += __atomic_load_n(&m->streams[k], __ATOMIC_RELAXED);
        }
        for (unsigned e = 0; e < METRICS_END_REASONS; e++)
            t->closes[e] += counter_get(&m->closes[e]);
        t->resumes_exact += counter_get(&m->resumes_exact);
        t->resumes_reset += counter_get(&m->resumes_reset);
        t->lua_errors += counter_get(&m->lua_errors);
        t->budget_stops += counter_get(&m->budget_stops);
        t->reloads_ok += counter_get(&m->reloads_ok);
        t->reloads_failed += counter_get(&m->reloads_failed);
    }
    if (t->queued < 0)
        t->queued = 0;
    bus_counts(p->bus, &t->channels, &t->subs, &t->hevents, &t->hbytes);
    t->published = bus_published(p->bus);
}

/* The label set of key k: route="...",variant="...". */
static void key_labels(struct buf *b, unsigned k)
{
    buf_puts(b, "route=\"");
    label_value(b, reg.routes[reg.keys[k].route]);
    buf_puts(b, "\",variant=\"");
    label_value(b, reg.keys[k].variant);
    buf_puts(b, "\"");
}

/* Keys in use: the registered ones, and "other" once something fell in. */
static bool key_shown(unsigned k, uint32_t nkeys, const struct totals *t)
{
    return k < nkeys || (k == METRICS_MAX_KEYS - 1 && (t->key_requests[k] || t->key_streams[k]));
}

/* Quotas, load shedding, admin disconnects, the access log. */
static void render_admin(struct process *p, struct buf *b, const struct totals *t)
{
    const char *shed = metrics_shed_reason(p->cfg, p->workers, p->nworkers);
    one(b, "shedding", "gauge",
        "1 while new streams are refused 503 (--max-streams, --shed-queued-bytes).",
        shed ? 1 : 0);
    head(b, "shedding_reason", "gauge", "1 for the reason new streams are refused now.");
    buf_printf(b, "sluice_shedding_reason{reason=\"streams\"} %d\n",
               shed && !strcmp(shed, "streams"));
    buf_printf(b, "sluice_shedding_reason{reason=\"queued_bytes\"} %d\n",
               shed && !strcmp(shed, "queued_bytes"));
    head(b, "shed_refused_total", "counter", "New streams refused 503 by load shedding.");
    buf_printf(b, "sluice_shed_refused_total{reason=\"streams\"} %" PRIu64 "\n", t->shed_streams);
    buf_printf(b, "sluice_shed_refused_total{reason=\"queued_bytes\"} %" PRIu64 "\n",
               t->shed_queued);

    static const char *const reasons[QUOTA_REASONS] = { "streams", "rate", "full" };
    head(b, "quota_refused_total", "counter",
         "Requests a route's quota refused (429; 503 for \"full\"), per route and reason.");
    uint32_t nq = __atomic_load_n(&qreg.n, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < nq; i++) {
        uint64_t v[QUOTA_REASONS];
        bool any = false;
        for (unsigned r = 0; r < QUOTA_REASONS; r++) {
            v[r] = __atomic_load_n(&qreg.refused[i][r], __ATOMIC_RELAXED);
            any = any || v[r];
        }
        if (i == 0 && !any)   /* "other": only once something fell in */
            continue;
        for (unsigned r = 0; r < QUOTA_REASONS; r++) {
            buf_puts(b, "sluice_quota_refused_total{method=\"");
            label_value(b, qreg.method[i]);
            buf_puts(b, "\",route=\"");
            label_value(b, qreg.route[i]);
            buf_printf(b, "\",reason=\"%s\"} %" PRIu64 "\n", reasons[r], v[r]);
        }
    }
    struct quota_counts q;
    quota_counts(&q);
    one(b, "quota_keys", "gauge", "Entries in the quota table (route, key).", (double)q.keys);
    one(b, "quota_streams", "gauge", "Stream slots held in the quota table.", (double)q.open);
    one(b, "quota_evictions_total", "counter",
        "Quota entries dropped (idle, or for room past --quota-keys).", (double)q.evicted);
    one(b, "admin_disconnects_total", "counter", "Streams ended by sluice.disconnect.",
        (double)t->admin_disconnects);
    one(b, "tagged_streams", "gauge", "Open streams with tags (s:tag).", (double)tags_count());
    one(b, "access_log_lines_lost_total", "counter",
        "Access-log lines lost to failed writes (disk full, a closed pipe).",
        (double)access_log_lost());
}

/* Cluster mode only: the node's connections to Redis. */
static void render_redis(struct process *p, struct buf *b)
{
    struct redis_bus_stats rs;
    redis_bus_stats(p->redis, &rs);
    one(b, "redis_up", "gauge", "1 while the node's publishing connection to Redis is up.",
        rs.reachable ? 1 : 0);
    one(b, "redis_queued", "gauge",
        "Publishes queued for Redis, not yet sent (at most 100000).", (double)rs.queued);
    one(b, "redis_in_flight", "gauge", "Commands sent to Redis and not yet answered.",
        (double)rs.in_flight);
    one(b, "redis_lost_in_flight_total", "counter",
        "Publishes taken (202) whose connection to Redis went before Redis answered.",
        (double)rs.lost_in_flight);
    one(b, "redis_gaps_filled_total", "counter",
        "Missed live events read back from a channel's history in Redis.",
        (double)rs.gaps_filled);
    one(b, "redis_quiet_fills_total", "counter",
        "Of those, found by the periodic check of quiet channels' last ids.",
        (double)rs.quiet_fills);
    one(b, "redis_history_lost_total", "counter",
        "history-lost reset notices (per channel): events gone from Redis before read.",
        (double)rs.history_lost);
    head(b, "redis_reconnects_total", "counter", "Connections to Redis made again, by connection.");
    buf_printf(b, "sluice_redis_reconnects_total{connection=\"publish\"} %" PRIu64 "\n",
               rs.reconnects_publish);
    buf_printf(b, "sluice_redis_reconnects_total{connection=\"subscriber\"} %" PRIu64 "\n",
               rs.reconnects_subscriber);
    one(b, "redis_channels", "gauge",
        "Channels this node follows in Redis (records held, unsubscribes in flight included).",
        (double)rs.channels);
    one(b, "redis_probe_failures_total", "counter",
        "Subscriber connections dropped as wedged (the probe did not come back).",
        (double)rs.probe_failures);
    one(b, "redis_command_timeouts_total", "counter",
        "Publishing connections dropped for a command unanswered 5 s.",
        (double)rs.command_timeouts);
    head(b, "redis_control_messages_total", "counter",
         "Control messages (cluster-wide disconnects): sent (Redis took it), applied (from "
         "another node), failed (not sent, or received unreadable).");
    buf_printf(b, "sluice_redis_control_messages_total{result=\"sent\"} %" PRIu64 "\n",
               rs.control_sent);
    buf_printf(b, "sluice_redis_control_messages_total{result=\"applied\"} %" PRIu64 "\n",
               rs.control_applied);
    buf_printf(b, "sluice_redis_control_messages_total{result=\"failed\"} %" PRIu64 "\n",
               rs.control_failed);
}

void metrics_render(struct process *p, struct buf *b)
{
    struct totals *t = malloc(sizeof *t);
    if (!t) {
        b->failed = true;
        return;
    }
    sum(p, t);
    uint32_t nroutes = __atomic_load_n(&reg.nroutes, __ATOMIC_ACQUIRE);
    uint32_t nkeys = __atomic_load_n(&reg.nkeys, __ATOMIC_ACQUIRE);

    one(b, "connections", "gauge", "Open connections.", (double)t->conns);
    one(b, "streams", "gauge", "Open SSE streams.", (double)t->streams);
    one(b, "accepted_total", "counter", "Connections accepted.", (double)t->accepted);
    one(b, "refused_busy_total", "counter", "Connections refused with 503 over --max-conns.",
        (double)t->refused);
    one(b, "requests_total", "counter", "Requests dispatched.", (double)t->requests);
    one(b, "streams_opened_total", "counter", "SSE streams opened.", (double)t->opened);
    one(b, "slow_consumers_closed_total", "counter", "Streams closed over the queue cap.",
        (double)t->slow_closed);
    one(b, "slow_consumers_gapped_total", "counter", "Times a drop-oldest stream lost events.",
        (double)t->slow_gapped);
    one(b, "published_total", "counter", "Events published.", (double)t->published);
    one(b, "delivered_total", "counter", "Event deliveries queued for subscribers.",
        (double)t->delivered);
    one(b, "channels", "gauge", "Channels with subscribers or history.", (double)t->channels);
    one(b, "subscriptions", "gauge", "Stream subscriptions.", (double)t->subs);
    one(b, "history_events", "gauge", "Events held in channel histories.", (double)t->hevents);
    one(b, "history_bytes", "gauge",
        "Bytes held in channel histories (bounded by --max-history-bytes).", (double)t->hbytes);
    one(b, "queued_bytes", "gauge",
        "Output bytes queued on connections, not yet handed to the kernel.", (double)t->queued);

    head(b, "worker_connections", "gauge", "Open connections per worker thread.");
    for (unsigned i = 0; i < p->nworkers; i++)
        buf_printf(b, "sluice_worker_connections{worker=\"%u\"} %u\n", i,
                   gauge_get(&p->workers[i].stats.connections));
    head(b, "worker_streams", "gauge", "Open streams per worker thread.");
    for (unsigned i = 0; i < p->nworkers; i++)
        buf_printf(b, "sluice_worker_streams{worker=\"%u\"} %u\n", i,
                   gauge_get(&p->workers[i].stats.streams));

    head(b, "route_streams", "gauge", "Open streams per route and variant.");
    for (unsigned k = 1; k < METRICS_MAX_KEYS; k++) {
        if (!key_shown(k, nkeys, t))
            continue;
        buf_puts(b, "sluice_route_streams{");
        key_labels(b, k);
        buf_printf(b, "} %" PRId64 "\n", t->key_streams[k] > 0 ? t->key_streams[k] : 0);
    }
    head(b, "route_variant_requests_total", "counter",
         "Requests answered or streamed per route and variant (route \"none\": no route matched).");
    for (unsigned k = 0; k < METRICS_MAX_KEYS; k++) {
        if (!key_shown(k, nkeys, t))
            continue;
        buf_puts(b, "sluice_route_variant_requests_total{");
        key_labels(b, k);
        buf_printf(b, "} %" PRIu64 "\n", t->key_requests[k]);
    }

    head(b, "stream_closes_total", "counter",
         "Streams ended, by reason (the access log's \"end\").");
    for (unsigned e = 1; e < METRICS_END_REASONS; e++)
        buf_printf(b, "sluice_stream_closes_total{reason=\"%s\"} %" PRIu64 "\n",
                   access_log_end_name((enum stream_end)e), t->closes[e]);
    head(b, "resumes_total", "counter",
         "Streams that gave a Last-Event-ID: replayed exactly, or sent a reset event.");
    buf_printf(b, "sluice_resumes_total{result=\"exact\"} %" PRIu64 "\n", t->resumes_exact);
    buf_printf(b, "sluice_resumes_total{result=\"reset\"} %" PRIu64 "\n", t->resumes_reset);
    head(b, "app_reloads_total", "counter", "Reloads of the apps directory, by result.");
    buf_printf(b, "sluice_app_reloads_total{result=\"ok\"} %" PRIu64 "\n", t->reloads_ok);
    buf_printf(b, "sluice_app_reloads_total{result=\"failed\"} %" PRIu64 "\n", t->reloads_failed);
    one(b, "lua_errors_total", "counter",
        "Script errors caught (handlers, timers, views, on_close, loading), all workers.",
        (double)t->lua_errors);
    one(b, "lua_cpu_budget_stops_total", "counter",
        "Script calls stopped by --lua-cpu-budget.", (double)t->budget_stops);
    one(b, "up_seconds", "gauge", "Seconds since the process started.",
        clock_mono() - p->started);
    render_admin(p, b, t);
    if (p->redis)
        render_redis(p, b);

    if (per_worker && per_worker[0].out.histograms) {
        head(b, "publish_to_written_seconds", "histogram",
             "From an event queued on a stream to its bytes handed to the kernel.");
        hist_samples(b, "publish_to_written_seconds", "", metrics_latency_bounds_us, &t->latency);
        head(b, "request_duration_seconds", "histogram",
             "From dispatch to the answer queued, per route (plain answers).");
        struct buf l = { 0 };
        for (unsigned r = 0; r < METRICS_MAX_ROUTES; r++) {
            if (r >= nroutes && !(r == METRICS_MAX_ROUTES - 1 && t->request[r].counts[HIST_BUCKETS] +
                                  t->request[r].sum_us))
                continue;
            l.len = 0;
            buf_puts(&l, "route=\"");
            label_value(&l, reg.routes[r]);
            buf_puts(&l, "\"");
            buf_put(&l, "", 1);
            if (!l.failed)
                hist_samples(b, "request_duration_seconds", l.data, metrics_latency_bounds_us,
                             &t->request[r]);
        }
        buf_free(&l);
        head(b, "stream_lifetime_seconds", "histogram", "How long streams lasted, when they ended.");
        hist_samples(b, "stream_lifetime_seconds", "", metrics_lifetime_bounds_us, &t->lifetime);
    }
    free(t);
}

/* ---- the status page's figures -------------------------------------------- */

/* The upper bound of the bucket holding quantile q, in seconds (what a
 * dashboard's histogram_quantile would say, without interpolation). */
static double quantile(const struct hist *h, const uint64_t *bounds, double q)
{
    uint64_t total = 0;
    for (unsigned i = 0; i <= HIST_BUCKETS; i++)
        total += h->counts[i];
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total + 0.999999), cum = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        cum += h->counts[i];
        if (cum >= want)
            return (double)bounds[i] / 1e6;
    }
    return (double)bounds[HIST_BUCKETS - 1] / 1e6;
}

void metrics_status_json(struct process *p, struct buf *b)
{
    struct totals *t = malloc(sizeof *t);
    if (!t) {
        b->failed = true;
        return;
    }
    sum(p, t);
    uint32_t nkeys = __atomic_load_n(&reg.nkeys, __ATOMIC_ACQUIRE);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    buf_printf(b, "{\"time\":%.3f,\"workers\":%u,\"draining\":%s,\"connections\":%" PRIu64
               ",\"streams\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"published\":%" PRIu64
               ",\"delivered\":%" PRIu64 ",\"slow_closed\":%" PRIu64 ",\"slow_gapped\":%" PRIu64
               ",\"queued_bytes\":%" PRId64 ",\"lua_errors\":%" PRIu64
               ",\"latency_p50\":%.6f,\"latency_p99\":%.6f",
               (double)tv.tv_sec + tv.tv_usec * 1e-6, p->nworkers,
               p->draining ? "true" : "false", t->conns, t->streams, t->requests, t->published,
               t->delivered, t->slow_closed, t->slow_gapped, t->queued, t->lua_errors,
               quantile(&t->latency, metrics_latency_bounds_us, 0.5),
               quantile(&t->latency, metrics_latency_bounds_us, 0.99));
    /* Every observation so far: whether the figure is moving. */
    uint64_t lc = 0;
    for (unsigned i = 0; i <= HIST_BUCKETS; i++)
        lc += t->latency.counts[i];
    buf_printf(b, ",\"latency_observations\":%" PRIu64, lc);
    /* Variants per route, for routes that have more than one. */
    buf_puts(b, ",\"variants\":[");
    bool first = true;
    for (unsigned k = 1; k < nkeys; k++) {
        if (!strcmp(reg.keys[k].variant, "none"))
            continue;
        buf_puts(b, first ? "{" : ",{");
        first = false;
        buf_puts(b, "\"route\":");
        const char *r = reg.routes[reg.keys[k].route];
        access_log_json_string(b, r, strlen(r));
        buf_puts(b, ",\"variant\":");
        access_log_json_string(b, reg.keys[k].variant, strlen(reg.keys[k].variant));
        buf_printf(b, ",\"requests\":%" PRIu64 ",\"streams\":%" PRId64 "}", t->key_requests[k],
                   t->key_streams[k] > 0 ? t->key_streams[k] : 0);
    }
    buf_puts(b, "],\"recent\":[");
    struct metrics_note recent[METRICS_NOTES];
    unsigned n = metrics_recent(recent, METRICS_NOTES);
    for (unsigned i = 0; i < n; i++) {
        buf_printf(b, "%s{\"time\":%.3f,\"kind\":\"%s\",\"text\":", i ? "," : "", recent[i].time,
                   recent[i].kind);
        access_log_json_string(b, recent[i].text, strlen(recent[i].text));
        buf_puts(b, "}");
    }
    /* Load shedding now (its reason, or null), streams it refused, and
     * requests the routes' quotas refused. */
    const char *shed = metrics_shed_reason(p->cfg, p->workers, p->nworkers);
    struct quota_counts q;
    quota_counts(&q);
    buf_printf(b, "],\"shedding\":%s%s%s,\"shed_refused\":%" PRIu64 ",\"quota_refused\":%" PRIu64,
               shed ? "\"" : "", shed ? shed : "null", shed ? "\"" : "",
               t->shed_streams + t->shed_queued,
               q.refused_streams + q.refused_rate + q.refused_full);
    buf_printf(b, ",\"reloads_ok\":%" PRIu64 ",\"reloads_failed\":%" PRIu64 "}", t->reloads_ok,
               t->reloads_failed);
    free(t);
}
