#include "redis_bus.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>
#include <uthash.h>

#include "bus.h"
#include "clock.h"
#include "disconnect.h"
#include "log.h"

/* A batch of publishes (one or several channels), in the order they were
 * made: each gets id = max(Redis TIME in µs, last + 1) (no node clock in
 * it; within a batch that is the previous event's id + 1), is kept in its
 * channel's stream with the channel's previous id (the stream entry's id
 * is the event id), and goes out as its own live message
 * "id\nprev\nevent\ndata" for every node. Each channel's stream is trimmed
 * by count and age once, after the batch's last event of it: trims only
 * ever keep the newest entries, and the last one's limits are the
 * strictest, so the stream ends exactly as if trimmed after every event
 * (and nothing can look in between: the script runs in one step). One
 * script call per batch pays the call, TIME, and the seq and last-id reads
 * and writes once for up to PUBLISH_BATCH_MAX events.
 * KEYS: seq, hash of each channel's last id, then per channel its stream
 * and its live channel. ARGV: the number of channels C; per channel its
 * name, max length, max age (µs, 0: none); then per event its channel
 * (1..C), event ("-" none, "+name"), data. Returns "first-id n1 n2 ...":
 * the events' ids are first-id, first-id + 1, ... and n the nodes that
 * received each live message (what sluice.publish returns): one string,
 * so the node parses one reply instead of one per event. */
static const char PUBLISH_SCRIPT[] =
    "local t = redis.call('TIME')\n"
    "local id = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local last = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if id <= last then id = last + 1 end\n"
    "local first = string.format('%.0f', id)\n"
    "local nch = tonumber(ARGV[1])\n"
    "local names, maxlen, age, top = {}, {}, {}, {}\n"
    "for c = 1, nch do\n"
    "  names[c] = ARGV[3 * c - 1]\n"
    "  maxlen[c] = tonumber(ARGV[3 * c])\n"
    "  age[c] = tonumber(ARGV[3 * c + 1])\n"
    "end\n"
    "local prev = redis.call('HMGET', KEYS[2], unpack(names))\n"
    "local out, ids = { first }, first\n"
    "for i = 3 * nch + 2, #ARGV, 3 do\n"
    "  local c = tonumber(ARGV[i])\n"
    "  local p = prev[c] or '0'\n"
    "  ids = string.format('%.0f', id)\n"
    "  if maxlen[c] > 0 then\n"
    "    redis.call('XADD', KEYS[2 * c + 1], ids .. '-0', 'prev', p, 'event', ARGV[i + 1],\n"
    "               'data', ARGV[i + 2])\n"
    "  end\n"
    "  out[#out + 1] = redis.call('PUBLISH', KEYS[2 * c + 2],\n"
    "                             ids .. '\\n' .. p .. '\\n' .. ARGV[i + 1] .. '\\n' .. ARGV[i + 2])\n"
    "  prev[c] = ids\n"
    "  top[c] = id\n"
    "  id = id + 1\n"
    "end\n"
    "redis.call('SET', KEYS[1], ids)\n"
    "local pairs_ = {}\n"
    "for c = 1, nch do\n"
    "  pairs_[2 * c - 1] = names[c]\n"
    "  pairs_[2 * c] = prev[c]\n"
    "  if maxlen[c] > 0 then\n"
    "    redis.call('XTRIM', KEYS[2 * c + 1], 'MAXLEN', '=', maxlen[c])\n"
    "    if age[c] > 0 then\n"
    "      redis.call('XTRIM', KEYS[2 * c + 1], 'MINID', string.format('%.0f', top[c] - age[c]))\n"
    "      redis.call('PEXPIRE', KEYS[2 * c + 1], math.ceil(age[c] / 1000))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('HSET', KEYS[2], unpack(pairs_))\n"
    "return table.concat(out, ' ')\n";

/* Publishes queued back to back go to Redis in one script call of at most
 * this many (in order; see PUBLISH_SCRIPT). Redis runs a call in one step,
 * so this also bounds how long one call holds it (about 10-15 µs an event,
 * under 1 ms a call). */
#define PUBLISH_BATCH_MAX 64

/* A resume, in one step so that no publish falls between the channels
 * read: the last id of all, then per channel its last id and what its
 * stream holds after the client's id. KEYS: seq, hash of each channel's
 * last id, the stream of each channel. ARGV: the client's id, the name of
 * each channel. */
static const char RESUME_SCRIPT[] =
    "local out = { redis.call('GET', KEYS[1]) or '0' }\n"
    "local since = tonumber(redis.call('GET', KEYS[1] .. ':since') or '0')\n"
    "if tonumber(ARGV[1]) < since then out[1] = '0' end\n"
    "for i = 3, #KEYS do\n"
    "  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i - 1]) or '0'\n"
    "  out[#out + 1] = redis.call('XRANGE', KEYS[i], '(' .. ARGV[1] .. '-0', '+')\n"
    "end\n"
    "return out\n";

/* On every connect of the publishing connection: which data set Redis
 * holds (the epoch, a random value set once per data set), and ids stay
 * increasing across a Redis that lost its data (seq raised to the highest
 * id this node saw; ids up to it from before are recorded in seq:since as
 * unknown to this data set, so a resume from one of them is a reset).
 * KEYS: epoch, seq. ARGV: a new epoch, this node's highest id, the epoch
 * this node knew ("" none). Returns the epoch and the sequence (a floor for ids to come). */
static const char EPOCH_SCRIPT[] =
    "local e = redis.call('GET', KEYS[1])\n"
    "local top = tonumber(ARGV[2])\n"
    "local lost = not e or (ARGV[3] ~= '' and e ~= ARGV[3])\n"
    "if not e then e = ARGV[1]; redis.call('SET', KEYS[1], e) end\n"
    "if lost and top > 0 then\n"
    "  local since = tonumber(redis.call('GET', KEYS[2] .. ':since') or '0')\n"
    "  if top > since then redis.call('SET', KEYS[2] .. ':since', ARGV[2]) end\n"
    "end\n"
    "if top > tonumber(redis.call('GET', KEYS[2]) or '0') then\n"
    "  redis.call('SET', KEYS[2], ARGV[2])\n"
    "end\n"
    "return { e, redis.call('GET', KEYS[2]) or '0' }\n";

/* The app-timer lease: taken when free, renewed when ours, in one step.
 * KEYS: the lease. ARGV: this node's id, the lease's length (ms). 1: ours. */
static const char LEASE_SCRIPT[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end\n"
    "if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end\n"
    "return 0\n";

/* One node runs the app timers: the holder of a LEASE_MS lease, renewed
 * every LEASE_EVERY. It stops running them once LEASE_TRUST has passed
 * since the last renewal it sent that Redis confirmed (well inside the
 * lease: another node can take it only after it expired), so they never
 * run on two nodes at once; a tick may be skipped around a takeover. */
#define LEASE_MS 5000
#define LEASE_EVERY 1.5
#define LEASE_TRUST 3.0

/* Process-wide: whether this node runs app timers (1 outside cluster
 * mode). Read by any worker's thread. */
static int timers_active = 1;

bool redis_bus_timers_active(void)
{
    return __atomic_load_n(&timers_active, __ATOMIC_ACQUIRE) != 0;
}

/* Publishes queued and not yet answered by Redis: past it, a publish is
 * refused (503) rather than buffered without bound. */
#define MAX_QUEUED 100000
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 2.0
/* No reply to a command in flight for this long: the connection is
 * dropped (hiredis 0.14 has no async timeouts). */
#define COMMAND_TIMEOUT 5.0
/* The probe published every PROBE_EVERY through this node's own channel
 * must come back on the subscriber connection within PROBE_TIMEOUT, else
 * the connection is wedged (it may look healthy) and is dropped. */
#define PROBE_EVERY 1.0
#define PROBE_TIMEOUT 3.5
/* Every QUIET_EVERY the last id of every channel followed here is read
 * (HMGET on <prefix>last, QUIET_BATCH names a command): a channel whose
 * last id in Redis was already beyond what this node delivered at the
 * previous check has lost a live message and nothing came after it to
 * tell, so it is filled from its history. Two checks apart: a live
 * message still on its way when the first answer came is no gap. */
#define QUIET_EVERY 1.0
#define QUIET_BATCH 512

struct pub_req {
    struct pub_req *next;
    unsigned wid;                 /* the publishing worker */
    uint64_t ticket;              /* not 0: it waits for the answer */
    size_t name_len, event_len, data_len;   /* event_len: with its marker */
    size_t history_len;
    double history_ttl;
    unsigned slot;                /* its channel's place in its batch (0 ..) */
    bool slot_first;              /* the batch's first event of that channel */
    char bytes[];                 /* name, event ("-" none, "+name"), data */
};

/* A batch's script call as the bytes Redis reads (RESP), built in one
 * buffer reused from call to call (hiredis copies it), so a publish costs
 * no allocation for its keys and arguments. Main loop only. */
struct pub_cmd {
    char *buf;
    size_t cap, len;
};

/* A live message waiting for a gap fill of its channel. */
struct held {
    struct held *next;
    uint64_t id, prev;
    size_t event_len, data_len;
    bool has_event;
    char bytes[];
};

/* A channel this node subscribes to (main loop only). */
struct rchan {
    UT_hash_handle hh;
    bool wanted;                  /* subscribers on this node */
    bool subscribed;              /* on the current subscriber connection */
    unsigned sub_pending;         /* SUBSCRIBEs sent and not yet confirmed */
    unsigned unsub_pending;       /* UNSUBSCRIBEs sent and not yet confirmed */
    bool catch_up;                /* fill from last_seen once subscribed */
    bool filling;                 /* an XRANGE in flight: live ones are held */
    uint64_t last_seen;           /* the last id delivered here, if known */
    bool known;                   /* last_seen holds (0: nothing before it) */
    /* Redis's last id of the channel read just after subscribing: a live
     * message after it that does not follow it is a gap even before this
     * node delivered anything (else the first events of a channel could
     * go in silence, e.g. with the subscriber connection lost). */
    bool based;
    uint64_t base;
    uint64_t quiet_mark;          /* Redis's last id at the last check, if beyond last_seen */
    bool quiet_fill;              /* the fill in flight was started by the quiet check */
    struct held *held, **held_tail;
    size_t name_len;
    char name[];
};

/* A stream of worker wid resuming: waits on the main loop until its
 * channels are subscribed here (so that what is published after the read
 * comes live), then is read from Redis in one step. */
struct resume_req {
    struct resume_req *next;
    struct redis_bus *rb;
    unsigned wid;
    uint64_t token, last_id;
    bool in_flight;
    int n;
    const char *names[BUS_MAX_RESUME];
    size_t lens[BUS_MAX_RESUME];
    char bytes[];
};

/* First or last subscriber of a channel, from a worker's thread. */
struct sub_change {
    struct sub_change *next;
    bool first;
    bool has_floor;               /* first: the node had read Redis's sequence */
    uint64_t floor;               /* first: the node's highest id when it came */
    size_t len;
    char name[];
};

struct rconn {
    struct redis_bus *rb;
    redisAsyncContext *ac;
    bool up;                      /* connected and ready */
    const char *what;             /* for the log */
    double backoff;
    ev_timer retry;
    unsigned inflight;
    double last_reply;
};

struct redis_bus {
    struct ev_loop *loop;
    struct bus *bus;
    char *host, *password;
    int port, db;
    char *prefix;
    size_t prefix_len;
    char sha[41];
    char probe_chan[96];
    uint64_t probe_sent, probe_seen;
    double probe_seen_at;
    int available;                /* atomic: publishes are taken */

    pthread_mutex_t lock;         /* guards the queues below */
    struct pub_req *q_head, **q_tail;
    size_t q_len;
    struct sub_change *c_head, **c_tail;
    struct resume_req *r_head, **r_tail;
    ev_async kick;
    struct resume_req *resumes;   /* main loop: waiting or in flight */

    struct rconn pub, sub;
    struct rchan *chans;
    ev_timer tick;
    bool closing;
    bool was_down_logged;
    uint64_t lost_in_flight;
    char epoch[40];               /* the data set Redis holds ("" unknown yet) */
    char node_id[64];             /* for the timer lease */
    ev_timer lease_tick;
    bool lease_in_flight;
    double lease_sent_at, lease_ok_at;   /* lease_ok_at 0: not ours */
    /* Highest id this node got from Redis. Written on the main loop only
     * (atomically), read by workers as the floor of a channel's first
     * subscription: every id Redis gives after that read is above it. */
    uint64_t max_seen;
    int max_seen_known;           /* atomic: read from Redis at least once */
    ev_timer quiet_tick;
    unsigned quiet_in_flight;     /* HMGETs of the quiet check not answered */
    /* For redis_bus_stats: written on the main loop with relaxed atomics,
     * read from any thread. */
    struct {
        uint64_t lost_folded;     /* lost_in_flight of connections gone */
        uint64_t lost, gaps_filled, quiet_fills, history_lost;
        uint64_t connects[2];     /* publish, subscriber: the first is no reconnect */
        uint64_t probe_failures, command_timeouts, in_flight;
        uint64_t chans;           /* records in chans */
    } st;
    struct pub_cmd pub_cmd;
    /* The control channel (requests for every node, e.g. disconnects). */
    char *ctl_chan;               /* <prefix>ctl */
    size_t ctl_chan_len;
    char ctl_id[96];              /* this node's id in them */
    struct ctl_msg *ctl_head, **ctl_tail;   /* under lock: for the main loop */
    ev_async ctl_kick;
    uint64_t ctl_sent, ctl_applied, ctl_failed;   /* relaxed atomics, as st */
};

static void st_add(uint64_t *c, uint64_t n)
{
    __atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

static uint64_t st_get(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

/* lost_in_flight is the publish path's own (reset once logged): what the
 * stats show is what was folded plus what it holds now. */
static void st_sync(struct redis_bus *rb)
{
    __atomic_store_n(&rb->st.lost, rb->st.lost_folded + rb->lost_in_flight, __ATOMIC_RELAXED);
    __atomic_store_n(&rb->st.in_flight, rb->pub.inflight + rb->sub.inflight, __ATOMIC_RELAXED);
}

/* ---- helpers ------------------------------------------------------------ */

static int parse_url(struct redis_bus *rb, const char *url)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0)
        return -1;
    p += 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        rb->password = strndup(pw, (size_t)(at - pw));
        if (!rb->password)
            return -1;
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    const char *end = slash ? slash : p + strlen(p);
    const char *colon = memrchr(p, ':', (size_t)(end - p));
    rb->port = 6379;
    if (colon) {
        char *e;
        long port = strtol(colon + 1, &e, 10);
        if (e != end || port <= 0 || port > 65535)
            return -1;
        rb->port = (int)port;
    } else {
        colon = end;
    }
    if (colon == p)
        return -1;
    rb->host = strndup(p, (size_t)(colon - p));
    if (!rb->host)
        return -1;
    if (slash && slash[1]) {
        char *e;
        long db = strtol(slash + 1, &e, 10);
        if (*e || db < 0 || db > 1000000)
            return -1;
        rb->db = (int)db;
    }
    return 0;
}

/* prefix + part + name, NUL-terminated, malloc'ed. */
static char *key_of(const struct redis_bus *rb, const char *part, const char *name,
                    size_t len)
{
    size_t plen = strlen(part);
    char *k = malloc(rb->prefix_len + plen + len + 1);
    if (!k)
        return NULL;
    memcpy(k, rb->prefix, rb->prefix_len);
    memcpy(k + rb->prefix_len, part, plen);
    memcpy(k + rb->prefix_len + plen, name, len);
    k[rb->prefix_len + plen + len] = '\0';
    return k;
}

static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

static void note_seen(struct redis_bus *rb, uint64_t id)
{
    if (id > rb->max_seen)
        __atomic_store_n(&rb->max_seen, id, __ATOMIC_RELAXED);
}

static void set_available(struct redis_bus *rb)
{
    int v = rb->pub.up ? 1 : 0;
    if (__atomic_exchange_n(&rb->available, v, __ATOMIC_RELEASE) != v)
        log_info(v ? "redis: publishing through %s:%d" :
                     "redis: unavailable, publishes are refused until it is back",
                 rb->host, rb->port);
}

/* ---- connections --------------------------------------------------------- */

static void connect_now(struct rconn *c);

static void free_held(struct rchan *ch)
{
    struct held *h = ch->held;
    while (h) {
        struct held *next = h->next;
        free(h);
        h = next;
    }
    ch->held = NULL;
    ch->held_tail = &ch->held;
}

/* A channel no longer followed goes once Redis confirmed what was asked
 * for it and no fill of it is in flight (their answers find it by
 * pointer or by name): a node that saw a million channels in its life
 * does not keep a million records. True if it went. */
static bool maybe_free(struct redis_bus *rb, struct rchan *ch)
{
    if (ch->wanted || ch->sub_pending || ch->unsub_pending || ch->filling)
        return false;
    HASH_DEL(rb->chans, ch);
    free_held(ch);
    free(ch);
    st_add(&rb->st.chans, (uint64_t)-1);
    return true;
}

static void on_down(struct rconn *c)
{
    struct redis_bus *rb = c->rb;
    bool was_up = c->up;
    c->up = false;
    c->inflight = 0;
    if (c == &rb->sub) {
        struct rchan *ch, *tmp;
        HASH_ITER(hh, rb->chans, ch, tmp) {
            ch->subscribed = false;
            ch->sub_pending = 0;
            ch->unsub_pending = 0;
            if (maybe_free(rb, ch))
                continue;
            /* A fill in flight goes on: it is read on the publishing
             * connection, and on_filled says when it ends either way. */
            if (!ch->known && ch->based) {
                ch->known = true;
                ch->last_seen = ch->base;
            }
            if (ch->known)
                ch->catch_up = true;
        }
    } else {
        set_available(rb);
        if (rb->lost_in_flight) {
            log_warn("redis: %" PRIu64 " publishes in flight got no answer",
                     rb->lost_in_flight);
            rb->st.lost_folded += rb->lost_in_flight;
            rb->lost_in_flight = 0;
        }
        rb->quiet_in_flight = 0;   /* their answers are lost with the connection */
    }
    st_sync(rb);
    if (rb->closing)
        return;
    if (was_up)
        log_warn("redis: %s connection lost; reconnecting", c->what);
    ev_timer_set(&c->retry, c->backoff, 0);
    ev_timer_start(rb->loop, &c->retry);
    c->backoff = c->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : c->backoff * 2;
}

/* Drops the connection at once (callbacks run with no reply). */
static void drop(struct rconn *c)
{
    redisAsyncContext *ac = c->ac;
    if (!ac)
        return;
    c->ac = NULL;
    redisAsyncFree(ac);
    on_down(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;
    if (status == REDIS_OK && c->ac == ac)
        st_add(&c->rb->st.connects[c == &c->rb->sub], 1);
    if (status != REDIS_OK && c->ac == ac) {
        c->ac = NULL;   /* hiredis frees it */
        on_down(c);
    } else if (status == REDIS_OK && c->ac == ac && c == &c->rb->sub) {
        /* Up once connected, not when asked: a refused connect is then
         * no "lost" line, and the backoff grows while Redis is away. */
        c->up = true;
        c->backoff = BACKOFF_MIN;
        c->rb->probe_seen_at = clock_mono();
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct rconn *c = ac->data;
    if (c->ac == ac) {
        c->ac = NULL;
        on_down(c);
    }
}

static void subscribe_chan(struct redis_bus *rb, struct rchan *ch);
static void try_resumes(struct redis_bus *rb);
static void on_script_loaded(redisAsyncContext *ac, void *r, void *priv);
static void on_sub_message(redisAsyncContext *ac, void *r, void *priv);
static void ctl_subscribe(struct redis_bus *rb, redisAsyncContext *ac);
static bool ctl_on_message(struct redis_bus *rb, const redisReply *reply);

static void connect_now(struct rconn *c)
{
    struct redis_bus *rb = c->rb;
    redisAsyncContext *ac = redisAsyncConnect(rb->host, rb->port);
    if (!ac) {
        on_down(c);
        return;
    }
    if (ac->err) {
        redisAsyncFree(ac);
        on_down(c);
        return;
    }
    ac->data = c;
    c->ac = ac;
    c->last_reply = clock_mono();
    if (redisLibevAttach(rb->loop, ac) != REDIS_OK) {
        drop(c);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Pipelined behind the connect: a refused AUTH fails what follows. */
    if (rb->password)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", rb->password);
    /* Named, so an operator (and CLIENT KILL) can tell which node's
     * connection is which in CLIENT LIST. */
    redisAsyncCommand(ac, NULL, NULL, "CLIENT SETNAME sluice-%s-%ld",
                      c == &rb->pub ? "pub" : "sub", (long)getpid());
    if (c == &rb->pub) {
        if (rb->db)
            redisAsyncCommand(ac, NULL, NULL, "SELECT %d", rb->db);
        c->inflight++;
        redisAsyncCommand(ac, on_script_loaded, NULL, "SCRIPT LOAD %s", PUBLISH_SCRIPT);
    } else {
        /* Up in on_connect; subscribed channels are confirmed one by one. */
        redisAsyncCommand(ac, on_sub_message, NULL, "SUBSCRIBE %s", rb->probe_chan);
        ctl_subscribe(rb, ac);
        struct rchan *ch, *tmp;
        HASH_ITER(hh, rb->chans, ch, tmp)
            if (ch->wanted)
                subscribe_chan(rb, ch);
    }
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    connect_now(t->data);
}

/* ---- publishing ----------------------------------------------------------- */

static void send_publish(struct redis_bus *rb, struct pub_req *req, bool with_body);

/* Tells the worker waiting for req (if any) how it went, and frees it. */
static void answer_publish(struct redis_bus *rb, struct pub_req *req, bool ok, uint64_t id,
                           uint32_t reached)
{
    if (req->ticket)
        bus_answer_push(rb->bus, req->wid, req->ticket, ok, id, reached);
    free(req);
}

/* Queued, but Redis is gone: lost, counted, and its waiter told. */
static void publish_lost(struct redis_bus *rb, struct pub_req *req)
{
    rb->lost_in_flight++;
    answer_publish(rb, req, false, 0, 0);
}

/* The same for every publish of a batch (a chain through next). */
static void batch_lost(struct redis_bus *rb, struct pub_req *req)
{
    while (req) {
        struct pub_req *next = req->next;
        publish_lost(rb, req);
        req = next;
    }
}

/* The next number of "first-id n1 n2 ..." at *p (before end), or false. */
static bool next_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    while (s < end && *s == ' ')
        s++;
    const char *e = s;
    while (e < end && *e != ' ')
        e++;
    if (!parse_u64(s, (size_t)(e - s), out))
        return false;
    *p = e;
    return true;
}

static void on_published(redisAsyncContext *ac, void *r, void *priv)
{
    struct pub_req *req = priv;   /* the batch: a chain through next */
    redisReply *reply = r;
    struct redis_bus *rb = ac->data ? ((struct rconn *)ac->data)->rb : NULL;
    if (rb && rb->pub.ac == ac) {
        rb->pub.inflight--;
        rb->pub.last_reply = clock_mono();
    }
    if (!rb) {   /* not ours to count: still, nothing may wait for ever */
        while (req) {
            struct pub_req *next = req->next;
            free(req);
            req = next;
        }
        return;
    }
    if (!reply) {   /* the connection went away: lost, but counted */
        batch_lost(rb, req);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
        rb->pub.ac == ac) {
        send_publish(rb, req, true);   /* a restarted Redis: EVAL loads it again */
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR)
        log_warn("redis: publish to %.*s failed: %s", (int)req->name_len, req->bytes,
                 reply->str);
    uint64_t id = 0;
    const char *p = "", *end = p;
    if (reply->type == REDIS_REPLY_STRING) {
        p = reply->str;
        end = reply->str + reply->len;
    }
    bool ok = next_u64(&p, end, &id);
    while (req) {   /* ids follow each other within a batch */
        struct pub_req *next = req->next;
        uint64_t nodes = 0;
        bool got = ok && next_u64(&p, end, &nodes);
        if (got)
            note_seen(rb, id);
        answer_publish(rb, req, got, got ? id : 0,
                       nodes > UINT32_MAX ? UINT32_MAX : (uint32_t)nodes);
        id++;
        req = next;
    }
}

/* Writes n in decimal at b; returns its length. */
static size_t put_u64(char *b, uint64_t n)
{
    char tmp[20];
    size_t len = 0;
    do {
        tmp[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    for (size_t i = 0; i < len; i++)
        b[i] = tmp[len - 1 - i];
    return len;
}

/* Appends one argument ("$len\r\n" bytes "\r\n"), made of up to three
 * pieces; the room was made by send_publish. */
static void put_arg(struct pub_cmd *c, const char *p1, size_t l1, const char *p2, size_t l2,
                    const char *p3, size_t l3)
{
    char *b = c->buf + c->len;
    *b++ = '$';
    b += put_u64(b, l1 + l2 + l3);
    *b++ = '\r';
    *b++ = '\n';
    memcpy(b, p1, l1);
    memcpy(b + l1, p2, l2);
    memcpy(b + l1 + l2, p3, l3);
    b += l1 + l2 + l3;
    *b++ = '\r';
    *b++ = '\n';
    c->len = (size_t)(b - c->buf);
}

static void put_arg_u64(struct pub_cmd *c, uint64_t n)
{
    char d[20];
    put_arg(c, d, put_u64(d, n), "", 0, "", 0);
}

/* Room per argument beyond its bytes: "$", up to 20 digits, 2 CRLFs. */
#define ARG_OVERHEAD 25

/* Sends a batch (req and the chain after it, as cut_batch marked it) as
 * one script call, built in rb->pub_cmd. */
static void send_publish(struct redis_bus *rb, struct pub_req *req, bool with_body)
{
    struct pub_cmd *c = &rb->pub_cmd;
    const char *body = with_body ? PUBLISH_SCRIPT : rb->sha;
    size_t body_len = with_body ? sizeof PUBLISH_SCRIPT - 1 : strlen(rb->sha);
    unsigned n = 0, nch = 0;
    size_t room = 32 + body_len + 6 * (ARG_OVERHEAD + 20) + 2 * (rb->prefix_len + 4);
    for (const struct pub_req *r = req; r; r = r->next) {
        n++;
        room += 3 * ARG_OVERHEAD + 20 + r->event_len + r->data_len;
        if (r->slot_first) {
            nch++;
            room += 5 * ARG_OVERHEAD + 2 * (rb->prefix_len + 5) + 3 * r->name_len + 2 * 20;
        }
    }
    if (room > c->cap) {
        char *buf = realloc(c->buf, room);
        if (!buf) {
            log_warn("redis: out of memory: publishes to %.*s lost", (int)req->name_len,
                     req->bytes);
            batch_lost(rb, req);
            return;
        }
        c->buf = buf;
        c->cap = room;
    }
    c->len = 0;
    c->buf[c->len++] = '*';
    c->len += put_u64(c->buf + c->len, 6 + 5 * (uint64_t)nch + 3 * (uint64_t)n);
    c->buf[c->len++] = '\r';
    c->buf[c->len++] = '\n';
    if (with_body)
        put_arg(c, "EVAL", 4, "", 0, "", 0);
    else
        put_arg(c, "EVALSHA", 7, "", 0, "", 0);
    put_arg(c, body, body_len, "", 0, "", 0);
    put_arg_u64(c, 2 + 2 * (uint64_t)nch);
    put_arg(c, rb->prefix, rb->prefix_len, "seq", 3, "", 0);
    put_arg(c, rb->prefix, rb->prefix_len, "last", 4, "", 0);
    for (const struct pub_req *r = req; r; r = r->next)   /* slots in order */
        if (r->slot_first) {
            put_arg(c, rb->prefix, rb->prefix_len, "ch:", 3, r->bytes, r->name_len);
            put_arg(c, rb->prefix, rb->prefix_len, "live:", 5, r->bytes, r->name_len);
        }
    put_arg_u64(c, nch);
    for (const struct pub_req *r = req; r; r = r->next)
        if (r->slot_first) {
            put_arg(c, r->bytes, r->name_len, "", 0, "", 0);
            put_arg_u64(c, r->history_len);
            double age = r->history_ttl * 1e6;
            put_arg_u64(c, age >= 1.8e19 ? UINT64_MAX : age > 0 ? (uint64_t)(age + 0.5) : 0);
        }
    for (const struct pub_req *r = req; r; r = r->next) {
        put_arg_u64(c, r->slot + 1);
        put_arg(c, r->bytes + r->name_len, r->event_len, "", 0, "", 0);
        put_arg(c, r->bytes + r->name_len + r->event_len, r->data_len, "", 0, "", 0);
    }
    if (redisAsyncFormattedCommand(rb->pub.ac, on_published, req, c->buf, c->len) != REDIS_OK) {
        log_warn("redis: could not send a publish to %.*s", (int)req->name_len, req->bytes);
        batch_lost(rb, req);
        return;
    }
    rb->pub.inflight++;
}

static void on_epoch(redisAsyncContext *ac, void *r, void *priv);
static void lease_step(struct redis_bus *rb);

/* Publishes wait for the answer: none may take an id below one seen. */
static void check_epoch(struct rconn *c)
{
    struct redis_bus *rb = c->rb;
    char *epoch = key_of(rb, "epoch", "", 0);
    char *seq = key_of(rb, "seq", "", 0);
    char fresh[40], top[24];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(fresh, sizeof fresh, "%lx-%lx-%x", (long)ts.tv_sec, (long)ts.tv_nsec,
             (unsigned)getpid() ^ (unsigned)random());
    snprintf(top, sizeof top, "%" PRIu64, rb->max_seen);
    int rc = REDIS_ERR;
    if (epoch && seq) {
        const char *argv[] = { "EVAL", EPOCH_SCRIPT, "2", epoch, seq, fresh, top, rb->epoch };
        size_t lens[] = { 4, sizeof EPOCH_SCRIPT - 1, 1, strlen(epoch), strlen(seq),
                          strlen(fresh), strlen(top), strlen(rb->epoch) };
        rc = redisAsyncCommandArgv(c->ac, on_epoch, NULL, 8, argv, lens);
    }
    free(epoch);
    free(seq);
    if (rc != REDIS_OK) {
        drop(c);
        return;
    }
    c->inflight++;
}

static void on_script_loaded(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    redisReply *reply = r;
    struct rconn *c = ac->data;
    if (!reply || c->ac != ac)
        return;
    c->inflight--;
    c->last_reply = clock_mono();
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        log_warn("redis: cannot load the publish script: %s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected answer");
        drop(c);
        return;
    }
    memcpy(c->rb->sha, reply->str, 40);
    c->rb->sha[40] = '\0';
    check_epoch(c);
}

/* Every channel followed here: what the streams had of it is gone. */
static void lost_everything(struct redis_bus *rb)
{
    struct rchan *ch, *tmp;
    HASH_ITER(hh, rb->chans, ch, tmp) {
        if (!ch->wanted)
            continue;
        bus_notice_lost(rb->bus, ch->name, ch->name_len, ch->last_seen);
        st_add(&rb->st.history_lost, 1);
        /* New ids follow no id of the old data set: start afresh. */
        ch->last_seen = 0;
        ch->known = ch->based = false;
        ch->quiet_mark = 0;
        ch->catch_up = false;
    }
}

static void on_epoch(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    redisReply *reply = r;
    struct rconn *c = ac->data;
    if (!reply || c->ac != ac)
        return;
    struct redis_bus *rb = c->rb;
    c->inflight--;
    c->last_reply = clock_mono();
    const redisReply *e = reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
                              ? reply->element[0] : NULL;
    const redisReply *seq = e ? reply->element[1] : NULL;
    uint64_t seq_id;
    if (!e || e->type != REDIS_REPLY_STRING || e->len == 0 || e->len >= sizeof rb->epoch ||
        seq->type != REDIS_REPLY_STRING || !parse_u64(seq->str, seq->len, &seq_id)) {
        log_warn("redis: cannot read the epoch: %s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected answer");
        drop(c);
        return;
    }
    reply = (redisReply *)e;
    if (rb->epoch[0] && (strlen(rb->epoch) != reply->len ||
                         memcmp(rb->epoch, reply->str, reply->len) != 0)) {
        log_warn("redis: it lost its data (restarted empty or failed over); open "
                 "streams get history-lost, new ids continue after %" PRIu64,
                 rb->max_seen);
        lost_everything(rb);
    }
    memcpy(rb->epoch, reply->str, reply->len);
    rb->epoch[reply->len] = '\0';
    note_seen(rb, seq_id);   /* a floor for first subscriptions from now on */
    __atomic_store_n(&rb->max_seen_known, 1, __ATOMIC_RELEASE);
    c->up = true;
    c->backoff = BACKOFF_MIN;
    set_available(rb);
    try_resumes(rb);
    lease_step(rb);
}

/* From any worker's thread: queue it for the main loop. */
static int upstream_publish(void *ctx, unsigned wid, uint64_t ticket,
                            const char *name, size_t name_len,
                            const char *event, size_t event_len,
                            const char *data, size_t data_len,
                            size_t history_len, double history_ttl)
{
    struct redis_bus *rb = ctx;
    if (!__atomic_load_n(&rb->available, __ATOMIC_ACQUIRE))
        return BUS_UNAVAILABLE;
    if (!event)
        event_len = 0;
    /* the event as the script takes it: "-" none, "+name" */
    struct pub_req *req = malloc(sizeof *req + name_len + 1 + event_len + data_len);
    if (!req)
        return -1;
    req->next = NULL;
    req->wid = wid;
    req->ticket = ticket;
    req->name_len = name_len;
    req->event_len = 1 + event_len;
    req->data_len = data_len;
    req->history_len = history_len;
    req->history_ttl = history_ttl;
    req->slot = 0;
    req->slot_first = true;
    memcpy(req->bytes, name, name_len);
    req->bytes[name_len] = event ? '+' : '-';
    if (event)
        memcpy(req->bytes + name_len + 1, event, event_len);
    memcpy(req->bytes + name_len + req->event_len, data, data_len);
    pthread_mutex_lock(&rb->lock);
    if (rb->q_len >= MAX_QUEUED) {
        pthread_mutex_unlock(&rb->lock);
        free(req);
        return BUS_UNAVAILABLE;
    }
    bool was_empty = rb->q_len == 0 && !rb->c_head && !rb->r_head;
    *rb->q_tail = req;
    rb->q_tail = &req->next;
    rb->q_len++;
    if (was_empty)
        ev_async_send(rb->loop, &rb->kick);
    pthread_mutex_unlock(&rb->lock);
    return 0;
}

/* ---- live messages and gaps ------------------------------------------------ */

static struct rchan *find_chan(struct redis_bus *rb, const char *name, size_t len)
{
    struct rchan *ch = NULL;
    HASH_FIND(hh, rb->chans, name, len, ch);
    return ch;
}

static void deliver(struct redis_bus *rb, struct rchan *ch, uint64_t id,
                    const char *event, size_t event_len, const char *data, size_t data_len)
{
    bool has_event = event_len > 0 && event[0] == '+';
    if (bus_deliver(rb->bus, ch->name, ch->name_len, id, has_event ? event + 1 : NULL,
                    has_event ? event_len - 1 : 0, data, data_len) < 0)
        log_warn("redis: out of memory delivering event %" PRIu64, id);
    ch->last_seen = id;
    ch->known = true;
    note_seen(rb, id);
}

static void start_fill(struct redis_bus *rb, struct rchan *ch);
static void send_quiet(struct redis_bus *rb, struct rchan **chans, int n);

static void hold(struct rchan *ch, uint64_t id, uint64_t prev, const char *event,
                 size_t event_len, const char *data, size_t data_len)
{
    struct held *h = malloc(sizeof *h + event_len + data_len);
    if (!h) {
        log_warn("redis: out of memory holding event %" PRIu64, id);
        return;
    }
    h->next = NULL;
    h->id = id;
    h->prev = prev;
    h->event_len = event_len;
    h->data_len = data_len;
    memcpy(h->bytes, event, event_len);
    memcpy(h->bytes + event_len, data, data_len);
    *ch->held_tail = h;
    ch->held_tail = &h->next;
}

static void on_live(struct redis_bus *rb, struct rchan *ch, uint64_t id, uint64_t prev,
                    const char *event, size_t event_len, const char *data, size_t data_len)
{
    /* From the base on, the channel's chain is followed. One at or below
     * it that comes live is still delivered: a base read after the
     * SUBSCRIBE may be above an event published after the SUBSCRIBE. */
    if (!ch->known && ch->based && id > ch->base) {
        ch->known = true;
        ch->last_seen = ch->base;
    }
    if (!ch->wanted || (ch->known && id <= ch->last_seen))
        return;   /* not ours any more, or had it already (from a fill) */
    if (ch->filling) {
        hold(ch, id, prev, event, event_len, data, data_len);
        return;
    }
    /* Missed one: fill first. (prev below last_seen is no gap: last_seen
     * may be a floor, not an id of this channel.) */
    if (ch->known && prev > ch->last_seen) {
        hold(ch, id, prev, event, event_len, data, data_len);
        start_fill(rb, ch);
        return;
    }
    deliver(rb, ch, id, event, event_len, data, data_len);
}

static void release_held(struct redis_bus *rb, struct rchan *ch)
{
    struct held *h = ch->held;
    ch->held = NULL;
    ch->held_tail = &ch->held;
    while (h) {
        struct held *next = h->next;
        on_live(rb, ch, h->id, h->prev, h->bytes, h->event_len,
                h->bytes + h->event_len, h->data_len);
        free(h);
        h = next;
    }
}

static const redisReply *field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[i]->str, name) == 0)
            return fields->element[i + 1];
    return NULL;
}

/* Events of ch after last_seen are gone from its history (trimmed, or it
 * keeps none): its streams are told (history-lost), never left with a
 * silent hole. Returns true, for the caller's "lost" flag. */
static bool tell_lost(struct redis_bus *rb, struct rchan *ch)
{
    log_warn("redis: events of %.*s after %" PRIu64 " are not in its history; "
             "its streams get history-lost", (int)ch->name_len, ch->name, ch->last_seen);
    bus_notice_lost(rb->bus, ch->name, ch->name_len, ch->last_seen);
    return true;
}

static void on_filled(redisAsyncContext *ac, void *r, void *priv)
{
    struct rchan *ch = priv;
    redisReply *reply = r;
    struct rconn *c = ac->data;
    ch->filling = false;
    if (!reply || c->ac != ac) {
        /* The publishing connection went: the held ones stay held, and
         * the fill is asked again once it is back (on_quiet_tick). */
        ch->catch_up = true;
        maybe_free(c->rb, ch);
        return;
    }
    struct redis_bus *rb = c->rb;
    c->inflight--;
    c->last_reply = clock_mono();
    bool gap_told = false, lost = false, quiet = ch->quiet_fill;
    size_t got = 0;
    ch->quiet_fill = false;
    if (reply->type != REDIS_REPLY_ARRAY) {
        log_warn("redis: cannot read the history of %.*s: %s", (int)ch->name_len,
                 ch->name, reply->type == REDIS_REPLY_ERROR ? reply->str : "?");
    } else {
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *e = reply->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
                continue;
            const redisReply *rid = e->element[0], *fields = e->element[1];
            const char *dash = rid->str ? memchr(rid->str, '-', rid->len) : NULL;
            uint64_t id, prev;
            const redisReply *p = field(fields, "prev"), *ev = field(fields, "event"),
                             *data = field(fields, "data");
            if (!dash || !parse_u64(rid->str, (size_t)(dash - rid->str), &id) ||
                !p || !ev || !data || !parse_u64(p->str, p->len, &prev))
                continue;
            if (id <= ch->last_seen)
                continue;
            if (!gap_told && ch->known && prev > ch->last_seen) {
                /* Trimmed away before it could be read: said, not skipped
                 * over in silence (the notice goes before these events). */
                lost = tell_lost(rb, ch);
            }
            gap_told = true;
            got++;
            deliver(rb, ch, id, ev->str, ev->len, data->str, data->len);
        }
        /* Nothing in the stream leads to the first held one (trimmed, or
         * the channel keeps no history): it cannot be filled, so it is
         * said, and the held ones go out after it (else the fill would be
         * asked again and again). */
        struct held *h = ch->held;
        if (h && ch->known && h->prev > ch->last_seen && h->id > ch->last_seen) {
            if (!gap_told)
                lost = tell_lost(rb, ch);
            ch->last_seen = h->prev;
        } else if (!h && quiet && ch->known && ch->quiet_mark > ch->last_seen) {
            /* The quiet check saw a last id the stream does not reach:
             * those events are gone (else it would read again and again). */
            if (!lost)
                lost = tell_lost(rb, ch);
            ch->last_seen = ch->quiet_mark;
        }
    }
    if (lost)
        st_add(&rb->st.history_lost, 1);
    else if (got) {
        st_add(&rb->st.gaps_filled, 1);
        if (quiet)
            st_add(&rb->st.quiet_fills, 1);
    }
    release_held(rb, ch);
    if (!ch->filling)
        maybe_free(rb, ch);
}

static void start_fill(struct redis_bus *rb, struct rchan *ch)
{
    char *stream = key_of(rb, "ch:", ch->name, ch->name_len);
    char from[32];
    snprintf(from, sizeof from, "(%" PRIu64 "-0", ch->last_seen);
    if (!stream || !rb->pub.ac ||
        redisAsyncCommand(rb->pub.ac, on_filled, ch, "XRANGE %s %s +", stream, from) !=
            REDIS_OK) {
        free(stream);
        /* No publishing connection: the held events wait (releasing them
         * would start this fill again, without end), and the fill is
         * asked again once it is back (on_quiet_tick). */
        ch->catch_up = true;
        return;
    }
    free(stream);
    rb->pub.inflight++;
    ch->filling = true;
}

/* "id\nprev\nevent\ndata" */
static void on_live_payload(struct redis_bus *rb, struct rchan *ch, const char *p,
                            size_t n)
{
    const char *nl1 = memchr(p, '\n', n);
    const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', n - (size_t)(nl1 + 1 - p)) : NULL;
    const char *nl3 = nl2 ? memchr(nl2 + 1, '\n', n - (size_t)(nl2 + 1 - p)) : NULL;
    uint64_t id, prev;
    if (!nl3 || !parse_u64(p, (size_t)(nl1 - p), &id) ||
        !parse_u64(nl1 + 1, (size_t)(nl2 - nl1 - 1), &prev)) {
        log_warn("redis: a malformed live message on %.*s", (int)ch->name_len, ch->name);
        return;
    }
    on_live(rb, ch, id, prev, nl2 + 1, (size_t)(nl3 - nl2 - 1), nl3 + 1,
            n - (size_t)(nl3 + 1 - p));
}

static void on_sub_message(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    redisReply *reply = r;
    struct rconn *c = ac->data;
    if (!reply || !c || c->ac != ac || reply->type != REDIS_REPLY_ARRAY ||
        reply->elements != 3 || reply->element[1]->type != REDIS_REPLY_STRING)
        return;
    struct redis_bus *rb = c->rb;
    const char *kind = reply->element[0]->str;
    const redisReply *chan = reply->element[1];
    if (chan->len == strlen(rb->probe_chan) && memcmp(chan->str, rb->probe_chan, chan->len) == 0) {
        rb->probe_seen_at = clock_mono();
        return;
    }
    if (ctl_on_message(rb, reply))
        return;
    size_t skip = rb->prefix_len + 5;   /* "<prefix>live:" */
    if (chan->len < skip)
        return;
    struct rchan *ch = find_chan(rb, chan->str + skip, chan->len - skip);
    if (!ch)
        return;
    if (strcmp(kind, "subscribe") == 0) {
        if (ch->sub_pending)
            ch->sub_pending--;
        ch->subscribed = ch->wanted && ch->sub_pending == 0;
        if (ch->subscribed)
            try_resumes(rb);
        if (ch->catch_up && ch->wanted && ch->known && !ch->filling) {
            ch->catch_up = false;
            start_fill(rb, ch);   /* what it missed while not subscribed */
        }
        if (ch->subscribed && !ch->known && !ch->based && rb->pub.up && rb->pub.ac)
            send_quiet(rb, &ch, 1);   /* its base */
        maybe_free(rb, ch);
    } else if (strcmp(kind, "unsubscribe") == 0) {
        if (ch->unsub_pending)
            ch->unsub_pending--;
        maybe_free(rb, ch);
    } else if (strcmp(kind, "message") == 0 && reply->element[2]->type == REDIS_REPLY_STRING) {
        on_live_payload(rb, ch, reply->element[2]->str, reply->element[2]->len);
    }
}

/* SUBSCRIBE (on) or UNSUBSCRIBE ch's live channel on the subscriber
 * connection; both confirmations come to on_sub_message (hiredis hands an
 * UNSUBSCRIBE's to the channel's SUBSCRIBE callback). */
static bool send_subscription(struct redis_bus *rb, struct rchan *ch, bool on)
{
    char *live = key_of(rb, "live:", ch->name, ch->name_len);
    if (!live)
        return false;
    const char *verb = on ? "SUBSCRIBE" : "UNSUBSCRIBE";
    const char *argv[] = { verb, live };
    size_t lens[] = { strlen(verb), strlen(live) };
    bool sent = redisAsyncCommandArgv(rb->sub.ac, on ? on_sub_message : NULL, NULL, 2, argv,
                                      lens) == REDIS_OK;
    if (!sent)
        log_warn("redis: cannot %s %s", on ? "subscribe to" : "unsubscribe from", live);
    free(live);
    return sent;
}

static void subscribe_chan(struct redis_bus *rb, struct rchan *ch)
{
    if (rb->sub.ac && send_subscription(rb, ch, true))   /* else on (re)connect */
        ch->sub_pending++;
}

static void unsubscribe_chan(struct redis_bus *rb, struct rchan *ch)
{
    ch->subscribed = false;
    if (rb->sub.ac && send_subscription(rb, ch, false))
        ch->unsub_pending++;
}

static void apply_change(struct redis_bus *rb, struct sub_change *chg)
{
    struct rchan *ch = find_chan(rb, chg->name, chg->len);
    if (!ch) {
        if (!chg->first)
            return;
        ch = calloc(1, sizeof *ch + chg->len + 1);
        if (!ch) {
            log_warn("redis: out of memory subscribing to %.*s", (int)chg->len, chg->name);
            return;
        }
        memcpy(ch->name, chg->name, chg->len);
        ch->name_len = chg->len;
        ch->held_tail = &ch->held;
        HASH_ADD_KEYPTR(hh, rb->chans, ch->name, ch->name_len, ch);
        st_add(&rb->st.chans, 1);
    }
    if (chg->first && !ch->wanted) {
        ch->wanted = true;
        if (chg->has_floor) {
            /* What is published from the floor on is owed: a live message
             * after it that does not follow it is a gap, filled from the
             * history (a few events from just before the stream opened
             * may come along; none after it is missed). */
            ch->based = true;
            ch->base = chg->floor;
        }
        subscribe_chan(rb, ch);
    } else if (!chg->first && ch->wanted) {
        /* Whoever subscribes next starts from what comes then (or from
         * their Last-Event-ID): nothing of the past is owed to them. */
        ch->wanted = false;
        ch->last_seen = 0;
        ch->known = ch->based = false;
        ch->catch_up = false;
        ch->quiet_mark = 0;
        if (!ch->filling)
            free_held(ch);   /* nobody here wants them (a fill releases its own) */
        unsubscribe_chan(rb, ch);
        maybe_free(rb, ch);
    }
}

/* ---- resume ---------------------------------------------------------------- */

/* From a worker's thread: queued for the main loop. */
static int upstream_resume(void *ctx, unsigned wid, uint64_t token, const char *const *names,
                           const size_t *lens, int n, uint64_t last_id)
{
    struct redis_bus *rb = ctx;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += lens[i];
    struct resume_req *req = malloc(sizeof *req + total);
    if (!req || n > BUS_MAX_RESUME) {
        free(req);
        return -1;
    }
    req->next = NULL;
    req->rb = rb;
    req->wid = wid;
    req->token = token;
    req->last_id = last_id;
    req->in_flight = false;
    req->n = n;
    char *p = req->bytes;
    for (int i = 0; i < n; i++) {
        memcpy(p, names[i], lens[i]);
        req->names[i] = p;
        req->lens[i] = lens[i];
        p += lens[i];
    }
    pthread_mutex_lock(&rb->lock);
    bool was_empty = rb->q_len == 0 && !rb->c_head && !rb->r_head;
    *rb->r_tail = req;
    rb->r_tail = &req->next;
    if (was_empty)
        ev_async_send(rb->loop, &rb->kick);
    pthread_mutex_unlock(&rb->lock);
    return 0;
}

static void unlink_resume(struct redis_bus *rb, struct resume_req *req)
{
    struct resume_req **link = &rb->resumes;
    while (*link && *link != req)
        link = &(*link)->next;
    if (*link)
        *link = req->next;
}

static bool reply_u64(const redisReply *r, uint64_t *out)
{
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0) {
        *out = (uint64_t)r->integer;
        return true;
    }
    return r->type == REDIS_REPLY_STRING && parse_u64(r->str, r->len, out);
}

/* One channel of a resume answer: its replay into out, or a reset. */
static enum bus_reset resume_chan(const struct resume_req *req, int i, uint64_t seq,
                                  const redisReply *last, const redisReply *entries,
                                  struct bus_resumed *out)
{
    uint64_t last_c = 0;
    if (!reply_u64(last, &last_c) || entries->type != REDIS_REPLY_ARRAY)
        return BUS_RESET_LOST;
    if (req->last_id > seq)
        return BUS_RESET_LOST;   /* an id Redis does not know: it lost data */
    out->upto[i] = last_c;
    for (size_t k = 0; k < entries->elements; k++) {
        const redisReply *e = entries->element[k];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
            return BUS_RESET_LOST;
        const redisReply *rid = e->element[0], *fields = e->element[1];
        const char *dash = rid->str ? memchr(rid->str, '-', rid->len) : NULL;
        uint64_t id, prev;
        const redisReply *p = fields->type == REDIS_REPLY_ARRAY ? field(fields, "prev") : NULL;
        const redisReply *ev = p ? field(fields, "event") : NULL;
        const redisReply *data = ev ? field(fields, "data") : NULL;
        if (!dash || !parse_u64(rid->str, (size_t)(dash - rid->str), &id) || !data ||
            !parse_u64(p->str, p->len, &prev))
            return BUS_RESET_LOST;
        if (k == 0 && prev > req->last_id)
            return BUS_RESET_EXPIRED;   /* what came between is trimmed */
        bool has_event = ev->len > 0 && ev->str[0] == '+';
        struct bus_event *be = bus_event_make(req->names[i], req->lens[i], id,
                                              has_event ? ev->str + 1 : NULL,
                                              has_event ? ev->len - 1 : 0, data->str,
                                              data->len);
        bool kept = be && bus_replay_push(&out->replay, be, i);
        bus_event_unref(be);   /* the replay holds its own reference */
        if (!kept) {
            log_warn("redis: out of memory replaying %.*s", (int)req->lens[i], req->names[i]);
            return BUS_RESET_LOST;
        }
        if (id > out->upto[i])
            out->upto[i] = id;
    }
    if (entries->elements == 0 && last_c > req->last_id)
        return BUS_RESET_EXPIRED;   /* trimmed to nothing, or kept no history */
    return BUS_RESET_NONE;
}

/* A channel's replay items go when it gets a reset instead. */
static void drop_replay_of(struct bus_resumed *out, int i)
{
    size_t k = 0;
    for (size_t j = 0; j < out->replay.len; j++) {
        if (out->replay.items[j].req == i)
            bus_event_unref(out->replay.items[j].ev);
        else
            out->replay.items[k++] = out->replay.items[j];
    }
    out->replay.len = k;
    /* upto stays: live events up to what the channel had when read are
     * behind the reset, as on one node (a fill may bring some of them). */
}

static void on_resume_read(redisAsyncContext *ac, void *r, void *priv)
{
    struct resume_req *req = priv;
    struct redis_bus *rb = req->rb;
    redisReply *reply = r;
    req->in_flight = false;
    if (rb->pub.ac == ac) {
        rb->pub.inflight--;
        rb->pub.last_reply = clock_mono();
    }
    if (!reply)
        return;   /* the connection went: read again once it is back */
    unlink_resume(rb, req);
    struct bus_resumed *out = calloc(1, sizeof *out);
    if (!out) {
        log_warn("redis: out of memory answering a resume");
        free(req);
        return;   /* the stream waits, heartbeats going, till it reconnects */
    }
    out->token = req->token;
    out->n = req->n;
    uint64_t seq = 0;
    bool ok = reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 + 2 * (size_t)req->n &&
              reply_u64(reply->element[0], &seq);
    if (!ok)
        log_warn("redis: cannot read the history for a resume: %s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected answer");
    for (int i = 0; i < req->n; i++) {
        out->resets[i] = ok ? resume_chan(req, i, seq, reply->element[1 + 2 * i],
                                          reply->element[2 + 2 * i], out)
                            : BUS_RESET_LOST;
        if (out->resets[i] != BUS_RESET_NONE)
            drop_replay_of(out, i);
    }
    bus_resumed_push(rb->bus, req->wid, out);
    free(req);
}

static void send_resume(struct redis_bus *rb, struct resume_req *req)
{
    int n = req->n;
    const char *argv[3 + 2 + BUS_MAX_RESUME + 1 + BUS_MAX_RESUME];
    size_t lens[3 + 2 + BUS_MAX_RESUME + 1 + BUS_MAX_RESUME];
    char *keys[2 + BUS_MAX_RESUME] = { 0 };
    char nkeys[16], last[24];
    snprintf(nkeys, sizeof nkeys, "%d", 2 + n);
    snprintf(last, sizeof last, "%" PRIu64, req->last_id);
    keys[0] = key_of(rb, "seq", "", 0);
    keys[1] = key_of(rb, "last", "", 0);
    bool ok = keys[0] && keys[1];
    for (int i = 0; i < n; i++) {
        keys[2 + i] = key_of(rb, "ch:", req->names[i], req->lens[i]);
        ok = ok && keys[2 + i];
    }
    int argc = 0;
    argv[argc] = "EVAL";
    lens[argc++] = 4;
    argv[argc] = RESUME_SCRIPT;
    lens[argc++] = sizeof RESUME_SCRIPT - 1;
    argv[argc] = nkeys;
    lens[argc++] = strlen(nkeys);
    for (int i = 0; ok && i < 2 + n; i++) {
        argv[argc] = keys[i];
        lens[argc++] = strlen(keys[i]);
    }
    argv[argc] = last;
    lens[argc++] = strlen(last);
    for (int i = 0; i < n; i++) {
        argv[argc] = req->names[i];
        lens[argc++] = req->lens[i];
    }
    if (ok && redisAsyncCommandArgv(rb->pub.ac, on_resume_read, req, argc, argv, lens) ==
                  REDIS_OK) {
        req->in_flight = true;
        rb->pub.inflight++;
    }
    for (int i = 0; i < 2 + n; i++)
        free(keys[i]);
}

/* Reads the history of every resume whose channels are all subscribed
 * here; drops the ones whose stream went (a channel no longer wanted). */
static void try_resumes(struct redis_bus *rb)
{
    struct resume_req **link = &rb->resumes;
    while (*link) {
        struct resume_req *req = *link;
        bool gone = false, ready = true;
        for (int i = 0; i < req->n && !gone; i++) {
            struct rchan *ch = find_chan(rb, req->names[i], req->lens[i]);
            gone = !ch || !ch->wanted;
            ready = ready && ch && ch->subscribed;
        }
        if (gone && !req->in_flight) {
            *link = req->next;
            free(req);
            continue;
        }
        if (ready && !req->in_flight && rb->pub.up && rb->pub.ac)
            send_resume(rb, req);
        link = &req->next;
    }
}

/* ---- the app-timer lease --------------------------------------------------- */

static void set_timers_active(struct redis_bus *rb, bool on)
{
    int v = on ? 1 : 0;
    if (__atomic_exchange_n(&timers_active, v, __ATOMIC_RELEASE) != v)
        log_info(on ? "redis: this node runs the app timers (holds the lease)" :
                      "redis: this node no longer runs the app timers");
    if (!on)
        rb->lease_ok_at = 0;
}

static void on_lease(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    redisReply *reply = r;
    struct rconn *c = ac->data;
    if (!c)
        return;
    struct redis_bus *rb = c->rb;
    rb->lease_in_flight = false;
    if (!reply || c->ac != ac)
        return;
    c->inflight--;
    c->last_reply = clock_mono();
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        rb->lease_ok_at = rb->lease_sent_at;
        set_timers_active(rb, clock_mono() - rb->lease_ok_at < LEASE_TRUST);
    } else {
        if (reply->type == REDIS_REPLY_ERROR)
            log_warn("redis: the timer lease: %s", reply->str);
        set_timers_active(rb, false);
    }
}

static void lease_step(struct redis_bus *rb)
{
    double now = clock_mono();
    if (rb->lease_ok_at && now - rb->lease_ok_at >= LEASE_TRUST)
        set_timers_active(rb, false);   /* not confirmed lately: may be someone else's */
    if (rb->lease_in_flight || !rb->pub.up || !rb->pub.ac)
        return;
    char *key = key_of(rb, "timer-lease", "", 0);
    if (!key)
        return;
    char ms[16];
    snprintf(ms, sizeof ms, "%d", LEASE_MS);
    const char *argv[] = { "EVAL", LEASE_SCRIPT, "1", key, rb->node_id, ms };
    size_t lens[] = { 4, sizeof LEASE_SCRIPT - 1, 1, strlen(key), strlen(rb->node_id),
                      strlen(ms) };
    if (redisAsyncCommandArgv(rb->pub.ac, on_lease, NULL, 6, argv, lens) == REDIS_OK) {
        rb->lease_in_flight = true;
        rb->lease_sent_at = now;
        rb->pub.inflight++;
    }
    free(key);
}

static void on_lease_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    lease_step(t->data);
}

/* ---- the main loop's side ----------------------------------------------- */

/* Marks the batch that starts at head, the publishes after it that go in
 * one script call (PUBLISH_SCRIPT): at most PUBLISH_BATCH_MAX, in order,
 * any channels, but a channel's history rules the same throughout (a
 * reload may change them between two publishes). Returns its last. */
static struct pub_req *cut_batch(struct pub_req *head)
{
    const struct pub_req *firsts[PUBLISH_BATCH_MAX];
    unsigned n = 0, nch = 0;
    struct pub_req *tail = head;
    for (struct pub_req *r = head; r && n < PUBLISH_BATCH_MAX; r = r->next, n++) {
        unsigned c = 0;
        while (c < nch && (firsts[c]->name_len != r->name_len ||
                           memcmp(firsts[c]->bytes, r->bytes, r->name_len) != 0))
            c++;
        if (c < nch && (firsts[c]->history_len != r->history_len ||
                        firsts[c]->history_ttl != r->history_ttl))
            break;
        r->slot = c;
        r->slot_first = c == nch;
        if (c == nch)
            firsts[nch++] = r;
        tail = r;
    }
    return tail;
}

static void on_kick(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_bus *rb = a->data;
    pthread_mutex_lock(&rb->lock);
    struct pub_req *q = rb->q_head;
    struct sub_change *chg = rb->c_head;
    struct resume_req *res = rb->r_head;
    rb->r_head = NULL;
    rb->r_tail = &rb->r_head;
    rb->q_head = NULL;
    rb->q_tail = &rb->q_head;
    rb->q_len = 0;
    rb->c_head = NULL;
    rb->c_tail = &rb->c_head;
    pthread_mutex_unlock(&rb->lock);
    while (chg) {
        struct sub_change *next = chg->next;
        apply_change(rb, chg);
        free(chg);
        chg = next;
    }
    if (res) {   /* after the changes: their channels are wanted by now */
        struct resume_req **tail = &rb->resumes;
        while (*tail)
            tail = &(*tail)->next;
        *tail = res;
        try_resumes(rb);
    }
    bool sent = false;
    while (q) {
        struct pub_req *tail = cut_batch(q);
        struct pub_req *next = tail->next;
        tail->next = NULL;
        if (rb->pub.up && rb->pub.ac) {
            send_publish(rb, q, false);
            sent = true;
        } else {
            batch_lost(rb, q);
        }
        q = next;
    }
    /* written now rather than on the next turn of the loop (a wait for
     * "writable" that is sure to say yes) */
    if (sent && rb->pub.ac)
        redisAsyncHandleWrite(rb->pub.ac);
}

/* Under the bus's lock, from a worker's thread. */
static void queue_change(struct redis_bus *rb, bool first, const char *name, size_t len)
{
    struct sub_change *chg = malloc(sizeof *chg + len);
    if (!chg) {
        log_warn("redis: out of memory: channel %.*s not followed", (int)len, name);
        return;
    }
    chg->next = NULL;
    chg->first = first;
    /* Read now, before the stream's head goes out: whatever is published
     * after this has a greater id and is owed to it, even what Redis
     * delivers before this node's SUBSCRIBE is confirmed (then filled from
     * the channel's history). */
    chg->has_floor = first && __atomic_load_n(&rb->max_seen_known, __ATOMIC_ACQUIRE);
    chg->floor = chg->has_floor ? __atomic_load_n(&rb->max_seen, __ATOMIC_RELAXED) : 0;
    chg->len = len;
    memcpy(chg->name, name, len);
    pthread_mutex_lock(&rb->lock);
    bool was_empty = rb->q_len == 0 && !rb->c_head && !rb->r_head;
    *rb->c_tail = chg;
    rb->c_tail = &chg->next;
    if (was_empty)
        ev_async_send(rb->loop, &rb->kick);
    pthread_mutex_unlock(&rb->lock);
}

static void on_first(void *ctx, const char *name, size_t len)
{
    queue_change(ctx, true, name, len);
}

static void on_last(void *ctx, const char *name, size_t len)
{
    queue_change(ctx, false, name, len);
}

/* What hiredis 0.14 cannot do itself: time out a command, and notice a
 * subscriber connection that stopped delivering. */
static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_bus *rb = t->data;
    double now = clock_mono();
    if (rb->pub.ac && rb->pub.inflight && now - rb->pub.last_reply > COMMAND_TIMEOUT) {
        log_warn("redis: no answer for %.0f s; reconnecting", COMMAND_TIMEOUT);
        st_add(&rb->st.command_timeouts, 1);
        drop(&rb->pub);
    }
    if (rb->sub.ac && rb->sub.up && rb->pub.up) {
        if (now - rb->probe_seen_at > PROBE_TIMEOUT) {
            log_warn("redis: the subscriber connection delivers nothing; reconnecting");
            st_add(&rb->st.probe_failures, 1);
            drop(&rb->sub);
        } else if (rb->pub.ac) {
            const char *argv[] = { "PUBLISH", rb->probe_chan, "probe" };
            size_t lens[] = { 7, strlen(rb->probe_chan), 5 };
            redisAsyncCommandArgv(rb->pub.ac, NULL, NULL, 3, argv, lens);
        }
    }
    st_sync(rb);
}

/* ---- quiet channels ---------------------------------------------------------- */

/* One HMGET of the quiet check: the names it asked for, in order (looked
 * up again on the answer: a channel may have gone meanwhile). */
struct quiet_req {
    struct redis_bus *rb;
    int n;
    size_t lens[QUIET_BATCH];
    const char *names[QUIET_BATCH];
    char bytes[];
};

static void on_quiet(redisAsyncContext *ac, void *r, void *priv)
{
    struct quiet_req *req = priv;
    struct redis_bus *rb = req->rb;
    redisReply *reply = r;
    if (!reply || rb->pub.ac != ac) {
        free(req);   /* the connection went; on_down reset the count */
        return;
    }
    rb->pub.inflight--;
    rb->pub.last_reply = clock_mono();
    if (rb->quiet_in_flight)
        rb->quiet_in_flight--;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)req->n) {
        log_warn("redis: cannot read the channels' last ids: %s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected answer");
        free(req);
        return;
    }
    for (int i = 0; i < req->n; i++) {
        struct rchan *ch = find_chan(rb, req->names[i], req->lens[i]);
        const redisReply *e = reply->element[i];
        uint64_t last = 0;   /* none yet: nil */
        if (!ch || !ch->wanted || !ch->subscribed ||
            (e->type != REDIS_REPLY_NIL &&
             (e->type != REDIS_REPLY_STRING || !parse_u64(e->str, e->len, &last))))
            continue;
        if (!ch->known && !ch->based) {
            ch->based = true;
            ch->base = last;
            continue;
        }
        uint64_t seen = ch->known ? ch->last_seen : ch->base;
        if (ch->quiet_mark && seen < ch->quiet_mark && !ch->filling) {
            log_warn("redis: %.*s has events after %" PRIu64 " that never came live; "
                     "reading them from its history", (int)ch->name_len, ch->name, seen);
            ch->known = true;
            ch->last_seen = seen;
            ch->quiet_fill = true;
            start_fill(rb, ch);
        }
        ch->quiet_mark = last > seen ? last : 0;
    }
    free(req);
}

static void send_quiet(struct redis_bus *rb, struct rchan **chans, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += chans[i]->name_len;
    struct quiet_req *req = malloc(sizeof *req + total);
    char *key = key_of(rb, "last", "", 0);
    const char **argv = malloc(sizeof *argv * (size_t)(n + 2));
    size_t *lens = malloc(sizeof *lens * (size_t)(n + 2));
    if (!req || !key || !argv || !lens) {
        free(req);
        goto out;
    }
    req->rb = rb;
    req->n = n;
    argv[0] = "HMGET";
    lens[0] = 5;
    argv[1] = key;
    lens[1] = strlen(key);
    char *p = req->bytes;
    for (int i = 0; i < n; i++) {
        memcpy(p, chans[i]->name, chans[i]->name_len);
        req->names[i] = argv[2 + i] = p;
        req->lens[i] = lens[2 + i] = chans[i]->name_len;
        p += chans[i]->name_len;
    }
    if (redisAsyncCommandArgv(rb->pub.ac, on_quiet, req, n + 2, argv, lens) != REDIS_OK) {
        free(req);
        goto out;
    }
    rb->pub.inflight++;
    rb->quiet_in_flight++;
out:
    free(key);
    free(argv);
    free(lens);
}

/* Also retries a catch-up that found no publishing connection when the
 * subscriber connection came back (it is otherwise redone only on the
 * next reconnect or gap). */
static void on_quiet_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_bus *rb = t->data;
    if (rb->quiet_in_flight || !rb->pub.up || !rb->pub.ac || !rb->sub.up)
        return;
    struct rchan *batch[QUIET_BATCH];
    int n = 0;
    struct rchan *ch, *tmp;
    HASH_ITER(hh, rb->chans, ch, tmp) {
        if (!ch->wanted || !ch->subscribed)
            continue;
        if (ch->catch_up && ch->known && !ch->filling) {
            ch->catch_up = false;
            start_fill(rb, ch);
        }
        batch[n++] = ch;
        if (n == QUIET_BATCH) {
            send_quiet(rb, batch, n);
            n = 0;
        }
    }
    if (n)
        send_quiet(rb, batch, n);
}

/* ---- the control channel ---------------------------------------------------- */

/* Requests for every node (sluice.disconnect in cluster mode) go out as
 * PUBLISH <prefix>ctl "sluice-ctl 1 <node id> <kind>\n<body>" on the
 * publishing connection; every node subscribes to <prefix>ctl on its
 * subscriber connection (again after every reconnect, like the probe)
 * and applies what other nodes sent; its own it applied when asked.
 * The version (1) covers the envelope and the body: a node refuses a
 * version it does not know rather than guess. Live only: what goes out
 * while a node's subscriber connection is down never reaches it (a
 * replay could end streams opened after the request, e.g. a user
 * allowed back meanwhile). */
#define CTL_MAGIC "sluice-ctl "
#define CTL_VERSION "1"

struct ctl_msg {
    struct ctl_msg *next;
    size_t len;
    char bytes[];
};

static void ctl_count(uint64_t *c)
{
    st_add(c, 1);
}

static void ctl_subscribe(struct redis_bus *rb, redisAsyncContext *ac)
{
    const char *argv[] = { "SUBSCRIBE", rb->ctl_chan };
    size_t lens[] = { 9, rb->ctl_chan_len };
    if (redisAsyncCommandArgv(ac, on_sub_message, NULL, 2, argv, lens) != REDIS_OK)
        log_warn("redis: cannot subscribe to %s; disconnects from other nodes do not "
                 "reach this one until the next reconnect", rb->ctl_chan);
}

/* From any thread: queued for the main loop (PUBLISH goes out there). */
int redis_bus_control(struct redis_bus *rb, const char *kind, const char *body, size_t len)
{
    if (!__atomic_load_n(&rb->available, __ATOMIC_ACQUIRE)) {
        ctl_count(&rb->ctl_failed);
        return BUS_UNAVAILABLE;
    }
    size_t head = sizeof CTL_MAGIC - 1 + sizeof CTL_VERSION - 1 + 1 + strlen(rb->ctl_id) + 1 +
                  strlen(kind) + 1;
    struct ctl_msg *m = malloc(sizeof *m + head + len + 1);
    if (!m) {
        ctl_count(&rb->ctl_failed);
        return -1;
    }
    int n = snprintf(m->bytes, head + 1, CTL_MAGIC CTL_VERSION " %s %s\n", rb->ctl_id, kind);
    if (n < 0 || (size_t)n != head) {
        free(m);
        ctl_count(&rb->ctl_failed);
        return -1;
    }
    memcpy(m->bytes + head, body, len);
    m->len = head + len;
    m->next = NULL;
    pthread_mutex_lock(&rb->lock);
    *rb->ctl_tail = m;
    rb->ctl_tail = &m->next;
    pthread_mutex_unlock(&rb->lock);
    ev_async_send(rb->loop, &rb->ctl_kick);
    return 0;
}

static void on_ctl_published(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    redisReply *reply = r;
    struct rconn *c = ac->data;
    if (!c)
        return;
    struct redis_bus *rb = c->rb;
    if (rb->pub.ac == ac && reply) {
        rb->pub.inflight--;
        rb->pub.last_reply = clock_mono();
    }
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        ctl_count(&rb->ctl_sent);
        return;
    }
    ctl_count(&rb->ctl_failed);
    if (!rb->closing)
        log_warn("redis: a disconnect may not have reached the other nodes: %s",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str
                                                           : "the connection went first");
}

static void on_ctl_kick(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_bus *rb = a->data;
    pthread_mutex_lock(&rb->lock);
    struct ctl_msg *m = rb->ctl_head;
    rb->ctl_head = NULL;
    rb->ctl_tail = &rb->ctl_head;
    pthread_mutex_unlock(&rb->lock);
    while (m) {
        struct ctl_msg *next = m->next;
        const char *argv[] = { "PUBLISH", rb->ctl_chan, m->bytes };
        size_t lens[] = { 7, rb->ctl_chan_len, m->len };
        if (rb->pub.up && rb->pub.ac &&
            redisAsyncCommandArgv(rb->pub.ac, on_ctl_published, NULL, 3, argv, lens) == REDIS_OK) {
            rb->pub.inflight++;
        } else {
            ctl_count(&rb->ctl_failed);
            log_warn("redis: unavailable; a disconnect did not reach the other nodes");
        }
        free(m);   /* hiredis holds its own copy */
        m = next;
    }
}

/* The next space- or newline-ended word at *p (before end). */
static bool ctl_word(const char **p, const char *end, char stop, const char **w, size_t *n)
{
    const char *e = memchr(*p, stop, (size_t)(end - *p));
    if (!e || e == *p)
        return false;
    *w = *p;
    *n = (size_t)(e - *p);
    *p = e + 1;
    return true;
}

/* A message on the subscriber connection: true if it was the control
 * channel's (applied here unless this node sent it). */
static bool ctl_on_message(struct redis_bus *rb, const redisReply *reply)
{
    const redisReply *chan = reply->element[1];
    if (chan->len != rb->ctl_chan_len || memcmp(chan->str, rb->ctl_chan, chan->len) != 0)
        return false;
    const redisReply *msg = reply->element[2];
    if (strcmp(reply->element[0]->str, "message") != 0 || msg->type != REDIS_REPLY_STRING)
        return true;   /* the SUBSCRIBE's confirmation */
    const char *p = msg->str, *end = msg->str + msg->len, *version, *node, *kind;
    size_t vlen, nlen, klen;
    size_t mlen = sizeof CTL_MAGIC - 1;
    if (msg->len < mlen || memcmp(p, CTL_MAGIC, mlen) != 0 ||
        (p += mlen, !ctl_word(&p, end, ' ', &version, &vlen)) ||
        !ctl_word(&p, end, ' ', &node, &nlen) || !ctl_word(&p, end, '\n', &kind, &klen)) {
        ctl_count(&rb->ctl_failed);
        log_warn("redis: a malformed message on %s, ignored", rb->ctl_chan);
        return true;
    }
    if (nlen == strlen(rb->ctl_id) && memcmp(node, rb->ctl_id, nlen) == 0)
        return true;   /* ours: applied when it was asked for */
    struct disconnect_req req;
    if (vlen != sizeof CTL_VERSION - 1 || memcmp(version, CTL_VERSION, vlen) != 0 ||
        klen != 10 || memcmp(kind, "disconnect", 10) != 0 ||
        !disconnect_decode(p, (size_t)(end - p), &req)) {
        ctl_count(&rb->ctl_failed);
        log_warn("redis: a control message from node %.*s that this node cannot read "
                 "(version %.*s, %.*s), ignored", (int)nlen, node, (int)vlen, version,
                 (int)klen, kind);
        return true;
    }
    long n = disconnect_streams_posted(&req);
    if (n < 0) {
        ctl_count(&rb->ctl_failed);
        log_warn("redis: out of memory applying a disconnect from node %.*s", (int)nlen, node);
        return true;
    }
    ctl_count(&rb->ctl_applied);
    log_info("redis: a disconnect from node %.*s ended %ld stream(s) here", (int)nlen, node, n);
    return true;
}

static int ctl_init(struct redis_bus *rb, const struct timespec *started)
{
    rb->ctl_chan = key_of(rb, "ctl", "", 0);
    if (!rb->ctl_chan)
        return -1;
    rb->ctl_chan_len = strlen(rb->ctl_chan);
    /* pid and start time, and random bits: two hosts' pids and clocks
     * may agree. */
    uint32_t rnd;
    if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd)
        rnd = (uint32_t)random();
    snprintf(rb->ctl_id, sizeof rb->ctl_id, "%ld-%ld-%08" PRIx32, (long)getpid(),
             (long)started->tv_nsec, rnd);
    rb->ctl_tail = &rb->ctl_head;
    ev_async_init(&rb->ctl_kick, on_ctl_kick);
    rb->ctl_kick.data = rb;
    ev_async_start(rb->loop, &rb->ctl_kick);
    return 0;
}

/* After the connections were dropped. */
static void ctl_free(struct redis_bus *rb)
{
    if (rb->loop && rb->ctl_tail)
        ev_async_stop(rb->loop, &rb->ctl_kick);
    struct ctl_msg *m = rb->ctl_head;
    while (m) {
        struct ctl_msg *next = m->next;
        free(m);
        m = next;
    }
    free(rb->ctl_chan);
}

struct redis_bus *redis_bus_new(struct ev_loop *loop, struct bus *bus,
                                const char *url, const char *prefix)
{
    struct redis_bus *rb = calloc(1, sizeof *rb);
    if (!rb)
        return NULL;
    if (pthread_mutex_init(&rb->lock, NULL) != 0) {
        free(rb);
        return NULL;
    }
    rb->loop = loop;
    rb->bus = bus;
    rb->prefix = strdup(prefix);
    if (!rb->prefix || parse_url(rb, url) < 0) {
        log_error("--redis wants redis://[:password@]host:port[/db], got \"%s\"", url);
        redis_bus_free(rb);
        return NULL;
    }
    rb->prefix_len = strlen(prefix);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(rb->probe_chan, sizeof rb->probe_chan, "%.40sprobe:%ld-%ld", prefix,
             (long)getpid(), (long)ts.tv_nsec);
    rb->q_tail = &rb->q_head;
    rb->c_tail = &rb->c_head;
    rb->r_tail = &rb->r_head;
    if (ctl_init(rb, &ts) < 0) {
        log_error("out of memory starting cluster mode");
        redis_bus_free(rb);
        return NULL;
    }
    ev_async_init(&rb->kick, on_kick);
    rb->kick.data = rb;
    ev_async_start(loop, &rb->kick);
    ev_timer_init(&rb->tick, on_tick, PROBE_EVERY, PROBE_EVERY);
    rb->tick.data = rb;
    ev_timer_start(loop, &rb->tick);
    ev_timer_init(&rb->quiet_tick, on_quiet_tick, QUIET_EVERY, QUIET_EVERY);
    rb->quiet_tick.data = rb;
    ev_timer_start(loop, &rb->quiet_tick);
    snprintf(rb->node_id, sizeof rb->node_id, "%ld-%ld", (long)getpid(), (long)ts.tv_nsec);
    /* App timers wait for the lease. */
    __atomic_store_n(&timers_active, 0, __ATOMIC_RELEASE);
    ev_timer_init(&rb->lease_tick, on_lease_tick, LEASE_EVERY, LEASE_EVERY);
    rb->lease_tick.data = rb;
    ev_timer_start(loop, &rb->lease_tick);
    struct rconn *cs[] = { &rb->pub, &rb->sub };
    for (int i = 0; i < 2; i++) {
        cs[i]->rb = rb;
        cs[i]->what = i == 0 ? "publish" : "subscriber";
        cs[i]->backoff = BACKOFF_MIN;
        ev_timer_init(&cs[i]->retry, on_retry, 0, 0);
        cs[i]->retry.data = cs[i];
    }
    struct bus_upstream up = { upstream_publish, upstream_resume, rb };
    struct bus_listener l = { on_first, on_last, rb };
    bus_set_upstream(bus, &up);
    bus_set_listener(bus, &l);
    log_info("redis: cluster mode with %s:%d, prefix \"%s\"", rb->host, rb->port, prefix);
    connect_now(&rb->pub);
    connect_now(&rb->sub);
    return rb;
}

bool redis_bus_reachable(const struct redis_bus *rb)
{
    return !rb || __atomic_load_n(&rb->available, __ATOMIC_ACQUIRE) != 0;
}

void redis_bus_stats(struct redis_bus *rb, struct redis_bus_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!rb)
        return;
    pthread_mutex_lock(&rb->lock);
    out->queued = rb->q_len;
    pthread_mutex_unlock(&rb->lock);
    out->in_flight = st_get(&rb->st.in_flight);
    out->lost_in_flight = st_get(&rb->st.lost);
    out->gaps_filled = st_get(&rb->st.gaps_filled);
    out->quiet_fills = st_get(&rb->st.quiet_fills);
    out->history_lost = st_get(&rb->st.history_lost);
    uint64_t cp = st_get(&rb->st.connects[0]), cs = st_get(&rb->st.connects[1]);
    out->reconnects_publish = cp ? cp - 1 : 0;
    out->reconnects_subscriber = cs ? cs - 1 : 0;
    out->probe_failures = st_get(&rb->st.probe_failures);
    out->command_timeouts = st_get(&rb->st.command_timeouts);
    out->channels = st_get(&rb->st.chans);
    out->control_sent = st_get(&rb->ctl_sent);
    out->control_applied = st_get(&rb->ctl_applied);
    out->control_failed = st_get(&rb->ctl_failed);
    out->reachable = redis_bus_reachable(rb);
}

void redis_bus_free(struct redis_bus *rb)
{
    if (!rb)
        return;
    rb->closing = true;
    if (rb->loop) {
        ev_async_stop(rb->loop, &rb->kick);
        ev_timer_stop(rb->loop, &rb->tick);
        ev_timer_stop(rb->loop, &rb->quiet_tick);
        ev_timer_stop(rb->loop, &rb->lease_tick);
        ev_timer_stop(rb->loop, &rb->pub.retry);
        ev_timer_stop(rb->loop, &rb->sub.retry);
    }
    drop(&rb->pub);
    drop(&rb->sub);
    ctl_free(rb);
    struct pub_req *q = rb->q_head;
    while (q) {
        struct pub_req *next = q->next;
        free(q);
        q = next;
    }
    struct resume_req *rq[] = { rb->r_head, rb->resumes };
    for (int i = 0; i < 2; i++)
        while (rq[i]) {
            struct resume_req *next = rq[i]->next;
            free(rq[i]);
            rq[i] = next;
        }
    struct sub_change *c = rb->c_head;
    while (c) {
        struct sub_change *next = c->next;
        free(c);
        c = next;
    }
    struct rchan *ch, *tmp;
    HASH_ITER(hh, rb->chans, ch, tmp) {
        HASH_DEL(rb->chans, ch);
        struct held *h = ch->held;
        while (h) {
            struct held *next = h->next;
            free(h);
            h = next;
        }
        free(ch);
    }
    pthread_mutex_destroy(&rb->lock);
    free(rb->host);
    free(rb->password);
    free(rb->prefix);
    free(rb->pub_cmd.buf);
    free(rb);
}
